"""The delegating processor the capture installs on each selected attention layer (DESIGN.md 2.9).

:class:`_CapturingProcessor` calls the ORIGINAL processor (through the kernel tap while the capture is active,
:mod:`difflens.attention.lse`) and returns its output unchanged; it names the call's arguments for the capture
(:func:`bind_arguments`) and, for a deferred layer in its steady state, hands the tapped call straight to the
capture's deferred batch. :func:`wrapper_class` gives each original processor class a subclass whose
``__call__`` advertises the original's signature (``Attention.forward`` filters keyword arguments by it).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from difflens.attention.layout import AttnLayer
from difflens.attention.rebuild import tapped_function

if TYPE_CHECKING:
    from difflens.attention.capture import AttentionCapture

_WRAPPER_CLASSES: dict[type, type] = {}
_SIGNATURES: dict[type, inspect.Signature] = {}


class _CapturingProcessor:
    """Delegates to the original processor; observes the call when the capture is active."""

    def __init__(self, original: Any, capture: AttentionCapture, index: int, layer: AttnLayer) -> None:
        self.original = original
        self._capture = capture
        self._index = index
        self._layer = layer
        self._sig = call_signature(original)
        self._tapped: Any = False      # the rebuilt __call__ of rebuild.tapped_function, once, on first use

    def _observe(self, *args: Any, **kwargs: Any) -> Any:
        cap = self._capture
        if not cap.active:
            return self.original(*args, **kwargs)
        tap = cap._tap_for(self._index)
        if tap is None:
            out = self.original(*args, **kwargs)
        else:
            if self._tapped is False:
                self._tapped = tapped_function(self.original)
            out = tap.run(self.original, args, kwargs, self._tapped)
            # steady state: a later call of a deferred layer with the shapes of its last deferred call joins
            # the deferred batch at once (no argument binding, no layout reading: per-call Python is the
            # capture's cost on small models)
            steady = cap._steady[self._index]
            rec = tap.record
            if (steady is not None and rec is not None and rec.query.shape == steady[0]
                    and rec.key.shape == steady[1] and (rec.mask is None or rec.mask.shape) == steady[2]
                    and cap._rows == steady[3] and rec.output_equal is not False):
                cap._keep(self._index, rec, steady[4])
                return out
        named = bind_arguments(self._sig, args, kwargs)
        if named is not None:
            cap._on_layer(self._index, self._layer, args[0], named, out, tap)
        return out


def call_signature(processor: Any) -> inspect.Signature:
    """The processor's call signature, once per processor class (``inspect.signature`` resolves
    annotations: milliseconds per call, paid per layer on every capture otherwise)."""
    import torch

    cls = type(processor)
    sig = _SIGNATURES.get(cls)
    if sig is None:
        fn = processor.forward if isinstance(processor, torch.nn.Module) else processor.__call__
        sig = _SIGNATURES[cls] = inspect.signature(fn)
    return sig


_POSITIONAL: dict[inspect.Signature, tuple[str, ...]] = {}


def bind_arguments(sig: inspect.Signature, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The call's arguments by name (those passed; extra keywords flattened in), or None when they do not fit
    the signature. Positional arguments are named from the signature's leading parameters directly (about
    1 us, against 30-100 us for ``Signature.bind`` on every layer call; the processor has just accepted these
    arguments, so they fit); anything else goes to ``bind``."""
    names = _POSITIONAL.get(sig)
    if names is None:
        names = _POSITIONAL[sig] = _leading_parameters(sig)
    if len(args) <= len(names):
        named = dict(zip(names, args, strict=False))
        named.update(kwargs)
        return named
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError:
        return None
    named = dict(bound.arguments)
    for name, param in sig.parameters.items():         # extra keywords flattened in, as the fast path does
        if param.kind == inspect.Parameter.VAR_KEYWORD:
            named.update(named.pop(name, {}) or {})
    return named


def _leading_parameters(sig: inspect.Signature) -> tuple[str, ...]:
    """The names of the positional-or-keyword parameters before any other kind."""
    names = []
    for name, param in sig.parameters.items():
        if param.kind != inspect.Parameter.POSITIONAL_OR_KEYWORD:
            break
        names.append(name)
    return tuple(names)


def wrapper_class(original_cls: type, signature: inspect.Signature) -> type:
    """A per-original-class subclass of _CapturingProcessor whose ``__call__`` advertises the original's
    signature, because ``Attention.forward`` filters keyword arguments by the processor's signature."""
    cls = _WRAPPER_CLASSES.get(original_cls)
    if cls is None:
        def __call__(self: _CapturingProcessor, *args: Any, **kwargs: Any) -> Any:
            return self._observe(*args, **kwargs)

        self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        __call__.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[self_param, *signature.parameters.values()])
        cls = type(f"Capturing{original_cls.__name__}", (_CapturingProcessor,), {"__call__": __call__})
        _WRAPPER_CLASSES[original_cls] = cls
    return cls
