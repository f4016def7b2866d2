"""Costs of architectures: parameters ("Memory"), MACs ("Compute") and peak activation memory (SRAM).

Exact for the :class:`~fnas.spaces.cell.network.NetworkCnn` a genotype builds; differentiable in the alphas for
the search penalty; the cheapest and dearest genotype of a space, for budget checks and scaling.

Counting conventions (batch 1, the evaluation network, i.e. affine BatchNorm):

- parameters are ``sum(p.numel())`` of the built module: affine BN counts ``2 C`` (weight, bias),
  running statistics are buffers and do not count; the search network's BN inside ops is
  affine-free (``affine=False`` in :func:`primitive_cost`);
- MACs are what ``torch.utils.flop_counter.FlopCounterMode`` counts as FLOPs / 2: convolutions
  (``out_elems * C_in / groups * prod(kernel)``) and matmuls (``in * out`` for the head); BN, ReLU,
  pooling, additions and the global average pool are free;
- spatial sizes: stride 2 with padding ``k // 2`` gives ``ceil(T / 2)`` (both axes in 2D spaces);
- primitives not built in (a user's ``register`` or a seed-style ``nn.Module`` in
  ``fnas.spaces.primitives.modules.OPS``, family ``"module"``) are measured: the module NetworkCnn would build is
  instantiated (global RNG state restored afterwards) and run once on zeros under FlopCounterMode;
  its output must be ``C`` channels on the same grid as the built-in ops.

Peak activation memory follows this schedule of a node-by-node inference (int8: 1 byte per element,
float32: 4); the peak is the largest number of elements live at any kernel step:

1. every kernel step writes a fresh buffer; BN is folded into the preceding conv (the input BN is
   applied in place) and ReLU is fused into its consumer's read, so neither allocates;
2. stem: the input and the stem output are live;
3. each cell: preprocessing (ReLU, 1x1 conv, BN) reads the cell input and writes ``state_0``; the cell
   input is then freed. Nodes run in order ``1..n``; node ``j`` applies its primitive to
   ``state_a``, in one kernel step (conv, pool, skip, factorized reduce: its two 1x1 convs write the
   two halves of one output) or several (sep conv: dw, pw, dw, pw = 4; dil conv: dw, pw = 2). At
   step ``t`` of node ``j`` the live elements are: every state ``i < j`` needed after node ``j``
   (read by a later node or concatenated), plus ``state_a`` at ``t = 0`` if it is not already
   counted, plus the primitive's own buffers at step ``t`` (the buffer it reads, and the buffer it
   writes; at the last step that is the node's output). A state is freed right after its last use;
   a node nobody reads is freed right after it is written;
4. the concat is zero-copy: a concatenated node is written straight into its channel slice of the
   cell output, so the output costs nothing beyond its parts, which stay live until the next
   cell's preprocessing (or the head) has read them. An identity skip therefore copies its input
   into the node's slice (a fresh buffer like any other op);
5. head: global average pool (the last cell output + the pooled vector), then linear (pooled vector
   + logits).

Expected cost (differentiable): fixed parts (input BN, stem, preprocessing, head) plus, per cell,
either

- ``estimator="supernet"`` (FBNet / ProxylessNAS style): ``sum over every edge (i, j) of
  sum_k softmax(alpha_ij)_k cost_k``, ``none`` costing 0: the cost of the supernet's expected
  mixed ops. A node keeps every edge, whereas the derived genotype keeps one;
- ``estimator="genotype"`` (default): per node ``j``, the probability that the derived genotype
  picks ``(edge i, op k)``: ``softmax`` over the node's non-``none`` pairs of
  ``log softmax(alpha_ij)_k / tau``. :func:`fnas.spaces.cell.genotype.derive_genotype` takes the argmax of
  exactly these scores, so ``tau -> 0`` gives the derived genotype and ``tau = 1`` picks pairs in
  proportion to their strength. The expected cost is ``sum_(i,k) P_j(i, k) cost_k(i -> j)``; it
  cannot be lowered by raising ``none`` (the genotype never keeps ``none``), only by making cheap
  pairs the likely picks, which is what lowers the derived genotype's exact cost.

With ``straight_through=True`` (genotype estimator) the picks' value is one-hot on the pair
:func:`~fnas.spaces.cell.genotype.derive_genotype` keeps and their gradient the soft picks': the value is the
derived genotype's exact cost, the gradient says which pairs to strengthen to lower it. Budget
penalties use this (see :func:`penalty` for why); :func:`derive_within_budget` is the exact
safeguard that picks the strongest genotype within budget when the search's argmax misses it.

For ``"sram"`` (genotype estimator only) the schedule above is evaluated in expectation with nodes
independent: state ``i`` is held at node ``j`` with probability 1 if concatenated, else
``1 - prod_{m > j} (1 - P(node m reads i))``; each step's primitive buffers are averaged under
``P_j``. The peak over steps is the smooth maximum ``ref * sram_tau * logsumexp(v / (ref *
sram_tau))`` with ``ref = max(v)`` detached: it upper-bounds ``max(v)`` by at most
``ref * sram_tau * log(#steps)`` and equals the exact peak of the genotype as alphas become one-hot
and ``sram_tau -> 0``. In DARTS-style cells the peak is often a reduction cell's preprocessing
(the full-resolution input plus a double-width ``state_0``), which no op choice changes:
``min_cost(cfg, "sram")`` tells how much room an SRAM penalty has.

Cost tables are built on the first call for a space and cached per space (a user op's cost is
measured once). Call :func:`penalty` (or :func:`expected_cost`, :func:`check_budget`) once eagerly
before ``torch.compile``-ing a step that uses it; the compiled step then reads the tables as
constants instead of tracing their construction.

References:
    Liu, Simonyan, Yang. DARTS: Differentiable Architecture Search. ICLR 2019.
    Wu et al. FBNet: Hardware-Aware Efficient ConvNet Design via Differentiable NAS. CVPR 2019.
    Cai, Zhu, Han. ProxylessNAS: Direct Neural Architecture Search on Target Task and Hardware. ICLR 2019.
    Tan et al. MnasNet: Platform-Aware Neural Architecture Search for Mobile. CVPR 2019 (budgets).
    Lin et al. MCUNet: Tiny Deep Learning on IoT Devices. NeurIPS 2020 (peak SRAM of activations).
    Liberis, Dudziak, Lane. muNAS: Constrained Neural Architecture Search for Microcontrollers.
    EuroMLSys 2021 (peak memory usage of an execution schedule).
"""

from __future__ import annotations

import functools
import itertools
from typing import Literal, Mapping, NamedTuple, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from fnas.spaces.primitives import modules as O
from fnas.spaces import primitives as P
from fnas.search.config import SearchConfig
from fnas.spaces.cell.config import SpaceConfig
from fnas.spaces.cell.genotype import Genotype_CNN, validate_genotype
from fnas.spaces.cell.supernet import cell_plan, space_of

__all__ = [
    "METRICS",
    "Cost",
    "OpCost",
    "check_budget",
    "derive_within_budget",
    "expected_cost",
    "genotype_cost",
    "max_cost",
    "min_cost",
    "penalty",
    "primitive_cost",
]

Tensor = torch.Tensor
Shape = tuple[int, int]
Metric = Literal["params", "macs", "sram"]
Estimator = Literal["genotype", "supernet"]

METRICS = ("params", "macs", "sram")
# The spec's nas_optimization_mode names and our metric names, lower-cased.
_MODES = {"memory": "params", "params": "params", "compute": "macs", "macs": "macs", "sram": "sram"}


class OpCost(NamedTuple):
    """Exact cost of one primitive at batch 1.

    Attributes:
        params: parameter count (``sum(p.numel())`` of the built module).
        macs: multiply-accumulates (FlopCounterMode FLOPs / 2).
        out_elems: elements of the output activation.
        out_shape: spatial shape of the output: ``(T, 1)`` or ``(H, W)``.
        scratch: elements of the primitive's own buffers live at each of its kernel steps (the
            buffer read and the buffer written; the output at the last step), see the module
            docstring. Its input is not included.
    """

    params: int
    macs: int
    out_elems: int
    out_shape: Shape
    scratch: tuple[int, ...]


class Cost(NamedTuple):
    """Exact cost of a genotype's NetworkCnn at batch 1.

    Attributes:
        params: parameter count.
        macs: multiply-accumulates of one forward pass.
        peak_sram_bytes_int8: peak live activation elements (1 byte each).
        peak_sram_bytes_f32: the same in float32 (4 bytes each).
        peak_at: the kernel step where the peak occurs (the first, on ties).
        parts: ``{part: (params, macs)}``: ``input_bn``, ``stem``, ``cells.{l}.pre``,
            ``cells.{l}.n{j}.{op}``, ``head``.
        schedule: ``((step, live_elems), ...)`` in execution order.
    """

    params: int
    macs: int
    peak_sram_bytes_int8: int
    peak_sram_bytes_f32: int
    peak_at: str
    parts: dict[str, tuple[int, int]]
    schedule: tuple[tuple[str, int], ...]


# --- one primitive ---------------------------------------------------------------------------

# Built-in primitives with closed-form costs, captured at import: a name re-registered or replaced
# in OPS by a user is measured instead.
_FAMILIES = ("none", "skip", "avg_pool", "max_pool", "conv_bn_relu", "sep", "dil")
_FORMULA = {
    name: (P.get(name), next(f for f in _FAMILIES if name.startswith(f)))
    for name in sorted(set(P.SEED_KX1) | set(P.KX1_EXTRA) | set(P.DARTS_2D))
}


def _uses_formula(name: str) -> bool:
    return name in _FORMULA and P._REGISTRY.get(name) is _FORMULA[name][0] and O.is_builtin(name)


def _grid(shape: Shape, stride: int, kx1: bool) -> Shape:
    """Output grid of a stride-``stride`` op with padding ``k // 2``: ``ceil(T / 2)`` per strided axis."""
    if stride == 1:
        return shape
    h, w = shape
    return (-(-h // 2), w if kx1 else -(-w // 2))


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
    if _uses_formula(name):
        return _formula_cost(name, C, stride, shape, kx1, affine)
    source = prim if O.is_builtin(name) else O.OPS[name]
    return _measured_cost(name, C, stride, shape, kx1, affine, source)


def _formula_cost(name: str, C: int, stride: int, shape: Shape, kx1: bool, affine: bool) -> OpCost:
    prim, family = _FORMULA[name]
    out = _grid(shape, stride, kx1)
    a = out[0] * out[1]  # output positions
    kk = prim.kernel if kx1 else prim.kernel**2  # kernel elements
    bn = 2 * C if affine else 0
    y = C * a
    if family == "skip" and stride == 1:  # identity; copied into the node's buffer
        return OpCost(0, 0, y, out, (y,))
    if family == "skip":
        if C % 2:
            raise ValueError(f"skip_connect with stride 2 (factorized reduce) needs an even C, got C={C}")
        # two 1x1 convs C -> C/2 on offset grids: 2 (C/2) C weights; each C/2 * a * C MACs
        return OpCost(C * C + bn, C * C * a, y, out, (y,))
    if family in ("none", "avg_pool", "max_pool"):
        return OpCost(0, 0, y, out, (y,))
    if family == "conv_bn_relu":
        return OpCost(C * C * kk + bn, y * C * kk, y, out, (y,))
    if family == "sep":  # (depthwise k, pointwise, BN) twice
        return OpCost(2 * (C * kk + C * C + bn), 2 * y * (kk + C), y, out, (y, 2 * y, 2 * y, 2 * y))
    # dil: depthwise k (dilation 2), pointwise, BN
    return OpCost(C * kk + C * C + bn, y * (kk + C), y, out, (y, 2 * y))


@functools.lru_cache(maxsize=4096)
def _measured_cost(name: str, C: int, stride: int, shape: Shape, kx1: bool, affine: bool, source) -> OpCost:
    """Instantiate the module NetworkCnn would build and count it (``source`` keys the cache)."""
    builtin = O.is_builtin(name)
    with torch.random.fork_rng(devices=[]):  # seed-style inits draw from the global RNG
        if builtin:
            module = O.FunctionalOp(name, C, stride, affine, gen=torch.Generator().manual_seed(0))
        else:
            module = source(C, stride, affine)
    params = sum(p.numel() for p in module.parameters())
    x = torch.zeros(1, C, *shape)  # (1, C, T, 1) or (1, C, H, W): what seed-style modules see
    if builtin and kx1:
        x = x.squeeze(-1)  # NetworkCnn hands registered ops (N, C, T) in kx1 spaces
    module.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        y = module(x)
    out = tuple(y.shape[2:]) if y.ndim == 4 else (int(y.shape[2]), 1)
    expected = _grid(shape, stride, kx1)
    if y.shape[0] != 1 or y.shape[1] != C or out != expected:
        raise ValueError(
            f"Primitive {name!r} (C={C}, stride={stride}) maps input {(1, C, *shape)} to {tuple(y.shape)}; "
            f"expected (1, {C}, {expected[0]}, {expected[1]}): a cell concatenates nodes on one grid, so an "
            "op must keep C channels and use padding k // 2"
        )
    return OpCost(params, counter.get_total_flops() // 2, y.numel(), out, (y.numel(),))


# --- fixed parts -----------------------------------------------------------------------------


def _conv_parts(c_in: int, c_out: int, k: int, shape: Shape, kx1: bool) -> tuple[int, int]:
    """(params, macs) of a stride-1 'same' conv (no bias) followed by affine BN."""
    kk = k if kx1 else k * k
    return c_in * c_out * kk + 2 * c_out, c_out * shape[0] * shape[1] * c_in * kk


def _stem_parts(space: SpaceConfig) -> dict[str, tuple[int, int]]:
    parts = {}
    if space.with_input_batchnorm:
        parts["input_bn"] = (2 * space.in_channels, 0)
    parts["stem"] = _conv_parts(space.in_channels, space.stem_multiplier * space.C, 3, space.input_shape, space.is_1d)
    return parts


def _head_parts(c_last: int, num_classes: int) -> tuple[int, int]:
    return c_last * num_classes + num_classes, c_last * num_classes


# --- a genotype ------------------------------------------------------------------------------


def _check_kinds(ops: Sequence[str], kx1: bool) -> None:
    for op in ops:
        kind = P.get(op).kind
        if (kx1 and kind == "2d") or (not kx1 and kind == "1d"):
            space = "kx1" if kx1 else "2D"
            raise ValueError(f"Genotype op {op!r} is {kind} but the space is {space}; derive it from this space")


def genotype_cost(genotype: Genotype_CNN, cfg: SpaceConfig | SearchConfig) -> Cost:
    """Exact params, MACs and peak activation memory of the NetworkCnn a genotype builds.

    Args:
        genotype: a :class:`Genotype_CNN` with ``cfg.nodes`` nodes and ``cfg.multiplier`` concat.
        cfg: the space (its C, layers, in_channels, input_shape, ... size the network).

    Returns:
        A :class:`Cost` at batch 1; the SRAM schedule is the module docstring's.

    Raises:
        ValueError: an invalid genotype, or one whose ops do not fit the space's kind (kx1 / 2D).
    """
    space = space_of(cfg)
    validate_genotype(genotype, nodes=space.nodes, multiplier=space.multiplier)
    kx1 = space.is_1d
    _check_kinds([op for op, _ in list(genotype.normal) + list(genotype.reduce)], kx1)
    parts = _stem_parts(space)
    shape = space.input_shape
    x_elems = space.stem_multiplier * space.C * shape[0] * shape[1]  # the stem output
    schedule = [("stem", space.in_channels * shape[0] * shape[1] + x_elems)]
    c_last = space.stem_multiplier * space.C
    for layer, (reduction, c_in, c) in enumerate(cell_plan(space)):
        cell = list(genotype.reduce if reduction else genotype.normal)
        concat = list(genotype.reduce_concat if reduction else genotype.normal_concat)
        name = f"cells.{layer}"
        parts[f"{name}.pre"] = _conv_parts(c_in, c, 1, shape, kx1)
        sizes, shapes = [c * shape[0] * shape[1]], [shape]  # state_0
        schedule.append((f"{name}.pre", x_elems + sizes[0]))
        last = _last_uses([i for _, i in cell], concat)
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
    parts["head"] = _head_parts(c_last, space.num_classes)
    schedule += [("head.pool", x_elems + c_last), ("head.linear", c_last + space.num_classes)]
    peak_at, peak = max(schedule, key=lambda s: s[1])  # max keeps the first on ties
    return Cost(
        params=sum(p for p, _ in parts.values()),
        macs=sum(m for _, m in parts.values()),
        peak_sram_bytes_int8=peak,
        peak_sram_bytes_f32=4 * peak,
        peak_at=peak_at,
        parts=parts,
        schedule=tuple(schedule),
    )


def _last_uses(inputs: Sequence[int], concat: Sequence[int]) -> list[int]:
    """Per state, the index of the last node reading it (``n + 1``: the cell output; itself: none)."""
    n = len(inputs)
    last = list(range(n + 1))
    for j, i in enumerate(inputs, start=1):
        last[i] = max(last[i], j)
    for k in concat:
        last[k] = n + 1
    return last


# --- tables for the expected cost and the extremes ----------------------------------------------

# Plain dicts keyed by the (frozen, hashable) space rather than lru_cache: torch.compile reads a
# warm entry as a constant, whereas it would trace through an lru_cache-wrapped builder every time.
_CACHE: dict = {}


class _Cell(NamedTuple):
    kind: str  # "normal" / "reduce"
    pre_step: int  # live elements during preprocessing
    sizes: tuple[int, ...]  # elements of state_0 .. state_n (the same for every op)
    scratch: list  # [edge row][primitive] -> buffer sizes per kernel step


class _Kind(NamedTuple):
    """Tensors of one cell kind, stacked over its cells (I of them)."""

    params: Tensor  # (E, K), summed over the cells
    macs: Tensor  # (E, K)
    sizes: Tensor  # (I, n + 1) elements of state_0 .. state_n
    scratch: Tensor  # (I, E, K, S) primitive buffers per kernel step, zero-padded
    pre: Tensor  # (I,) live elements during preprocessing


class _Tables(NamedTuple):
    fixed: dict  # metric -> int: params / macs of input BN, stem, preprocessing, head
    kinds: dict  # "normal" / "reduce" -> _Kind (absent when the network has no such cell)
    cells: tuple  # of _Cell, in network order
    fixed_steps: Tensor  # live elements of the stem and head steps
    none: Tensor  # (K,) bool: which primitives are `none`
    edge_i: Tensor  # (E,) source state of each alpha row
    edge_j: Tensor  # (E,) target node of each alpha row
    node_rows: Tensor  # (n, E) 1 where row r is an edge into node j
    concat: Tensor  # (n + 1,) bool: states concatenated into the cell output


def _tables(space: SpaceConfig) -> _Tables:
    key = ("tables", space)
    if key not in _CACHE:
        _CACHE[key] = _build_tables(space)
    return _CACHE[key]


def _build_tables(space: SpaceConfig) -> _Tables:
    kx1, prims, edges, n = space.is_1d, space.primitives, space.edges(), space.nodes
    fixed = {"params": 0, "macs": 0}
    for p, m in _stem_parts(space).values():
        fixed["params"] += p
        fixed["macs"] += m
    shape = space.input_shape
    x_elems = space.stem_multiplier * space.C * shape[0] * shape[1]
    fixed_steps = [space.in_channels * shape[0] * shape[1] + x_elems]
    concat = range(n - space.multiplier + 1, n + 1)
    cells = []
    for reduction, c_in, c in cell_plan(space):
        pre = _conv_parts(c_in, c, 1, shape, kx1)
        fixed["params"] += pre[0]
        fixed["macs"] += pre[1]
        node_shape = _grid(shape, 2 if reduction else 1, kx1)
        sizes = (c * shape[0] * shape[1],) + (c * node_shape[0] * node_shape[1],) * n
        costs = [  # [edge row][primitive]; edges leaving a reduction cell's state_0 are strided
            [primitive_cost(op, c, 1 + (reduction and not i), node_shape if i else shape, kx1=kx1) for op in prims]
            for i, _ in edges
        ]
        scratch = [[oc.scratch for oc in row] for row in costs]
        cells.append((_Cell("reduce" if reduction else "normal", x_elems + sizes[0], sizes, scratch), costs))
        x_elems = sum(sizes[k] for k in concat)
        shape = node_shape
    c_last = space.multiplier * cell_plan(space)[-1][2]
    head = _head_parts(c_last, space.num_classes)
    fixed["params"] += head[0]
    fixed["macs"] += head[1]
    fixed_steps += [x_elems + c_last, c_last + space.num_classes]
    steps = max(len(s) for cell, _ in cells for row in cell.scratch for s in row)
    f64 = torch.float64
    kinds = {}
    for kind in ("normal", "reduce"):
        mine = [(cell, costs) for cell, costs in cells if cell.kind == kind]
        if not mine:
            continue
        scratch = torch.zeros(len(mine), len(edges), len(prims), steps, dtype=f64)
        for c, (cell, _) in enumerate(mine):
            for r, row in enumerate(cell.scratch):
                for k, s in enumerate(row):
                    scratch[c, r, k, : len(s)] = torch.tensor(s, dtype=f64)
        kinds[kind] = _Kind(
            params=torch.tensor([[[oc.params for oc in row] for row in costs] for _, costs in mine], dtype=f64).sum(0),
            macs=torch.tensor([[[oc.macs for oc in row] for row in costs] for _, costs in mine], dtype=f64).sum(0),
            sizes=torch.tensor([cell.sizes for cell, _ in mine], dtype=f64),
            scratch=scratch,
            pre=torch.tensor([cell.pre_step for cell, _ in mine], dtype=f64),
        )
    node_rows = torch.zeros(n, len(edges), dtype=f64)
    for r, (_, j) in enumerate(edges):
        node_rows[j - 1, r] = 1.0
    return _Tables(
        fixed=fixed,
        kinds=kinds,
        cells=tuple(cell for cell, _ in cells),
        fixed_steps=torch.tensor(fixed_steps, dtype=f64),
        none=torch.tensor([name == "none" for name in prims]),
        edge_i=torch.tensor([i for i, _ in edges]),
        edge_j=torch.tensor([j for _, j in edges]),
        node_rows=node_rows,
        concat=torch.tensor([k in concat for k in range(n + 1)]),
    )


# --- expected (differentiable) cost --------------------------------------------------------------


def _check_alphas(alphas: Mapping[str, Tensor], space: SpaceConfig) -> None:
    expected = (space.num_edges, len(space.primitives))
    for kind in ("normal", "reduce"):
        got = tuple(alphas[kind].shape) if kind in alphas else "missing"
        if got != expected:
            raise ValueError(f"alphas[{kind!r}] must have shape {expected} for this space, got {got}")


def _pick_probs(alpha: Tensor, none: Tensor, nodes: int, tau: float) -> Tensor:
    """P_j(i, k): softmax over node j's non-none (edge, op) pairs of log softmax(alpha_ij)_k / tau."""
    scores = torch.log_softmax(alpha, dim=-1).masked_fill(none.to(alpha.device), float("-inf")) / tau
    blocks, row = [], 0
    for j in range(1, nodes + 1):
        block = scores[row : row + j]  # (j incoming edges, K)
        blocks.append(torch.softmax(block.reshape(-1), dim=0).reshape(block.shape))
        row += j
    return torch.cat(blocks)


def _hard_picks(alpha: Tensor, none: Tensor, nodes: int) -> Tensor:
    """One-hot ``(E, K)``: per node, the (edge, op) pair :func:`~fnas.spaces.cell.genotype.derive_genotype` keeps.

    The same computation as ``derive_genotype`` (float64 softmax per edge, ``none`` excluded, the
    first maximum of the node's flattened block), so the picks agree with it exactly, ties included.
    """
    probs = torch.softmax(alpha.detach().double(), dim=-1).masked_fill(none.to(alpha.device), -1.0)
    blocks, row = [], 0
    for j in range(1, nodes + 1):
        block = probs[row : row + j].reshape(-1)  # (j * K,)
        blocks.append(torch.nn.functional.one_hot(block.argmax(), block.numel()).reshape(j, -1))
        row += j
    return torch.cat(blocks).to(alpha.dtype)


def _probs(
    alphas: Mapping[str, Tensor],
    space: SpaceConfig,
    tables: _Tables,
    estimator: str,
    tau: float,
    straight_through: bool = False,
) -> dict:
    if estimator == "supernet":
        return {kind: torch.softmax(alphas[kind], dim=-1) for kind in ("normal", "reduce")}
    probs = {kind: _pick_probs(alphas[kind], tables.none, space.nodes, tau) for kind in ("normal", "reduce")}
    if straight_through:  # value: the derived genotype's picks; gradient: the soft picks'
        probs = {
            kind: _hard_picks(alphas[kind], tables.none, space.nodes) + (p - p.detach()) for kind, p in probs.items()
        }
    return probs


def _sram_steps(probs: dict, tables: _Tables) -> Tensor:
    """Expected live elements of every kernel step of the schedule (nodes independent)."""
    ref = probs["normal"]
    like = dict(dtype=ref.dtype, device=ref.device)
    n = tables.node_rows.shape[0]
    steps = [tables.fixed_steps[:1].to(**like)]
    for kind, tab in tables.kinds.items():
        p = probs[kind]  # (E, K)
        reads = torch.zeros(n + 1, n + 2, **like)  # reads[i, m] = P(node m reads state i)
        reads = reads.index_put((tables.edge_i.to(ref.device), tables.edge_j.to(ref.device)), p.sum(-1))
        # P(state i is still needed after node j) = 1 - prod_{m > j} (1 - reads[i, m]); 1 if concatenated
        unread = torch.flip(torch.cumprod(torch.flip(1.0 - reads, [1]), dim=1), [1])  # prod_{m >= j}
        alive = torch.where(tables.concat.to(ref.device)[:, None], 1.0, 1.0 - unread[:, 1:])  # (n+1, n+1)
        below = torch.ones(n + 1, n + 1, **like).triu(1)  # i < j
        sizes = tab.sizes.to(**like)  # (I, n + 1)
        held = sizes @ (alive * below)  # (I, n + 1): column j, states held through node j
        read = sizes @ (reads[:, : n + 1] * (1.0 - alive))  # the input, when freed after node j
        buffers = torch.einsum("rk,irks->irs", p, tab.scratch.to(**like))  # (I, E, S)
        buffers = torch.einsum("jr,irs->ijs", tables.node_rows.to(**like), buffers)  # (I, n, S)
        live = held[:, 1:, None] + buffers
        live = torch.cat([live[..., :1] + read[:, 1:, None], live[..., 1:]], dim=-1)
        steps += [tab.pre.to(**like), live.reshape(-1)]
    steps.append(tables.fixed_steps[1:].to(**like))
    return torch.cat(steps)


def _smooth_max(v: Tensor, tau: float) -> Tensor:
    """``s * logsumexp(v / s)``, ``s = tau * max(v)`` (detached): in ``[max v, max v + s log len(v)]``."""
    scale = v.detach().max() * tau
    return scale * torch.logsumexp(v / scale, dim=0)


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}; expected one of {list(METRICS)}")


def expected_cost(
    alphas: Mapping[str, Tensor],
    cfg: SpaceConfig | SearchConfig,
    *,
    metric: Metric,
    estimator: Estimator = "genotype",
    tau: float = 1.0,
    sram_tau: float = 0.01,
    straight_through: bool = False,
) -> Tensor:
    """The expected cost of the architecture the alphas describe; differentiable in ``alphas``.

    Args:
        alphas: ``{"normal", "reduce"}``, each ``(num_edges, len(primitives))``.
        cfg: the space (or a search config holding it).
        metric: ``"params"``, ``"macs"`` or ``"sram"`` (peak activation elements = int8 bytes).
        estimator: ``"genotype"`` (per node, pairs weighted by how likely the derived genotype
            picks them) or ``"supernet"`` (every edge's softmax-weighted cost); see the module
            docstring. ``"sram"`` needs ``"genotype"``.
        tau: temperature of the genotype estimator's pick distribution (``-> 0``: the argmax).
        sram_tau: relative temperature of the smooth maximum over the SRAM schedule.
        straight_through: (genotype estimator) the value is that of the genotype
            :func:`~fnas.spaces.cell.genotype.derive_genotype` returns for these alphas (one-hot picks: its
            exact params / MACs, and its SRAM peak up to the smooth maximum's slack), the gradient
            that of the soft picks at ``tau``.

    Returns:
        A 0-d tensor of the alphas' dtype; fixed parts (stem, preprocessing, head) included.

    Raises:
        ValueError: unknown metric or estimator, a non-positive temperature, alphas of the wrong
            shape, or ``metric="sram"`` or ``straight_through=True`` with the supernet estimator.

    References:
        Wu et al. FBNet. CVPR 2019; Cai, Zhu, Han. ProxylessNAS. ICLR 2019.
    """
    space = space_of(cfg)
    _check_metric(metric)
    if estimator not in ("genotype", "supernet"):
        raise ValueError(f"Unknown estimator {estimator!r}; expected 'genotype' or 'supernet'")
    if metric == "sram" and estimator == "supernet":
        raise ValueError(
            "metric='sram' is the peak of a genotype's schedule (one input per node); use estimator='genotype'"
        )
    if straight_through and estimator != "genotype":
        raise ValueError("straight_through=True needs estimator='genotype' (the derived genotype's picks)")
    if not tau > 0 or not sram_tau > 0:
        raise ValueError(f"tau and sram_tau must be positive, got tau={tau!r}, sram_tau={sram_tau!r}")
    _check_alphas(alphas, space)
    tables = _tables(space)
    probs = _probs(alphas, space, tables, estimator, tau, straight_through)
    if metric == "sram":
        return _smooth_max(_sram_steps(probs, tables), sram_tau)
    total = torch.zeros((), dtype=probs["normal"].dtype, device=probs["normal"].device) + float(tables.fixed[metric])
    for kind, tab in tables.kinds.items():
        p = probs[kind]
        total = total + (p * getattr(tab, metric).to(dtype=p.dtype, device=p.device)).sum()
    return total


# --- the cheapest and the dearest genotype -------------------------------------------------------


def _extreme(space: SpaceConfig, metric: str, best) -> int:
    """``best`` (min or max) over all genotypes of the space of the exact cost."""
    tables = _tables(space)
    candidates = [k for k, is_none in enumerate(tables.none.tolist()) if not is_none]
    if metric != "sram":  # additive: per node, the extreme (edge, op) pair
        total = tables.fixed[metric]
        for tab in tables.kinds.values():
            table = getattr(tab, metric)
            row = 0
            for j in range(1, space.nodes + 1):
                total += int(best(table[row + i, k].item() for i in range(j) for k in candidates))
                row += j
        return int(total)
    return _extreme_sram(space, best)


def _extreme_sram(space: SpaceConfig, best) -> int:
    # State sizes do not depend on the ops, so for fixed inputs (a_1..a_n) each node's op can be
    # chosen on its own: peak = max(pre, max_j best_k max_cells peak_j(k)). Enumerates n! input maps.
    tables = _tables(space)
    candidates = [k for k, is_none in enumerate(tables.none.tolist()) if not is_none]
    n = space.nodes
    result = int(max(tables.fixed_steps.tolist()))
    concat = range(n - space.multiplier + 1, n + 1)
    for kind in ("normal", "reduce"):
        cells = [c for c in tables.cells if c.kind == kind]
        if not cells:
            continue
        pre = max(c.pre_step for c in cells)
        extreme = None
        for inputs in itertools.product(*(range(j) for j in range(1, n + 1))):
            last = _last_uses(inputs, concat)
            peak = pre
            for j, i in enumerate(inputs, start=1):
                r = j * (j - 1) // 2 + i
                node = [_node_peak(cells, last, j, i, r, k) for k in candidates]
                peak = max(peak, best(node))
            extreme = peak if extreme is None else best(extreme, peak)
        result = max(result, extreme)
    return int(result)


def _node_peak(cells, last: list[int], j: int, i: int, r: int, k: int) -> int:
    """Peak live elements while node ``j`` runs op ``k`` on state ``i`` (alpha row ``r``), over the
    cells of one type: the states still needed later, the input if this is its last use, and the
    op's own buffers (the module docstring's schedule)."""
    worst = 0
    for cell in cells:
        held = sum(cell.sizes[m] for m in range(j) if last[m] > j)
        read = cell.sizes[i] if last[i] == j else 0
        buffers = cell.scratch[r][k]
        worst = max(worst, held + read + buffers[0], held + max(buffers))
    return worst


def _cached_extreme(space: SpaceConfig, metric: str, which: str) -> int:
    key = (which, space, metric)
    if key not in _CACHE:
        _CACHE[key] = _extreme(space, metric, min if which == "min" else max)
    return _CACHE[key]


def min_cost(cfg: SpaceConfig | SearchConfig, metric: Metric) -> int:
    """The exact cost of the space's cheapest genotype (``none`` is never kept).

    Params and MACs add up over nodes, so the cheapest genotype takes, per node, the cheapest
    non-``none`` op over its edges (edges leaving a reduction cell's input are strided: a
    factorized-reduce skip is not free there). The SRAM peak is minimised exactly by enumerating
    each cell's input maps (``n!``) and choosing ops per node.

    Args:
        cfg: the space (or a search config holding it).
        metric: ``"params"``, ``"macs"`` or ``"sram"`` (peak elements = int8 bytes).

    Returns:
        The minimum, an int.

    Raises:
        ValueError: unknown metric.
    """
    _check_metric(metric)
    return _cached_extreme(space_of(cfg), metric, "min")


def max_cost(cfg: SpaceConfig | SearchConfig, metric: Metric) -> int:
    """The exact cost of the space's most expensive genotype (see :func:`min_cost`).

    Raises:
        ValueError: unknown metric.
    """
    _check_metric(metric)
    return _cached_extreme(space_of(cfg), metric, "max")


def check_budget(
    cfg: SpaceConfig | SearchConfig,
    max_params: int | None = None,
    max_macs: int | None = None,
    max_sram_bytes: int | None = None,
    *,
    sram_bytes_per_elem: int = 1,
) -> None:
    """Raise if a budget is below what the space's cheapest genotype needs.

    Args:
        cfg: the space (or a search config holding it).
        max_params, max_macs: budgets; None skips the check.
        max_sram_bytes: peak activation budget in bytes; None skips the check.
        sram_bytes_per_elem: 1 for int8 inference, 4 for float32.

    Raises:
        ValueError: naming the minimum achievable and how to fix the budget or the space.
    """
    space = space_of(cfg)
    if sram_bytes_per_elem not in (1, 2, 4, 8):
        raise ValueError(f"sram_bytes_per_elem must be 1, 2, 4 or 8, got {sram_bytes_per_elem!r}")
    for arg, budget, metric, unit, scale in (
        ("max_params", max_params, "params", "parameters", 1),
        ("max_macs", max_macs, "macs", "MACs", 1),
        ("max_sram_bytes", max_sram_bytes, "sram", "bytes of peak activation memory", sram_bytes_per_elem),
    ):
        if budget is None:
            continue
        if not isinstance(budget, (int, float)) or isinstance(budget, bool) or budget <= 0:
            raise ValueError(f"{arg} must be a positive number, got {budget!r}")
        minimum = min_cost(space, metric) * scale
        if budget < minimum:
            raise ValueError(
                f"{arg}={budget} is below the minimum achievable in this space: {minimum} {unit} (the cheapest "
                f"genotype). Raise {arg} to at least {minimum}, or shrink the space (C={space.C}, "
                f"layers={space.layers}, nodes={space.nodes}, stem_multiplier={space.stem_multiplier})"
            )


# --- deriving a genotype within budget --------------------------------------------------------------


class _Partial(NamedTuple):
    score: float  # sum of the picked pairs' log-probabilities
    cost: tuple  # (params, macs) of the budgeted additive metrics, picked pairs only
    picks: tuple  # ((i, k), ...) per node so far


def _pareto(partials: list, room: tuple) -> list:
    """Drop partials over ``room`` and those another partial beats on score and every cost."""
    kept: list = []
    for p in sorted(partials, key=lambda p: (-p.score, p.cost)):
        if any(c > r for c, r in zip(p.cost, room)):
            continue
        if not any(all(a <= b for a, b in zip(q.cost, p.cost)) for q in kept):
            kept.append(p)
    return kept


def _knapsack(groups: list, room: tuple) -> list:
    """Multiple-choice knapsack by Pareto dynamic programming: one item per group.

    ``groups[g]`` lists ``(score, cost, pick)``; returns the Pareto set of complete choices
    (exact: a dominated partial choice cannot end better than the partial that dominates it,
    since what the remaining groups add does not depend on it). Costs are non-negative, so a
    partial whose cost plus the remaining groups' cheapest items exceeds ``room`` is dropped.
    """
    dims = len(room)
    rest = [tuple(0 for _ in range(dims))]  # cheapest completion of groups g.. per metric
    for items in reversed(groups):
        low = tuple(min(c[d] for _, c, _ in items) for d in range(dims)) if items else rest[0]
        rest.insert(0, tuple(a + b for a, b in zip(low, rest[0])))
    partials = [_Partial(0.0, tuple(0 for _ in range(dims)), ())]
    for g, items in enumerate(groups):
        grown = [
            _Partial(p.score + s, tuple(a + b for a, b in zip(p.cost, c)), p.picks + (pick,))
            for p in partials
            for s, c, pick in items
        ]
        bound = tuple(r - x for r, x in zip(room, rest[g + 1]))
        partials = _pareto(grown, bound)
    return partials


def _cell_options(
    kind: str, scores: Tensor, space: SpaceConfig, tables: _Tables, metrics: list, room: tuple, sram: int | None
) -> list:
    """The Pareto set of one cell type's choices: ``_Partial`` with one ``(i, k)`` pick per node."""
    tab = tables.kinds[kind]
    candidates = [k for k, is_none in enumerate(tables.none.tolist()) if not is_none]
    n = space.nodes
    table = {m: getattr(tab, m) for m in metrics}

    def item(r: int, i: int, k: int):
        return (float(scores[r, k]), tuple(int(table[m][r, k]) for m in metrics), (i, k))

    if sram is None:
        groups = [[item(j * (j - 1) // 2 + i, i, k) for i in range(j) for k in candidates] for j in range(1, n + 1)]
        return _knapsack(groups, room)
    # The peak depends on which states are live, i.e. on the input map (a_1..a_n); for a fixed map
    # each node's ops are feasible or not on their own (the module docstring's schedule).
    cells = [c for c in tables.cells if c.kind == kind]
    if max(c.pre_step for c in cells) > sram:
        return []
    concat = range(n - space.multiplier + 1, n + 1)
    options: list = []
    for inputs in itertools.product(*(range(j) for j in range(1, n + 1))):
        last = _last_uses(inputs, concat)
        groups = []
        for j, i in enumerate(inputs, start=1):
            r = j * (j - 1) // 2 + i
            group = [item(r, i, k) for k in candidates if _node_peak(cells, last, j, i, r, k) <= sram]
            groups.append(group)
        if all(groups):
            options = _pareto(options + _knapsack(groups, room), room)
    return options


def derive_within_budget(
    alphas: Mapping[str, Tensor],
    cfg: SpaceConfig | SearchConfig,
    *,
    max_params: int | None = None,
    max_macs: int | None = None,
    max_sram_bytes: int | None = None,
    sram_bytes_per_elem: int = 1,
    scores: Mapping[str, Tensor] | None = None,
) -> Genotype_CNN:
    """The strongest genotype whose exact cost meets every budget: the search's hard guarantee.

    :func:`~fnas.spaces.cell.genotype.derive_genotype` keeps, per node, the strongest (edge, op) pair; that
    genotype is returned unchanged when it meets the budgets. Otherwise this picks, per node, one
    pair so that the genotype's *exact* cost meets every budget and the sum over nodes of
    ``log softmax(alpha_edge)_op`` (the log-probability of the genotype when each node draws its
    pair in proportion to ``derive_genotype``'s scores) is largest. Params and MACs add up over
    nodes (summed over the cells of each type), so this is a multiple-choice knapsack, solved
    exactly by Pareto dynamic programming over the nodes of both cell types; a peak-SRAM budget is
    met exactly by enumerating each cell type's input maps (``n!``, as :func:`min_cost` does) and,
    per map, keeping only the ops whose kernel steps fit.

    Args:
        alphas: ``{"normal", "reduce"}`` architecture parameters.
        cfg: the space, or a search config whose ``max_params`` / ``max_macs`` / ``max_sram_bytes``
            are the budgets.
        max_params, max_macs, max_sram_bytes: budgets that override the config's (None: the
            config's, if any). SRAM in bytes.
        sram_bytes_per_elem: 1 for int8 inference (the search's convention), 4 for float32.
        scores: optional ``{"normal", "reduce"}`` per-(edge, op) scores to maximise (summed over
            nodes) instead of ``log softmax(alpha_edge)_op``, e.g.
            :func:`fnas.search.selection.perturbation_scores`; the unconstrained pick is then per node the
            largest score (:func:`fnas.search.selection.select_by_perturbation`).

    Returns:
        A :class:`Genotype_CNN`; the unconstrained pick (``derive_genotype(alphas, cfg)`` without
        ``scores``) itself when no budget is set or it meets them.

    Raises:
        ValueError: a budget below the space's cheapest genotype (naming the minimum, as
            :func:`check_budget`), or alphas of the wrong shape.

    References:
        Sinha, Zoltners. The Multiple-Choice Knapsack Problem. Operations Research 27(3), 1979.
    """
    from fnas.spaces.cell.genotype import derive_genotype

    space = space_of(cfg)
    given = {"params": max_params, "macs": max_macs, "sram": max_sram_bytes}
    budgets = dict(cfg.budgets) if isinstance(cfg, SearchConfig) else dict.fromkeys(METRICS)
    budgets.update({m: b for m, b in given.items() if b is not None})
    check_budget(space, budgets["params"], budgets["macs"], budgets["sram"], sram_bytes_per_elem=sram_bytes_per_elem)
    _check_alphas(alphas, space)
    if scores is None:
        genotype = derive_genotype(alphas, space)
    else:
        from fnas.search.selection import select_by_perturbation

        _check_alphas(scores, space)
        genotype = select_by_perturbation(scores, space)
    if all(b is None for b in budgets.values()) or not _misses(genotype, space, budgets, sram_bytes_per_elem):
        return genotype
    tables = _tables(space)
    metrics = [m for m in ("params", "macs") if budgets[m] is not None]
    room = tuple(int(budgets[m]) - tables.fixed[m] for m in metrics)  # what the cells may spend
    sram = None if budgets["sram"] is None else int(budgets["sram"]) // sram_bytes_per_elem
    best = [_Partial(0.0, tuple(0 for _ in metrics), ())]
    kinds = [kind for kind in ("normal", "reduce") if kind in tables.kinds]
    for kind in kinds:
        if scores is None:
            node_scores = torch.log_softmax(alphas[kind].detach().double().cpu(), dim=-1)
        else:
            node_scores = scores[kind].detach().double().cpu()
        options = _cell_options(kind, node_scores, space, tables, metrics, room, sram)
        best = _pareto(
            [
                _Partial(p.score + o.score, tuple(a + b for a, b in zip(p.cost, o.cost)), p.picks + (o.picks,))
                for p in best
                for o in options
            ],
            room,
        )
    if not best:  # unreachable after check_budget; kept as a clear error rather than an IndexError
        raise ValueError(f"No genotype of this space meets the budgets {budgets}")
    picks = dict(zip(kinds, max(best, key=lambda p: p.score).picks))
    cells = {
        kind: [(space.primitives[k], i) for i, k in picks[kind]] if kind in picks else list(getattr(genotype, kind))
        for kind in ("normal", "reduce")
    }
    return genotype._replace(normal=cells["normal"], reduce=cells["reduce"])


def _misses(genotype: Genotype_CNN, space: SpaceConfig, budgets: dict, sram_bytes_per_elem: int) -> bool:
    exact = genotype_cost(genotype, space)
    actual = {"params": exact.params, "macs": exact.macs, "sram": exact.peak_sram_bytes_int8 * sram_bytes_per_elem}
    return any(b is not None and actual[m] > b for m, b in budgets.items())


# --- the penalty -----------------------------------------------------------------------------


def _parse_mode(mode: str | Sequence[str]) -> list[str]:
    names = mode.split("+") if isinstance(mode, str) else list(mode)
    metrics = []
    for name in names:
        key = name.strip().lower() if isinstance(name, str) else None
        if key not in _MODES:
            raise ValueError(
                f"Unknown penalty mode {name!r} in {mode!r}; expected 'Memory' (params), 'Compute' (MACs), "
                "'SRAM' (peak activations), or a combination such as 'Memory+Compute' or ('Memory', 'SRAM')"
            )
        if _MODES[key] not in metrics:
            metrics.append(_MODES[key])
    if not metrics:
        raise ValueError(f"Empty penalty mode {mode!r}; expected e.g. 'Memory' or 'Memory+Compute'")
    return metrics


def _parse_budget(budget, metrics: list[str], mode) -> dict[str, float | None]:
    if budget is None:
        return dict.fromkeys(metrics)
    if isinstance(budget, Mapping):
        out = dict.fromkeys(metrics)
        for key, value in budget.items():
            metric = _parse_mode(key)
            if len(metric) != 1 or metric[0] not in metrics:
                raise ValueError(f"budget key {key!r} is not one of the penalty's modes {mode!r}")
            out[metric[0]] = value
    elif isinstance(budget, (list, tuple)):
        if len(budget) != len(metrics):
            raise ValueError(f"budget {budget!r} needs one entry per mode of {mode!r} ({len(metrics)})")
        out = dict(zip(metrics, budget))
    elif len(metrics) == 1:
        out = {metrics[0]: budget}
    else:
        raise ValueError(
            f"A single budget {budget!r} is ambiguous for mode {mode!r}; pass a dict such as "
            "{'Memory': 50_000, 'Compute': 2_000_000}"
        )
    for metric, value in out.items():
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0):
            raise ValueError(f"budget for {metric!r} must be a positive number or None, got {value!r}")
    return out


def penalty(
    alphas: Mapping[str, Tensor],
    cfg: SpaceConfig | SearchConfig,
    *,
    mode: str | Sequence[str],
    budget: float | Mapping[str, float | None] | Sequence[float | None] | None = None,
    weight: float | Tensor = 1.0,
    margin: float = 0.1,
    estimator: Estimator = "genotype",
    tau: float = 1.0,
    sram_tau: float = 0.01,
    sram_bytes_per_elem: int = 1,
    straight_through: bool | None = None,
) -> Tensor:
    """A differentiable resource penalty to add to the architecture loss.

    Per metric:

    - with a budget ``b``, a linear hinge on the *derived* genotype's cost::

          relu(cost / b - (1 - margin)) / margin

      where ``cost = expected_cost(alphas, cfg, metric=..., straight_through=True)``: its value is
      the exact cost of the genotype :func:`~fnas.spaces.cell.genotype.derive_genotype` would return now, its
      gradient the soft genotype estimator's (``tau``). The term is 0 while that genotype costs at
      most ``(1 - margin) b``, reaches 1 (about a cross-entropy's worth) at the budget and grows
      with slope ``1 / margin`` beyond;
    - without a budget: ``cost / max_cost(cfg, metric)`` with the soft expected cost: normalised by
      the space's most expensive genotype, so it lies in ``(0, 1]`` for every metric and weights
      are comparable across metrics.

    The result is ``weight * sum over metrics``. Check that budgets are reachable once, up front,
    with :func:`check_budget`; :func:`derive_within_budget` makes the final genotype meet them.

    Why this shape (tuned on the watch IMU data, 30-100 step searches, Adam on the alphas): the
    soft expected cost is a poor proxy for the derived genotype's: near-uniform alphas give the
    mean cost of the space whatever their argmax is, so a hinge on it is idle while the argmax is
    over budget (a loose budget was missed by 14%), and keeps pushing long after the argmax is the
    cheapest genotype of the space (tight and medium budgets collapsed to the minimum, wasting the
    budget). The straight-through value switches the push on exactly when the genotype that would
    be derived misses ``(1 - margin) b`` and off when it does not, so the search settles below the
    budget (65-90% of it in those runs and in ``bench/PARETO.md``). The hinge is linear because its
    value is piecewise constant: only its slope matters, and a squared hinge's slope vanishes at the
    boundary, where the validation loss then wins. Scale under Adam: per alpha, the step is about
    ``arch_lr`` in the direction of the summed gradients, whatever their size, so the slope only
    decides who sets that direction. The validation loss's gradient is ~5e-3 per alpha; at slope
    ``1 / margin = 10`` the penalty's is 0.05-0.13 (``tau = 1``), so while the derived genotype is
    over target the penalty steers every alpha, and an over-budget argmax flips within a few steps
    (slope 3 behaved like 10; at slope 1 a loose budget was missed by 14% in a 60-step search). Below target
    the validation loss alone orders the ops. The margin absorbs the validation loss drifting the
    argmax back up between pushes; :func:`derive_within_budget` covers what it cannot.

    Args:
        alphas: ``{"normal", "reduce"}`` architecture parameters.
        cfg: the space (or a search config holding it).
        mode: ``'Memory'`` (params), ``'Compute'`` (MACs), ``'SRAM'`` (peak activation bytes), or a
            combination: ``'Memory+Compute'`` or a tuple/list of modes. Case-insensitive; the metric
            names ``params``/``macs``/``sram`` work too.
        budget: None, a number (single mode), a dict ``{mode: number or None}`` or a sequence
            aligned with the modes. SRAM budgets are in bytes.
        weight: the penalty's weight (a float or a 0-d tensor, e.g. from the search state).
        margin: relative slack of the hinge, in ``(0, 1)``: the push stops at ``(1 - margin) b``.
        estimator, tau, sram_tau: see :func:`expected_cost`.
        sram_bytes_per_elem: 1 for int8 inference, 4 for float32.
        straight_through: budget terms on the derived genotype's cost (the default with the
            genotype estimator) or on the soft expected cost (False; the supernet estimator's only
            choice).

    Returns:
        A 0-d tensor.

    Raises:
        ValueError: unknown modes, budgets that do not match the modes or are not positive, a
            margin outside ``(0, 1)``, ``straight_through=True`` with the supernet estimator, or the
            errors of :func:`expected_cost`.

    References:
        Tan et al. MnasNet: Platform-Aware Neural Architecture Search for Mobile. CVPR 2019.
        Bengio, Leonard, Courville. Estimating or Propagating Gradients Through Stochastic Neurons
        for Conditional Computation. arXiv:1308.3432, 2013 (straight-through estimator).
    """
    space = space_of(cfg)
    metrics = _parse_mode(mode)
    budgets = _parse_budget(budget, metrics, mode)
    if not 0 < margin < 1:
        raise ValueError(f"margin must be in (0, 1), got {margin!r}")
    if straight_through is None:
        straight_through = estimator == "genotype"
    total = None
    for metric in metrics:
        b = budgets[metric]
        cost = expected_cost(
            alphas, space, metric=metric, estimator=estimator, tau=tau, sram_tau=sram_tau,
            straight_through=straight_through and b is not None,
        )  # fmt: skip
        scale = sram_bytes_per_elem if metric == "sram" else 1
        if b is None:
            term = cost / float(max_cost(space, metric))
        else:
            term = torch.relu(cost * scale / float(b) - (1.0 - margin)) / margin
        total = term if total is None else total + term
    return weight * total
