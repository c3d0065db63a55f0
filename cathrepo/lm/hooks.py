"""Hooks: the one place cathrepo registers PyTorch hooks (used by attribution and the edit methods).

Everything is a context manager that removes its hooks on exit, even on error, so a model never keeps
a stray hook. Module outputs may be tensors or tuples whose first element is the hidden state (decoder
layers in some transformers versions); both are handled here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cathrepo.models import get_module

if TYPE_CHECKING:
    import torch

TensorFn = Callable[["torch.Tensor"], "torch.Tensor"]
#: ``fn(input, output) -> new output``; ``input`` is None for a module called with keyword arguments only.
InputOutputFn = Callable[["torch.Tensor | None", "torch.Tensor"], "torch.Tensor"]


def _first(value: Any) -> torch.Tensor:
    return value[0] if isinstance(value, tuple) else value


def _replace_first(value: Any, tensor: torch.Tensor) -> Any:
    return (tensor, *value[1:]) if isinstance(value, tuple) else tensor


@dataclass
class Captured:
    """What :func:`capture` recorded, keyed by module name (last call wins)."""

    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)


@contextmanager
def capture(
    model: Any,
    names: Sequence[str],
    *,
    inputs: bool = False,
    outputs: bool = True,
    detach: bool = True,
) -> Iterator[Captured]:
    """Record the first positional input and/or the output of each named module.

    Args:
        model: the model to observe.
        names: module names ("model.layers.3.mlp.down_proj").
        inputs: record each module's first positional input (e.g. ROME's key vectors).
        outputs: record each module's output (its first element when a tuple).
        detach: detach the recorded tensors (keep graphs only when gradients are needed).
    """
    record = Captured()
    handles = []

    def make(name: str) -> Callable[..., None]:
        def hook(module: Any, args: tuple[Any, ...], output: Any) -> None:
            if inputs and args:
                value = _first(args)
                record.inputs[name] = value.detach() if detach else value
            if outputs:
                value = _first(output)
                record.outputs[name] = value.detach() if detach else value

        return hook

    try:
        for name in names:
            handles.append(get_module(model, name).register_forward_hook(make(name)))
        yield record
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def edit_output(model: Any, edits: dict[str, TensorFn]) -> Iterator[None]:
    """Replace each named module's output by ``fn(output)`` while the context is open."""
    with add_to_output(model, {name: _output_only(fn) for name, fn in edits.items()}):
        yield


def _output_only(fn: TensorFn) -> InputOutputFn:
    return lambda _input, output: fn(output)


@contextmanager
def add_to_output(model: Any, edits: dict[str, InputOutputFn]) -> Iterator[None]:
    """Replace each named module's output by ``fn(input, output)`` (its first positional input, None for a
    module called with keywords only, and its output) while the context is open: a change that depends
    on what the module read (a low-rank delta applied to some rows only)."""
    handles = []

    def make(fn: InputOutputFn) -> Callable[..., Any]:
        def hook(module: Any, args: tuple[Any, ...], output: Any) -> Any:
            return _replace_first(output, fn(_first(args) if args else None, _first(output)))

        return hook

    try:
        for name, fn in edits.items():
            handles.append(get_module(model, name).register_forward_hook(make(fn)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def edit_input(model: Any, edits: dict[str, TensorFn]) -> Iterator[None]:
    """Replace each named module's first positional input by ``fn(input)`` while the context is open."""
    handles = []

    def make(fn: TensorFn) -> Callable[..., Any]:
        def hook(module: Any, args: tuple[Any, ...]) -> Any:
            if not args:
                return None
            return (fn(args[0]), *args[1:])

        return hook

    try:
        for name, fn in edits.items():
            handles.append(get_module(model, name).register_forward_pre_hook(make(fn)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def replayed(model: Any, names: Sequence[str], store: dict[str, Any]) -> Iterator[None]:
    """Modules ``names`` give back what they returned the first time, without running again.

    On an entry with ``store`` empty they run and their outputs (detached) are recorded into it; on every
    later entry their forward is not called and each returns a copy of its recorded output. Only for
    modules whose inputs are the same on every call: the layers below an edited one, run on the same
    rows pass after pass, where nothing an optimisation changes can reach them.
    """
    if not store:
        handles = []

        def make(name: str) -> Callable[..., None]:
            def hook(module: Any, args: tuple[Any, ...], output: Any) -> None:
                store.setdefault(name, _detached(output))

            return hook

        try:
            for name in names:
                handles.append(get_module(model, name).register_forward_hook(make(name)))
            yield
        finally:
            for handle in handles:
                handle.remove()
        return
    modules = [(get_module(model, name), name) for name in names]
    saved = [m.__dict__.get("forward") for m, _ in modules]  # a forward already patched on the instance
    try:
        for module, name in modules:
            module.forward = (lambda *args, _name=name, **kwargs: _copied(store[_name]))
        yield
    finally:
        for (module, _), own in zip(modules, saved, strict=True):
            if own is None:
                del module.forward
            else:
                module.forward = own


def _detached(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(_detached(v) for v in value)
    return value.detach() if hasattr(value, "detach") else value


def _copied(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(_copied(v) for v in value)
    return value.clone() if hasattr(value, "clone") else value


class _StopForward(Exception):
    """Raised inside a hook to abandon the rest of a forward pass."""


def forward_until(model: Any, name: str, *, inputs: bool = True, **model_kwargs: Any) -> torch.Tensor:
    """Run the model only as far as module ``name`` and return its first input (or its output).

    Statistics and key vectors need activations at one layer; stopping there skips the layers above
    and the unembedding, which on a 30-layer model is most of the cost.
    """
    found: list[torch.Tensor] = []

    def hook(module: Any, args: tuple[Any, ...], output: Any) -> None:
        found.append(_first(args) if inputs else _first(output))
        raise _StopForward

    handle = get_module(model, name).register_forward_hook(hook)
    try:
        model(**model_kwargs)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not found:
        raise RuntimeError(f"module {name!r} was not reached by the forward pass")
    return found[0]
