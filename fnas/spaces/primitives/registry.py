"""The primitive record and its registry: a primitive is one unit (init, apply, cost formula, fused hook).

Adding a primitive is one :func:`register` call. Name lookup that also sees the seed's ``OPS``
entries is :func:`fnas.spaces.primitives.lookup.get`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, NamedTuple

import torch

Tensor = torch.Tensor
Kind = Literal["1d", "2d", "any"]
Shape = tuple[int, int]

__all__ = [
    "Kind",
    "OpCost",
    "Primitive",
    "Shape",
    "out_grid",
    "register",
    "registered",
    "registered_names",
    "unregister",
]


class OpCost(NamedTuple):
    """Exact cost of one primitive at batch 1.

    Attributes:
        params: parameter count (``sum(p.numel())`` of the built module).
        macs: multiply-accumulates (``FlopCounterMode`` FLOPs / 2).
        out_elems: elements of the output activation.
        out_shape: spatial shape of the output: ``(T, 1)`` or ``(H, W)``.
        scratch: elements of the primitive's own buffers live at each of its kernel steps (the
            buffer read and the buffer written; the output at the last step). Its input is not
            included; see :func:`fnas.cost.genotype_cost` for the schedule.
    """

    params: int
    macs: int
    out_elems: int
    out_shape: Shape
    scratch: tuple[int, ...]


def out_grid(shape: Shape, stride: int, kx1: bool) -> Shape:
    """Output grid of a stride-``stride`` op with padding ``k // 2``: ``ceil(T / 2)`` per strided axis."""
    if stride == 1:
        return shape
    h, w = shape
    return (-(-h // 2), w if kx1 else -(-w // 2))


@dataclass(frozen=True)
class Primitive:
    """One candidate operation of a mixed op: maps ``C`` channels to ``C`` on the strided grid.

    Attributes:
        name: registry key.
        init: ``(gen, C, stride, *, affine, dtype) -> (params, stats)``.
        apply: ``(params, stats, x, *, stride, train, sync=None) -> (y, new_stats)``; ``x`` is
            ``(N, C, T, 1)`` or ``(N, C, H, W)`` channels_last. ``sync`` (data-parallel BatchNorm)
            goes to every ``fnas.core.layers.apply_bn``; an apply without a ``sync`` parameter is
            called without it (its BatchNorms, if any, then use per-process statistics).
        kind: ``"1d"`` for kx1 primitives, ``"2d"`` for kxk ones, ``"any"`` for both.
        family: ``"none"`` (skipped by the mixed op), ``"pool"`` (gets DARTS' affine-free
            BatchNorm in the search network), ``"skip"``, ``"conv"`` or ``"module"`` (adapted
            from an ``nn.Module`` factory); informational otherwise.
        kernel: spatial kernel length (convs and pools), 0 otherwise.
        cost: exact closed form ``(C, stride, shape, *, kx1, affine) -> OpCost`` with ``shape``
            the input grid; None: :func:`fnas.cost.primitive_cost` measures the built module
            with ``FlopCounterMode`` instead (exact too, for ops whose cost the counter sees).
        fused: ``(params, stats, x, w, *, stride, train, sync) -> (term, new_stats)`` running the
            op on the ``E`` edges that read the same ``x`` at once: ``params``/``stats`` are lists
            of ``E`` trees, ``w`` the ``(E,)`` mixing weights, ``term`` the weighted outputs in
            the ``(N, T'*W', E, C)`` view of :func:`fnas.spaces.primitives.fused.ntec`. None: the
            fused mixed op calls ``apply`` once per edge.
        module: for primitives adapted from an ``nn.Module`` factory, that factory.
    """

    name: str
    init: Callable
    apply: Callable
    kind: Kind = "any"
    family: str = "conv"
    kernel: int = 0
    cost: Callable[..., OpCost] | None = None
    fused: Callable | None = None
    module: Callable | None = None
    takes_sync: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            params = inspect.signature(self.apply).parameters.values()
        except (TypeError, ValueError):  # builtins without a signature: pass no sync
            params = []
        takes = any(p.name == "sync" or p.kind is p.VAR_KEYWORD for p in params)
        object.__setattr__(self, "takes_sync", takes)

    def run(self, params: dict, stats: dict, x: Tensor, *, stride: int, train: bool, sync: Any = None):
        """``apply``, with ``sync`` passed on when the apply takes it."""
        if self.takes_sync:
            return self.apply(params, stats, x, stride=stride, train=train, sync=sync)
        return self.apply(params, stats, x, stride=stride, train=train)


_REGISTRY: dict[str, Primitive] = {}


def register(primitive: Primitive, *, overwrite: bool = False) -> Primitive:
    """Add a primitive to the registry; returns it.

    Raises:
        ValueError: the name is taken and ``overwrite`` is False, or ``kind`` is not recognised.
    """
    if primitive.kind not in ("1d", "2d", "any"):
        raise ValueError(f"Primitive kind must be '1d', '2d' or 'any', got {primitive.kind!r}")
    if primitive.name in _REGISTRY and not overwrite:
        raise ValueError(f"Primitive {primitive.name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[primitive.name] = primitive
    return primitive


def unregister(name: str) -> None:
    """Remove a registered primitive (no error if absent)."""
    _REGISTRY.pop(name, None)


def registered(name: str) -> Primitive | None:
    """The registered primitive called ``name``, or None (ignores the seed's ``OPS`` entries)."""
    return _REGISTRY.get(name)


def registered_names() -> list[str]:
    """Sorted names of the registered primitives."""
    return sorted(_REGISTRY)
