"""The extractor registry: a name (and an optional ``:<model id>``) to a lazily imported factory.

Built-in names (nothing is imported until an extractor is built):

=====================  ======================================================  ==============================
name                   extractor                                               layers
=====================  ======================================================  ==============================
``inception``          FID Inception, tf-legacy resize (torch-fidelity)        ``pool3`` (2048), ``logits``,
                                                                               ``spatial`` (2023, sFID)
``inception-clean``    the same network, clean-fid's resize                    ``pool3``, ``logits``,
                                                                               ``spatial``
``clip[:<id>]``        CLIP image embedding, the model's CLIPProcessor         ``image_embeds``
``clip-cmmd[:<id>]``   CLIP image embedding, CMMD's whole-image bicubic resize ``image_embeds``
``dinov2[:<id>]``      DINOv2 CLS token (dgm-eval preprocessing)               ``cls``
``vae``                the model's own VAE encoder, mid-block mean (``pipe=``) ``mid``
=====================  ======================================================  ==============================

Every registered name also gives a metric: ``fd-<name>[:<model id>]``, the Frechet distance on its features
(:mod:`difflens.metrics.frechet`; the layer: the first of a user's extractor class's ``layers``).

``get_extractor("clip:openai/clip-vit-base-patch32", device="cuda")`` builds one; options are passed to
the factory (Inception: ``weights``, ``device``, ``offline``, ``impl``; CLIP/DINOv2: ``device``, ``dtype``,
``offline``; VAE: ``pipe``, ``batch_size``). :func:`register_extractor` adds a user's network: the factory
takes the options (and ``model_id`` when the name carries one) and returns an object with ``name``,
``layers``, ``device``, ``preprocessing()``, ``fingerprint(layer)`` and ``__call__(uint8 (N, H, W, 3)) ->
{layer: (N, D)}`` (:class:`~difflens.features.base.Extractor`; :class:`~difflens.features.base.
ExtractorBase` gives the plumbing).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

from difflens.errors import DifflensError

Factory = Callable[..., Any]

#: Built-in factories as ``module:function`` (imported on first use) and the options fixed by the name.
_BUILTIN: dict[str, tuple[str, dict[str, Any]]] = {
    "inception": ("difflens.features.inception:load_inception", {"protocol": "tf-legacy"}),
    "inception-clean": ("difflens.features.inception:load_inception", {"protocol": "clean"}),
    "clip": ("difflens.features.clip:load_clip", {"protocol": "processor"}),
    "clip-cmmd": ("difflens.features.clip:load_clip", {"protocol": "cmmd-resize"}),
    "dinov2": ("difflens.features.dinov2:load_dinov2", {}),
    "vae": ("difflens.features.vae:load_vae", {}),
}
#: Names that take a ``:<model id>`` suffix.
_WITH_MODEL_ID = ("clip", "clip-cmmd", "dinov2")
_USER: dict[str, Factory] = {}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def extractor_names() -> list[str]:
    """Every registered base name (built-in first, then the user's, in registration order)."""
    return [*_BUILTIN, *_USER]


def split_name(name: str) -> tuple[str, str | None]:
    """``"clip:openai/clip-vit-base-patch32"`` -> ``("clip", "openai/clip-vit-base-patch32")``."""
    base, sep, model_id = name.partition(":")
    return base.strip().lower(), (model_id.strip() or None) if sep else None


def register_extractor(name: str, factory: Factory, *, overwrite: bool = False) -> None:
    """Register a user's extractor factory under ``name`` (lower case letters, digits, ``_.-``).

    A built-in name is refused; an existing user name only with ``overwrite``."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise DifflensError(f"extractor name {name!r} is not valid.",
                            "use lower case letters, digits, '_', '.' or '-' (e.g. 'my-net')")
    if not callable(factory):
        raise DifflensError(f"the factory for extractor {name!r} is not callable.",
                            "pass a function or class that builds the extractor")
    if name in _BUILTIN:
        raise DifflensError(f"extractor {name!r} is built in and cannot be replaced.",
                            "register your network under another name")
    if name in _USER and not overwrite:
        raise DifflensError(f"extractor {name!r} is already registered.", "pass overwrite=True to replace it")
    _USER[name] = factory


def unregister_extractor(name: str) -> None:
    """Remove a user's extractor (tests; built-ins stay)."""
    _USER.pop(name, None)


def _factory(base: str) -> tuple[Factory, dict[str, Any]]:
    if base in _USER:
        return _USER[base], {}
    if base in _BUILTIN:
        target, fixed = _BUILTIN[base]
        module, _, func = target.partition(":")
        return getattr(importlib.import_module(module), func), dict(fixed)
    raise DifflensError(f"unknown extractor {base!r}.", f"use one of {', '.join(extractor_names())}, or "
                        "register your own with difflens.features.register_extractor")


def _check(ext: Any, name: str) -> Any:
    missing = [a for a in ("name", "layers", "preprocessing", "fingerprint") if not hasattr(ext, a)]
    if missing or not callable(ext):
        what = ", ".join(missing) if missing else "__call__"
        raise DifflensError(f"the factory of extractor {name!r} returned {type(ext).__name__}, which lacks "
                            f"{what}.", "return an object following difflens.features.base.Extractor "
                            "(subclass ExtractorBase)")
    if not ext.layers:
        raise DifflensError(f"extractor {name!r} declares no layers.", "set layers = ('<layer>', ...)")
    return ext


def get_extractor(name: str, **options: Any) -> Any:
    """Build the extractor ``name`` (``base`` or ``base:<model id>``) with ``options`` (see the module
    docstring). Unknown names, a model id on a name that takes none, and a factory that returns something
    that is not an extractor are DifflensErrors."""
    base, model_id = split_name(name)
    factory, fixed = _factory(base)
    if model_id is not None:
        if base in _BUILTIN and base not in _WITH_MODEL_ID:
            raise DifflensError(f"extractor {base!r} takes no model id (got {name!r}).",
                                f"pass {base!r}; model ids go with {', '.join(_WITH_MODEL_ID)}")
        options = {**options, "model_id": model_id}
    return _check(factory(**fixed, **options), name)
