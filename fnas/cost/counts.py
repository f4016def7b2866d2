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
from fnas.spaces.chain.cost import OpGraph, check_runtime, same_padding_matches
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
    "tflm_graph",
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


def genotype_cost(genotype: Genotype_CNN, cfg: SpaceConfig | Any, *, runtime: str = "fused") -> Cost:
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

    This ``runtime="fused"`` peak is that of a runtime that fuses BN and ReLU and writes concat
    inputs in place; the search constrains it (``--max-sram``, the penalty, the knapsack), since it
    is what the architecture decides, is additive over a cell's steps and has a differentiable
    expectation. TFLite Micro does neither fusion (docs/tflite.md): ``runtime="tflm"`` returns the
    activation arena TFLM's greedy planner lays out for the int8 export (:func:`tflm_graph`: the
    ReLU before a preprocessing or factorised-reduce conv is a copy unless the converter folds it
    into the conv feeding it, the concat is a copy and requantises inputs of differing scales, a
    strided skip is ReLU, 1x1 conv, SLICE, PAD, 1x1 conv, concat, a strided pool is the stride-1
    pool plus a STRIDED_SLICE, buffers are 16-byte aligned), 1.5-1.75x the fused figure on cells.

    Args:
        genotype: a :class:`Genotype_CNN` with ``cfg.nodes`` nodes and ``cfg.multiplier`` concat.
        cfg: the space, or a config holding it as ``.space`` (its sizes size the network).
        runtime: ``"fused"`` or ``"tflm"`` (then ``peak_sram_bytes_int8`` / ``_f32`` are TFLM's
            planned arena and the schedule lists each TFLite op with its aligned live int8 bytes).

    Returns:
        A :class:`Cost` at batch 1.

    Raises:
        ValueError: an invalid genotype, or one whose ops do not fit the space's kind (kx1 / 2D).

    References:
        Lin et al. MCUNet: Tiny Deep Learning on IoT Devices. NeurIPS 2020 (peak SRAM of activations).
        Liberis, Dudziak, Lane. muNAS: Constrained Neural Architecture Search for Microcontrollers.
        EuroMLSys 2021 (peak memory usage of an execution schedule).
    """
    check_runtime(runtime)
    chain = chain_of(cfg)
    if chain is not None:
        return chain_genotype_cost(genotype, chain, runtime=runtime)
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
    if runtime == "tflm":
        return tflm_graph(genotype, space).cost(Cost, parts)
    return Cost.from_parts(parts, schedule)


def _padded(shape: Shape, k: int, dilation: int, stride: int, kx1: bool) -> Shape | None:
    """The explicitly padded grid a strided 'same' op needs in TFLite (None: SAME padding matches)."""
    axes = (0,) if kx1 else (0, 1)
    if all(same_padding_matches(shape[a], k, dilation, stride) for a in axes):
        return None
    pad = 2 * dilation * (k // 2)
    return (shape[0] + pad, shape[1] if kx1 else shape[1] + pad)


def _node_ops(g: OpGraph, key: str, name: str, x: int, c: int, stride: int, shape: Shape, kx1: bool) -> int:
    """Add the TFLite ops of primitive ``name`` on tensor ``x``; the id of its output (``x``: identity)."""
    prim = P.get(name)
    out = out_grid(shape, stride, kx1)
    n_in, n_out = c * shape[0] * shape[1], c * out[0] * out[1]
    if prim.family == "skip" and stride == 1:
        return x
    if prim.family == "skip":  # factorised reduce: ReLU, 1x1 conv / shift by one (SLICE, PAD), 1x1 conv, concat
        r = g.add(f"{key}.relu", [x], n_in, relu=True)
        h1 = g.add(f"{key}.conv1", [r], n_out // 2)
        shifted = (shape[0] - 1) * (shape[1] if kx1 else shape[1] - 1)
        p = g.add(f"{key}.pad", [g.add(f"{key}.slice", [r], c * shifted)], n_in)
        return g.add(key, [h1, g.add(f"{key}.conv2", [p], n_out - n_out // 2)], n_out)
    if prim.family == "pool":  # a strided 'same' pool is the stride-1 pool, then every other row
        y = g.add(key if stride == 1 else f"{key}.pool", [x], n_in)
        return y if stride == 1 else g.add(key, [y], n_out)
    if name.startswith(("sep_conv", "dil_conv")):  # (ReLU, [PAD], depthwise, pointwise): twice for sep
        dilation = 2 if name.startswith("dil_conv") else 1
        for rep in range(2 if name.startswith("sep_conv") else 1):
            x = g.add(f"{key}.relu{rep}", [x], n_in if rep == 0 else n_out, relu=True)
            padded = _padded(shape, prim.kernel, dilation, stride, kx1) if rep == 0 else None
            if padded is not None:
                x = g.add(f"{key}.pad", [x], c * padded[0] * padded[1])
            x = g.add(f"{key}.dw{rep}", [x], n_out, conv=True)
            x = g.add(f"{key}.pw{rep}", [x], n_out, conv=True)
        return x
    padded = _padded(shape, prim.kernel, 1, stride, kx1) if prim.kernel else None
    if padded is not None:
        x = g.add(f"{key}.pad", [x], c * padded[0] * padded[1])
    return g.add(key, [x], n_out, conv=True)  # conv_bn_relu (BN and ReLU folded), or a user's op


def _concat(g: OpGraph, key: str, inputs: list[int], group: dict[int, int], free: set[int], elems: int) -> int:
    """The cell's CONCATENATION, after a QUANTIZE copy of each input whose scale cannot be the output's.

    int8 concat inputs share the output's scale. Inputs of one scale (e.g. a node and a max pool of
    it) need nothing; otherwise each input that is not a conv read only by the concat (a conv can
    write any scale) is requantised by a QUANTIZE op (ai-edge-quantizer's choice, measured).
    """
    if len({group[t] for t in inputs}) > 1:
        inputs = [t if t in free else g.add(f"{key}.requantize", [t], g.elems[t]) for t in inputs]
    return g.add(key, inputs, elems)


def tflm_graph(genotype: Genotype_CNN, cfg: SpaceConfig | Any) -> OpGraph:
    """The ops TFLite Micro runs for the int8 export of the genotype's NetworkCnn (BN folded).

    Raises:
        ValueError: an invalid genotype for the space.
    """
    space = space_of(cfg)
    validate_genotype(genotype, nodes=space.nodes, multiplier=space.multiplier)
    kx1, shape = space.is_1d, space.input_shape
    g = OpGraph(space.in_channels * shape[0] * shape[1])
    x = 0
    if space.with_input_batchnorm:  # (x - mean) * scale: two elementwise ops, a buffer each
        x = g.add("input_bn.sub", [x], g.elems[0])
        x = g.add("input_bn.mul", [x], g.elems[0])
    c_last = space.stem_multiplier * space.C
    x = g.add("stem", [x], c_last * shape[0] * shape[1], conv=True)
    group = {x: x}  # tensor -> the tensor whose scale it has (pools, slices, skips keep their input's)
    for layer, (reduction, c_in, c) in enumerate(cell_plan(space)):
        cell = list(genotype.reduce if reduction else genotype.normal)
        concat = list(genotype.reduce_concat if reduction else genotype.normal_concat)
        name = f"cells.{layer}"
        if preprocesses(space.preprocess, c_in, c):
            r = g.add(f"{name}.pre.relu", [x], c_in * shape[0] * shape[1], relu=True)
            x = g.add(f"{name}.pre", [r], c * shape[0] * shape[1], conv=True)
            group[r], group[x] = r, x
        states, shapes = [x], [shape]
        for j, (op, i) in enumerate(cell, start=1):
            stride = 2 if reduction and i == 0 else 1
            before = len(g.elems)
            y = _node_ops(g, f"{name}.n{j}.{op}", op, states[i], c, stride, shapes[i], kx1)
            keeps_scale = P.get(op).family == "pool"  # (an identity skip returns states[i] itself)
            for t in range(before, len(g.elems)):
                group[t] = group[states[i]] if keeps_scale else t
            states.append(y)
            shapes.append(out_grid(shapes[i], stride, kx1))
        readers = {t for _, inputs, _, _ in g.ops for t in inputs}
        convs = {out for _, _, out, kind in g.ops if kind == "conv"}
        free = {states[k] for k in concat if states[k] in convs and states[k] not in readers}
        shape = shapes[concat[0]]
        elems = len(concat) * c * shape[0] * shape[1]
        inputs = [states[k] for k in concat]
        x = inputs[0] if len(inputs) == 1 else _concat(g, name, inputs, group, free, elems)
        for t in range(len(group), len(g.elems)):
            group[t] = t
        c_last = len(concat) * c
    x = g.add("head.pool", [x], c_last)
    g.add("head.linear", [x], space.num_classes)
    return g


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
