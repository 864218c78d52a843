"""Attention processors' code rebuilt so that its one SDPA call reaches the active kernel tap
(:class:`difflens.attention.lse.SdpaTap`), with nothing shared modified.

:func:`tapped_function` rebuilds a processor class's ``__call__`` over a private copy of its module globals in
which ``F`` (``torch.nn.functional``) is :class:`_FunctionalShim`: every name is the real one except
``scaled_dot_product_attention``, which goes to the active tap (when there is one). Processors that call
diffusers' backend dispatch (``dispatch_attention_fn``: Flux, and newer processors) get a rebuilt dispatch
whose backend registry hands out backend functions rebuilt the same way (``torch`` seen through
:class:`_TorchShim`), so ``torch.nn.functional.scaled_dot_product_attention`` inside diffusers' native backend
reaches the tap too; without the registry (another diffusers layout) the dispatch runs under the tap's
``TorchFunctionMode`` instead (a Python hop on each of its few torch calls). The copies are used only by the
capturing wrapper, and only while a tap is active do they behave differently from the originals.
"""

from __future__ import annotations

import types
from typing import Any

from difflens.attention.lse import _ACTIVE, _active_handle, _mode_class


class _FunctionalShim:
    """``torch.nn.functional`` as a rebuilt function sees it: the real names, except
    ``scaled_dot_product_attention``, which goes to the active tap (when there is one)."""

    def __init__(self, functional: Any) -> None:
        self._functional = functional
        self._sdpa = functional.scaled_dot_product_attention

    def __getattr__(self, name: str) -> Any:
        return getattr(self._functional, name)

    def scaled_dot_product_attention(self, *args: Any, **kwargs: Any) -> Any:
        return _active_handle(self._sdpa, args, kwargs)


class _TorchShim:
    """``torch`` as a rebuilt backend function sees it: the real module, except that ``torch.nn.functional``
    is :class:`_FunctionalShim`."""

    def __init__(self, torch_module: Any, functional: _FunctionalShim) -> None:
        self._torch = torch_module
        self.nn = _NNShim(torch_module.nn, functional)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._torch, name)


class _NNShim:
    def __init__(self, nn: Any, functional: _FunctionalShim) -> None:
        self._nn = nn
        self.functional = functional

    def __getattr__(self, name: str) -> Any:
        return getattr(self._nn, name)


def _global_names(code: types.CodeType) -> set[str]:
    """Global names a code object and the code nested in it (comprehensions, inner functions) refer to."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _rebuilt(fn: types.FunctionType, replacements: dict[str, tuple[Any, Any]]) -> types.FunctionType | None:
    """``fn`` over a copy of its globals with ``name -> new`` for each ``name: (original, new)`` that ``fn``
    refers to and that is ``original`` there; None when none applies."""
    names = _global_names(fn.__code__)
    g = dict(fn.__globals__)
    changed = False
    for name, (original, new) in replacements.items():
        if name in names and g.get(name) is original:
            g[name] = new
            changed = True
    if not changed:
        return None
    new_fn = types.FunctionType(fn.__code__, g, fn.__name__, fn.__defaults__, fn.__closure__)
    new_fn.__kwdefaults__ = fn.__kwdefaults__
    return new_fn


def _shims() -> dict[str, tuple[Any, Any]]:
    import torch
    import torch.nn.functional as F

    functional = _FunctionalShim(F)
    return {"F": (F, functional), "torch": (torch, _TorchShim(torch, functional))}


class _RegistryView:
    """diffusers' ``_AttentionBackendRegistry`` as the rebuilt dispatch sees it: the same backends, each
    function rebuilt over :func:`_shims` (kept per function); everything else read from the registry."""

    def __init__(self, registry: Any) -> None:
        self._registry = registry
        self._functions: dict[Any, Any] = {}

    def _tapped(self, fn: Any) -> Any:
        rebuilt = self._functions.get(fn)
        if rebuilt is None:
            rebuilt = (_rebuilt(fn, _shims()) if isinstance(fn, types.FunctionType) else None) or fn
            self._functions[fn] = rebuilt
        return rebuilt

    def get_active_backend(self) -> tuple[Any, Any]:
        name, fn = self._registry.get_active_backend()
        return name, self._tapped(fn)

    @property
    def _backends(self) -> Any:
        view = self

        class _Backends:
            def get(self, name: Any, default: Any = None) -> Any:
                fn = view._registry._backends.get(name, default)
                return view._tapped(fn) if fn is not None else fn

            def __getitem__(self, name: Any) -> Any:
                return view._tapped(view._registry._backends[name])

        return _Backends()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._registry, name)


def _tapped_dispatch(dispatch: Any) -> Any:
    """diffusers' ``dispatch_attention_fn`` rebuilt over a :class:`_RegistryView`, or, where it does not read
    the registry by that name, the original run under the tap's ``TorchFunctionMode`` while a tap is
    active."""
    registry = getattr(dispatch, "__globals__", {}).get("_AttentionBackendRegistry")
    if registry is not None and isinstance(dispatch, types.FunctionType):
        rebuilt = _rebuilt(dispatch, {"_AttentionBackendRegistry": (registry, _RegistryView(registry))})
        if rebuilt is not None:
            return rebuilt

    def dispatch_under_mode(*args: Any, **kwargs: Any) -> Any:
        if getattr(_ACTIVE, "tap", None) is None:
            return dispatch(*args, **kwargs)
        with _mode_class()():
            return dispatch(*args, **kwargs)

    return dispatch_under_mode


def tapped_function(processor: Any) -> Any | None:
    """The processor class's ``__call__`` rebuilt so that its SDPA call reaches the active tap (module
    docstring). None when the processor is not a plain Python class with a ``__call__`` function referring to
    ``F`` or ``dispatch_attention_fn`` (then the caller runs the whole call under the tap's mode)."""
    import torch

    fn = type(processor).__dict__.get("__call__") or getattr(type(processor), "__call__", None)  # noqa: B004
    if isinstance(processor, torch.nn.Module) or not isinstance(fn, types.FunctionType):
        return None
    replacements = {"F": _shims()["F"]}
    dispatch = fn.__globals__.get("dispatch_attention_fn")
    if callable(dispatch):
        replacements["dispatch_attention_fn"] = (dispatch, _tapped_dispatch(dispatch))
    return _rebuilt(fn, replacements)
