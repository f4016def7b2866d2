"""The seed's ``OPS``: ``name -> lambda C, stride, affine: nn.Module``, and its bridge to the pure core.

Every built-in primitive has an ``OPS`` entry (an :class:`FunctionalOp` wrapping the pure
functions). A user may add an entry the seed's way; the search network then runs that module
through ``torch.func.functional_call`` with its parameters taken from the weights pytree, and
:class:`fnas.spaces.cell.network.NetworkCnn` instantiates it directly. Every op sees the seed's layout,
``(N, C, T, 1)`` in kx1 spaces (stored channels_last).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from fnas.spaces import primitives as P
from fnas.core import tree

__all__ = ["FunctionalOp", "OPS", "adapted", "is_builtin", "primitive_from_module"]


Tensor = torch.Tensor


class _Tree(nn.Module):
    """A module whose parameters/buffers mirror a nested dict, so ``state_dict`` keys are dotted paths."""

    def __init__(self, params: dict, stats: dict):
        super().__init__()
        for key in sorted(set(params) | set(stats)):
            if isinstance(params.get(key), dict) or isinstance(stats.get(key), dict):
                self.add_module(key, _Tree(params.get(key, {}), stats.get(key, {})))
            elif key in params:
                self.register_parameter(key, nn.Parameter(params[key]))
            else:
                self.register_buffer(key, stats[key])


def _split(module: nn.Module) -> tuple[dict, dict]:
    """Nested (params, stats) dicts of a :class:`_Tree`."""
    params: dict = {}
    stats: dict = {}
    for key, p in module.named_parameters(recurse=False):
        params[key] = p
    for key, b in module.named_buffers(recurse=False):
        stats[key] = b
    for key, child in module.named_children():
        cp, cs = _split(child)
        params[key], stats[key] = cp, cs
    return params, stats


class FunctionalOp(nn.Module):
    """An ``nn.Module`` face for a registered pure primitive (used by NetworkCnn and ``OPS``).

    Takes ``(N, C, T, 1)`` (kx1) or ``(N, C, H, W)`` tensors.
    """

    def __init__(self, name: str, C: int, stride: int, affine: bool, gen: torch.Generator | None = None):
        super().__init__()
        self.name, self.stride = name, stride
        self.primitive = P.get(name)
        if gen is None:
            # Draw a seed from torch's global RNG like nn.Module inits do; never reseed it.
            gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ()).item()))
        params, stats = self.primitive.init(gen, C, stride, affine=affine, dtype=torch.float32)
        self.tree = _Tree(params, stats)

    def forward(self, x: Tensor) -> Tensor:
        params, stats = _split(self.tree)
        y, new_stats = self.primitive.apply(params, stats, x, stride=self.stride, train=self.training)
        if self.training:
            with torch.no_grad():
                for old, new in zip(tree.leaves(stats), tree.leaves(new_stats)):
                    if old is not new:
                        old.copy_(new)
        return y


def _builtin(name: str) -> Callable[[int, int, bool], nn.Module]:
    return lambda C, stride, affine: FunctionalOp(name, C, stride, affine)


# name -> lambda C, stride, affine: nn.Module (the seed's contract). Built-ins first; users append.
OPS: dict[str, Callable[[int, int, bool], nn.Module]] = {name: _builtin(name) for name in sorted(P._REGISTRY)}
_BUILTIN_FACTORIES = dict(OPS)


def is_builtin(name: str) -> bool:
    """True if ``name`` runs through a registered pure primitive (not a user ``nn.Module``).

    A registered name that is missing from ``OPS`` (registered after import) counts as built in.
    """
    return name in P._REGISTRY and OPS.get(name, _BUILTIN_FACTORIES.get(name)) is _BUILTIN_FACTORIES.get(name)


_ADAPTED: dict[str, tuple[Callable, P.Primitive]] = {}


def adapted(name: str) -> P.Primitive:
    """The primitive adapted from ``OPS[name]``, built once per factory (a new factory replaces it)."""
    factory = OPS[name]
    cached = _ADAPTED.get(name)
    if cached is None or cached[0] is not factory:
        cached = (factory, primitive_from_module(name, factory))
        _ADAPTED[name] = cached
    return cached[1]


def primitive_from_module(name: str, factory: Callable[[int, int, bool], nn.Module]) -> P.Primitive:
    """Adapt a seed-style module factory to the pure primitive interface.

    ``init`` instantiates the module (with ``affine=False``, as DARTS searches) and copies its
    parameters and buffers into pytrees; ``apply`` runs a shared template instance through
    ``torch.func.functional_call`` on those pytrees. Buffers are cloned before the call because
    BatchNorm updates running statistics in place.
    """
    templates: dict[tuple[int, int], nn.Module] = {}

    def template(C: int, stride: int) -> nn.Module:
        if (C, stride) not in templates:
            templates[(C, stride)] = factory(C, stride, False)
        return templates[(C, stride)]

    def init(gen, C, stride, *, affine, dtype):
        module = factory(C, stride, affine)
        templates.setdefault((C, stride), module)
        # Re-draw floating parameters from ``gen`` so the search init is reproducible.
        params = {}
        for k, p in module.named_parameters():
            fresh = p.detach().clone().to(dtype)
            if p.dim() > 1:
                bound = 1.0 / max(1, p[0].numel()) ** 0.5
                fresh = (torch.rand(p.shape, generator=gen, dtype=dtype) * 2 - 1) * bound
            params[k] = fresh
        # Floating buffers (BN running stats) follow ``dtype`` like the params; counters stay integer.
        stats = {
            k: b.detach().clone().to(dtype) if b.is_floating_point() else b.detach().clone()
            for k, b in module.named_buffers()
        }
        return params, stats

    def apply(params, stats, x, *, stride, train):
        C = x.shape[1]
        module = template(C, stride)
        module.train(train)
        new_stats = {k: v.clone() for k, v in stats.items()}
        y = torch.func.functional_call(module, (params, new_stats), (x,))
        return y, new_stats

    return P.Primitive(name, init, apply, "any", "module", 0, factory)
