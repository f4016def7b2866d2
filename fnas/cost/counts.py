"""Exact costs at batch 1: one primitive (``OpCost``) and a genotype's NetworkCnn (``Cost``).

Conventions: parameters are ``sum(p.numel())`` of the built module (affine BN counts ``2 C``;
running statistics are buffers); MACs are ``FlopCounterMode`` FLOPs / 2 (convolutions and the
head's matmul; BN, ReLU, pooling and additions are free); a strided op gives ``ceil(T / 2)``.
"""

from __future__ import annotations

import functools
from typing import Any, Literal, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from fnas.spaces import primitives as P
from fnas.spaces.cell.config import SpaceConfig
from fnas.spaces.cell.genotype import Genotype_CNN, validate_genotype
from fnas.spaces.cell.topology import cell_plan, preprocesses, space_of
from fnas.spaces.primitives import OpCost, Primitive, out_grid
from fnas.spaces.primitives.modules import FunctionalOp
from fnas.cost.chain import chain_of
from fnas.spaces.chain import genotype_cost as chain_genotype_cost
from fnas.spaces.base import Cost

__all__ = [
    "METRICS",
    "Cost",
    "Metric",
    "OpCost",
    "check_metric",
    "conv_parts",
    "genotype_cost",
    "head_parts",
    "last_uses",
    "primitive_cost",
    "stem_parts",
]

Shape = tuple[int, int]
Metric = Literal["params", "macs", "sram"]
METRICS = ("params", "macs", "sram")


def check_metric(metric: str) -> None:
    """Raise ``ValueError`` unless ``metric`` is one of :data:`METRICS`."""
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}; expected one of {list(METRICS)}")


# --- one primitive ---------------------------------------------------------------------------


def _as_shape(shape: int | Sequence[int], kx1: bool) -> Shape:
    dims = (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)
    if kx1 and len(dims) == 1:
        dims = (dims[0], 1)
    if len(dims) != 2 or min(dims) < 1 or (kx1 and dims[1] != 1):
        want = "T, (T,) or (T, 1)" if kx1 else "(H, W)"
        raise ValueError(f"shape must be {want} with positive sizes, got {shape!r}")
    return dims


def primitive_cost(
    name: str, C: int, stride: int, shape: int | Sequence[int], *, kx1: bool, affine: bool = True
) -> OpCost:
    """Exact params, MACs, output size and buffer profile of one primitive.

    A primitive with a ``cost`` formula (every built-in) uses it; any other (a user's
    ``register`` without one, or a seed-style ``OPS`` module) is measured: the module NetworkCnn
    would build is instantiated (the global RNG state is restored afterwards) and run once on
    zeros under ``FlopCounterMode``.

    Args:
        name: a primitive name (built-in, registered or a seed-style ``OPS`` entry).
        C: channels in and out.
        stride: 1, or 2 for edges leaving a reduction cell's input.
        shape: input spatial shape, ``(T, 1)`` (or ``T``) for kx1 ops, ``(H, W)`` for 2D ones.
        kx1: True in kx1 (time-series) spaces.
        affine: BatchNorm has weight and bias (NetworkCnn: True; the search network: False).

    Returns:
        An :class:`OpCost`.

    Raises:
        ValueError: unknown name, a 2D op in a kx1 space (or vice versa), a bad stride or shape, an
            odd ``C`` for a strided skip, or a measured module that does not map ``C`` to ``C``
            channels on the built-in ops' output grid.
    """
    prim = P.get(name)  # raises on unknown names
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride!r}")
    if not isinstance(C, int) or C < 1:
        raise ValueError(f"C must be a positive int, got {C!r}")
    if (kx1 and prim.kind == "2d") or (not kx1 and prim.kind == "1d"):
        space = "kx1" if kx1 else "2D"
        raise ValueError(f"Primitive {name!r} is {prim.kind} but the space is {space}; use a {space} primitive")
    shape = _as_shape(shape, kx1)
    if prim.cost is not None:
        return prim.cost(C, stride, shape, kx1=kx1, affine=affine)
    return _measured_cost(prim, C, stride, shape, kx1, affine)


@functools.lru_cache(maxsize=4096)
def _measured_cost(prim: Primitive, C: int, stride: int, shape: Shape, kx1: bool, affine: bool) -> OpCost:
    """Instantiate the module NetworkCnn would build for ``prim`` and count it."""
    with torch.random.fork_rng(devices=[]):  # seed-style inits draw from the global RNG
        if prim.module is not None:
            module = prim.module(C, stride, affine)
        else:
            module = FunctionalOp(prim.name, C, stride, affine, gen=torch.Generator().manual_seed(0))
    params = sum(p.numel() for p in module.parameters())
    x = torch.zeros(1, C, *shape)  # (1, C, T, 1) or (1, C, H, W): what NetworkCnn's ops see
    module.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        y = module(x)
    expected = out_grid(shape, stride, kx1)
    if y.ndim != 4 or y.shape[0] != 1 or y.shape[1] != C or tuple(y.shape[2:]) != expected:
        raise ValueError(
            f"Primitive {prim.name!r} (C={C}, stride={stride}) maps input {(1, C, *shape)} to {tuple(y.shape)}; "
            f"expected (1, {C}, {expected[0]}, {expected[1]}): a cell concatenates nodes on one grid, so an "
            "op must keep C channels and use padding k // 2. Give the primitive a cost= formula if the "
            "counter cannot see its work"
        )
    return OpCost(params, counter.get_total_flops() // 2, y.numel(), expected, (y.numel(),))


# --- fixed parts -----------------------------------------------------------------------------


def conv_parts(c_in: int, c_out: int, k: int, shape: Shape, kx1: bool) -> tuple[int, int]:
    """(params, macs) of a stride-1 'same' conv (no bias) followed by affine BN."""
    kk = k if kx1 else k * k
    return c_in * c_out * kk + 2 * c_out, c_out * shape[0] * shape[1] * c_in * kk


def stem_parts(space: SpaceConfig) -> dict[str, tuple[int, int]]:
    """(params, macs) of the input BN (if any) and the stem."""
    parts = {}
    if space.with_input_batchnorm:
        parts["input_bn"] = (2 * space.in_channels, 0)
    parts["stem"] = conv_parts(space.in_channels, space.stem_multiplier * space.C, 3, space.input_shape, space.is_1d)
    return parts


def head_parts(c_last: int, num_classes: int) -> tuple[int, int]:
    """(params, macs) of the linear head."""
    return c_last * num_classes + num_classes, c_last * num_classes


# --- a genotype ------------------------------------------------------------------------------


def _check_kinds(ops: Sequence[str], kx1: bool) -> None:
    for op in ops:
        kind = P.get(op).kind
        if (kx1 and kind == "2d") or (not kx1 and kind == "1d"):
            space = "kx1" if kx1 else "2D"
            raise ValueError(f"Genotype op {op!r} is {kind} but the space is {space}; derive it from this space")


def genotype_cost(genotype: Genotype_CNN, cfg: SpaceConfig | Any) -> Cost:
    """Exact params, MACs and peak activation memory of the NetworkCnn a genotype builds.

    Peak activation memory is the most elements live at any kernel step of a node-by-node
    inference (int8: 1 byte each, float32: 4). Each kernel step writes a fresh buffer; BN is
    folded into its conv and ReLU into its consumer's read. Steps: the stem (input + output);
    per cell, the preprocessing if it has one (cell input + ``state_0``; then the input is freed;
    without one, the input is ``state_0``), then nodes
    ``1..n``, each one step per kernel of its primitive (``OpCost.scratch``) while the states
    still needed later are held, plus its input at the first step if this is its last use. The
    concat is zero-copy (nodes are written into their slices of the cell output, which stays live
    until the next cell has read it); the head pools (cell output + vector), then multiplies.

    This is the peak of a runtime that fuses BN and ReLU and writes concat inputs in place, which
    is what the search should rank networks by. TFLite Micro does neither (measured with
    ``fnas export --format tflite``, docs/tflite.md): every op, ReLU, concat and the slice+pad of a
    strided skip included, gets its own output buffer, so its planned activation arena was 1.50-1.75x
    this prediction on the networks measured. The runtime's figure is
    :func:`fnas.app.tflite.live_tensor_peak_bytes` of the exported flatbuffer (within 0-11% of the
    measured arena); reserve the arena ``export.json`` reports, not this number.

    Args:
        genotype: a :class:`Genotype_CNN` with ``cfg.nodes`` nodes and ``cfg.multiplier`` concat.
        cfg: the space, or a config holding it as ``.space`` (its sizes size the network).

    Returns:
        A :class:`Cost` at batch 1.

    Raises:
        ValueError: an invalid genotype, or one whose ops do not fit the space's kind (kx1 / 2D).

    References:
        Lin et al. MCUNet: Tiny Deep Learning on IoT Devices. NeurIPS 2020 (peak SRAM of activations).
        Liberis, Dudziak, Lane. muNAS: Constrained Neural Architecture Search for Microcontrollers.
        EuroMLSys 2021 (peak memory usage of an execution schedule).
    """
    chain = chain_of(cfg)
    if chain is not None:
        return chain_genotype_cost(genotype, chain)
    space = space_of(cfg)
    validate_genotype(genotype, nodes=space.nodes, multiplier=space.multiplier)
    kx1 = space.is_1d
    _check_kinds([op for op, _ in list(genotype.normal) + list(genotype.reduce)], kx1)
    parts = stem_parts(space)
    shape = space.input_shape
    x_elems = space.stem_multiplier * space.C * shape[0] * shape[1]  # the stem output
    schedule = [("stem", space.in_channels * shape[0] * shape[1] + x_elems)]
    c_last = space.stem_multiplier * space.C
    for layer, (reduction, c_in, c) in enumerate(cell_plan(space)):
        cell = list(genotype.reduce if reduction else genotype.normal)
        concat = list(genotype.reduce_concat if reduction else genotype.normal_concat)
        name = f"cells.{layer}"
        sizes, shapes = [c * shape[0] * shape[1]], [shape]  # state_0
        if preprocesses(space.preprocess, c_in, c):  # else state_0 is the cell input: no step, no part
            parts[f"{name}.pre"] = conv_parts(c_in, c, 1, shape, kx1)
            schedule.append((f"{name}.pre", x_elems + sizes[0]))
        last = last_uses([i for _, i in cell], concat)
        for j, (op, i) in enumerate(cell, start=1):
            oc = primitive_cost(op, c, 2 if reduction and i == 0 else 1, shapes[i], kx1=kx1)
            key = f"{name}.n{j}.{op}"
            parts[key] = (oc.params, oc.macs)
            held = sum(sizes[m] for m in range(j) if last[m] > j)
            read = sizes[i] if last[i] == j else 0  # the input, when not already held
            for t, buffers in enumerate(oc.scratch):
                step = f"{key}[{t}]" if len(oc.scratch) > 1 else key
                schedule.append((step, held + (read if t == 0 else 0) + buffers))
            sizes.append(oc.out_elems)
            shapes.append(oc.out_shape)
        x_elems = sum(sizes[k] for k in concat)
        shape = shapes[concat[0]]
        c_last = len(concat) * c
    parts["head"] = head_parts(c_last, space.num_classes)
    schedule += [("head.pool", x_elems + c_last), ("head.linear", c_last + space.num_classes)]
    return Cost.from_parts(parts, schedule)


def last_uses(inputs: Sequence[int], concat: Sequence[int]) -> list[int]:
    """Per state, the index of the last node reading it (``n + 1``: the cell output; itself: none).

    A state is freed right after its last use; a node nobody reads right after it is written.
    """
    n = len(inputs)
    last = list(range(n + 1))
    for j, i in enumerate(inputs, start=1):
        last[i] = max(last[i], j)
    for k in concat:
        last[k] = n + 1
    return last
