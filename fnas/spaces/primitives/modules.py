"""The seed's ``OPS``: ``name -> lambda C, stride, affine: nn.Module``, and its bridge to the pure core.

Every built-in primitive has an ``OPS`` entry (a :class:`FunctionalOp` wrapping the pure
functions). A user may add an entry the seed's way, e.g. with :class:`ConvBNReLU`; the search
network then runs that module through ``torch.func.functional_call`` with its parameters taken
from the weights pytree, and :class:`fnas.spaces.cell.network.NetworkCnn` instantiates it
directly. Every op sees the seed's layout, ``(N, C, T, 1)`` in kx1 spaces (stored channels_last).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from fnas.core import tree
import fnas.spaces.primitives.builtin  # noqa: F401 - registers the built-ins that OPS lists below
from fnas.spaces.primitives.registry import Primitive, registered, registered_names

__all__ = [
    "ConvBNReLU",
    "FunctionalOp",
    "OPS",
    "ParamTree",
    "adapted",
    "is_builtin",
    "primitive_from_module",
    "split_tree",
]

Tensor = torch.Tensor
Factory = Callable[[int, int, bool], nn.Module]


class ConvBNReLU(nn.Module):
    """The seed's conv -> BatchNorm -> ReLU block (``Conv2d`` without bias), for ``OPS`` entries.

    Example (the seed README's custom op)::

        OPS['conv_bn_relu_1x1'] = lambda C, stride, affine: ConvBNReLU(
            C, C, (1, 1), (stride, 1), (0, 0), affine=affine)
    """

    def __init__(self, C_in: int, C_out: int, kernel_size, stride, padding, affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
            nn.ReLU(inplace=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class ParamTree(nn.Module):
    """A module whose parameters/buffers mirror nested ``(params, stats)`` dicts (dotted ``state_dict`` keys)."""

    def __init__(self, params: dict, stats: dict):
        super().__init__()
        for key in sorted(set(params) | set(stats)):
            if isinstance(params.get(key), dict) or isinstance(stats.get(key), dict):
                self.add_module(key, ParamTree(params.get(key, {}), stats.get(key, {})))
            elif key in params:
                self.register_parameter(key, nn.Parameter(params[key]))
            else:
                self.register_buffer(key, stats[key])


def split_tree(module: nn.Module) -> tuple[dict, dict]:
    """Nested ``(params, stats)`` dicts of a :class:`ParamTree` (the module's own tensors, not copies)."""
    params: dict = {}
    stats: dict = {}
    for key, p in module.named_parameters(recurse=False):
        params[key] = p
    for key, b in module.named_buffers(recurse=False):
        stats[key] = b
    for key, child in module.named_children():
        params[key], stats[key] = split_tree(child)
    return params, stats


class FunctionalOp(nn.Module):
    """An ``nn.Module`` face for a registered pure primitive (used by NetworkCnn and ``OPS``).

    Takes ``(N, C, T, 1)`` (kx1) or ``(N, C, H, W)`` tensors.

    Raises:
        ValueError: ``name`` is not a registered primitive.
    """

    def __init__(self, name: str, C: int, stride: int, affine: bool, gen: torch.Generator | None = None):
        super().__init__()
        primitive = registered(name)
        if primitive is None:
            raise ValueError(f"FunctionalOp wraps registered primitives; {name!r} is not one of {registered_names()}")
        self.name, self.stride, self.primitive = name, stride, primitive
        if gen is None:
            # Draw a seed from torch's global RNG like nn.Module inits do; never reseed it.
            gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ()).item()))
        params, stats = primitive.init(gen, C, stride, affine=affine, dtype=torch.float32)
        self.tree = ParamTree(params, stats)

    def forward(self, x: Tensor) -> Tensor:
        params, stats = split_tree(self.tree)
        y, new_stats = self.primitive.run(params, stats, x, stride=self.stride, train=self.training)
        if self.training:  # nn.BatchNorm semantics: the module's buffers take the new statistics
            with torch.no_grad():
                for old, new in zip(tree.leaves(stats), tree.leaves(new_stats)):
                    if old is not new:
                        old.copy_(new)
        return y


def _builtin(name: str) -> Factory:
    return lambda C, stride, affine: FunctionalOp(name, C, stride, affine)


# name -> lambda C, stride, affine: nn.Module (the seed's contract). Built-ins first; users append.
OPS: dict[str, Factory] = {name: _builtin(name) for name in registered_names()}
_BUILTIN_FACTORIES = dict(OPS)


def is_builtin(name: str) -> bool:
    """True if ``name`` runs through a registered pure primitive (not a user ``nn.Module``).

    A registered name that is missing from ``OPS`` (registered after import) counts as built in.
    """
    return registered(name) is not None and OPS.get(name, _BUILTIN_FACTORIES.get(name)) is _BUILTIN_FACTORIES.get(name)


_ADAPTED: dict[str, tuple[Factory, Primitive]] = {}


def adapted(name: str) -> Primitive:
    """The primitive adapted from ``OPS[name]``, built once per factory (a new factory replaces it)."""
    factory = OPS[name]
    cached = _ADAPTED.get(name)
    if cached is None or cached[0] is not factory:
        cached = (factory, primitive_from_module(name, factory))
        _ADAPTED[name] = cached
    return cached[1]


def primitive_from_module(name: str, factory: Factory) -> Primitive:
    """Adapt a seed-style module factory to the pure primitive interface.

    ``init`` instantiates the module (with ``affine=False``, as DARTS searches) and copies its
    parameters and buffers into pytrees; ``apply`` runs a shared template instance through
    ``torch.func.functional_call`` on those pytrees. Buffers are cloned before the call because
    BatchNorm updates running statistics in place. The module's own BatchNorms cannot take a
    ``sync``: in data-parallel runs they normalise with per-process statistics.
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

    def apply(params, stats, x, *, stride, train, sync=None):
        module = template(x.shape[1], stride)
        module.train(train)
        new_stats = {k: v.clone() for k, v in stats.items()}
        y = torch.func.functional_call(module, (params, new_stats), (x,))
        return y, new_stats

    return Primitive(name, init, apply, "any", "module", 0, module=factory)
