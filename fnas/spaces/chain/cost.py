"""Costs of chain genotypes: exact params / MACs / peak SRAM, their expectation under the alphas, extremes.

Conventions are those of :mod:`fnas.cost` (batch 1, the evaluation network, affine BN counts
``2 C`` parameters; MACs are ``FlopCounterMode`` FLOPs / 2: convolutions ``T_out C_out C_in / groups
k`` and the head's ``C num_classes``; BN, ReLU, pooling are free). Peak activation memory (int8: 1
byte per element) follows a layer-by-layer schedule: the input BN runs in place; a conv block's
step holds its input and its output; a sep block has two steps (input + depthwise output, then
depthwise output + output); identity is free (no kernel); the head holds the last activation and
the pooled vector, then the pooled vector and the logits.

``runtime="tflm"`` instead plans the graph TensorFlow Lite Micro runs (:class:`OpGraph`): the
input BN is elementwise ops (SUB, MUL; an ADD too when it has a shift, modelled as two: same peak)
with a buffer each, a strided block whose symmetric
padding is not TFLite's SAME padding gets an explicit PAD copy, every buffer is rounded up to 16
bytes, and the peak is what TFLM's greedy memory planner places (:func:`greedy_arena_bytes`).

Expected cost (differentiable): per block ``p = softmax(op)``, ``q = softmax(width)``, the expected
output width ``E[c_out] = p_id E[c_in] + (1 - p_id) sum_w q_w w``, and per candidate its exact
formula at the expected widths, weighted by ``p``. Params and MACs are bilinear in (c_in, c_out)
and the blocks' choices independent, so this is the exact expectation over genotypes drawn from
``(p, q)``; SRAM is a smooth maximum over the blocks' expected steps.
"""

from __future__ import annotations

import functools
import math
from typing import Iterable, Literal, Mapping, NamedTuple, Sequence

import torch

from fnas.spaces.base import Cost
from fnas.spaces.chain.genotype import ChainGenotype, check_alphas, validate_genotype
from fnas.spaces.chain.spec import IDENTITY, ChainSpec, parse_op

__all__ = [
    "METRICS",
    "RUNTIMES",
    "BlockOption",
    "Buffer",
    "ChainCost",
    "OpGraph",
    "block_cost",
    "block_options",
    "check_runtime",
    "completion",
    "expected_cost",
    "fixed_cost",
    "genotype_cost",
    "greedy_arena_bytes",
    "aligned",
    "TFLM_ALIGN",
    "head_cost",
    "input_states",
    "max_cost",
    "min_cost",
    "same_padding_matches",
    "tflm_graph",
]

Tensor = torch.Tensor
Metric = Literal["params", "macs", "sram"]
METRICS = ("params", "macs", "sram")
RUNTIMES = ("fused", "tflm")
TFLM_ALIGN = 16  # TFLM's planner rounds every non-persistent buffer up to 16 bytes


# --- the runtime's tensor graph and its arena (TFLite Micro) ----------------------------------------


class Buffer(NamedTuple):
    """One planned activation buffer: ``elems`` elements live from op ``first`` to op ``last`` (inclusive)."""

    name: str
    elems: int
    first: int
    last: int


def aligned(nbytes: int, align: int = TFLM_ALIGN) -> int:
    """``nbytes`` rounded up to a multiple of ``align`` (TFLM's planner's buffer alignment)."""
    return -(-nbytes // align) * align


def greedy_arena_bytes(buffers: Sequence[tuple[int, int, int]], *, align: int = TFLM_ALIGN) -> int:
    """The arena TFLite Micro's ``GreedyMemoryPlanner`` lays ``(bytes, first, last)`` buffers out in.

    Sizes are rounded up to ``align``; buffers are placed largest first, each at the lowest offset
    where it overlaps no placed buffer alive at the same time. Ties go to the buffer given last
    (TFLM fills its sort array from the end, then bubble-sorts it stably; buffers are given in
    tensor index order). Greedy, so it can exceed the largest sum of
    buffers alive together (fragmentation); that sum is a lower bound.
    """
    items = [(aligned(b, align), f, l) for b, f, l in buffers if b > 0][::-1]
    items.sort(key=lambda t: -t[0])  # stable
    placed: list[tuple[int, int, int, int]] = []  # (offset, size, first, last), kept sorted by offset
    top = 0
    for size, first, last in items:
        offset = 0
        for o, s, f, l in placed:
            if f > last or first > l:
                continue  # not alive together
            if o - offset >= size:
                break
            offset = max(offset, o + s)
        placed.append((offset, size, first, last))
        placed.sort(key=lambda t: t[0])
        top = max(top, offset + size)
    return top


class OpGraph:
    """The ops a runtime without in-place kernels runs, in order, and the tensors they read and write.

    ``add(op, inputs, elems)`` appends an op writing a fresh tensor of ``elems`` elements and
    returns its id; tensor 0 is the model input, the last op's output the model output. A tensor
    lives from the op that writes it to the last op that reads it (TFLM's lifetime rule). An op
    added with ``relu=True`` is a ReLU, which the TFLite converter folds into the conv that feeds
    it when that conv's output has no other reader (``conv=True`` marks such producers).
    """

    def __init__(self, input_elems: int) -> None:
        self.ops: list[tuple[str, tuple[int, ...], int, str]] = []  # (name, inputs, output, kind)
        self.elems = [int(input_elems)]
        self.names = ["input"]

    def add(self, op: str, inputs: Iterable[int], elems: int, *, conv: bool = False, relu: bool = False) -> int:
        """Append ``op`` reading ``inputs`` and writing a new tensor of ``elems`` elements; its id."""
        self.elems.append(int(elems))
        self.names.append(op)
        self.ops.append((op, tuple(inputs), len(self.elems) - 1, "conv" if conv else "relu" if relu else ""))
        return len(self.elems) - 1

    def _folded(self) -> list[tuple[str, tuple[int, ...], int]]:
        """The ops after folding each ReLU into the conv that is its input's only reader."""
        readers: dict[int, int] = {}
        producer = {out: kind for _, _, out, kind in self.ops}
        for _, inputs, _, _ in self.ops:
            for t in inputs:
                readers[t] = readers.get(t, 0) + 1
        alias: dict[int, int] = {}
        ops = []
        for name, inputs, out, kind in self.ops:
            inputs = tuple(alias.get(t, t) for t in inputs)
            if kind == "relu" and len(inputs) == 1 and producer.get(inputs[0]) == "conv" and readers[inputs[0]] == 1:
                alias[out] = inputs[0]
                continue
            ops.append((name, inputs, out))
        return ops

    def buffers(self) -> list[Buffer]:
        """Every tensor as a :class:`Buffer` (the input from op 0, the output to the last op)."""
        ops = self._folded()
        first, last = {0: 0}, {0: 0}
        for i, (_, inputs, out) in enumerate(ops):
            first[out] = last[out] = i
            for t in inputs:
                last[t] = max(last.get(t, i), i)
        last[ops[-1][2]] = len(ops) - 1
        return [Buffer(self.names[t], self.elems[t], first[t], last[t]) for t in sorted(first)]

    def schedule(self, bytes_per_elem: int = 1) -> list[tuple[str, int]]:
        """Per op ``(name, aligned bytes of every tensor alive at it)``."""
        bufs = self.buffers()
        return [
            (op, sum(aligned(b.elems * bytes_per_elem) for b in bufs if b.first <= i <= b.last))
            for i, (op, _, _) in enumerate(self._folded())
        ]

    def arena_bytes(self, bytes_per_elem: int = 1) -> int:
        """The arena TFLM's greedy planner needs for these tensors (:func:`greedy_arena_bytes`)."""
        return greedy_arena_bytes([(b.elems * bytes_per_elem, b.first, b.last) for b in self.buffers()])

    def cost(self, cls: type[Cost], parts: dict[str, tuple[int, int]]) -> Cost:
        """A :class:`Cost` of ``parts`` whose schedule is :meth:`schedule` and whose peaks are planned arenas."""
        schedule = self.schedule()
        peak_at = max(schedule, key=lambda s: s[1])[0]
        return cls(
            params=sum(p for p, _ in parts.values()),
            macs=sum(m for _, m in parts.values()),
            peak_sram_bytes_int8=self.arena_bytes(1),
            peak_sram_bytes_f32=self.arena_bytes(4),
            peak_at=peak_at,
            parts=parts,
            schedule=tuple(schedule),
        )


def same_padding_matches(t: int, k: int, dilation: int, stride: int) -> bool:
    """Whether PyTorch's symmetric padding ``dilation (k // 2)`` is TFLite's SAME padding on length ``t``.

    When not (a strided 'same' conv on an even length), the converter emits an explicit PAD op.
    """
    field = (k - 1) * dilation + 1
    total = max((math.ceil(t / stride) - 1) * stride + field - t, 0)
    return total == 2 * dilation * (k // 2)


class ChainCost(Cost):
    """Exact cost of a chain genotype's network at batch 1: a :class:`~fnas.spaces.base.Cost` whose
    ``parts`` are ``input_bn``, ``blocks.{b}.{op}`` (every block) and ``head``."""

    __slots__ = ()

    def totals(self) -> dict[str, tuple[int, int]]:
        """``{"input_bn", "blocks", "head"}``: (params, macs) summed per part."""
        out = {"input_bn": (0, 0), "blocks": (0, 0), "head": (0, 0)}
        for key, (p, m) in self.parts.items():
            part = key.split(".")[0]
            out[part] = (out[part][0] + p, out[part][1] + m)
        return out


class BlockOption(NamedTuple):
    """One choice of a block from a given input width, with its exact cost.

    ``steps`` are ``(suffix, live_elems)`` kernel steps (none for identity); ``peak`` their maximum (0).
    """

    op: str
    width: int  # output width (identity: the input width)
    params: int
    macs: int
    steps: tuple[tuple[str, int], ...]

    @property
    def peak(self) -> int:
        return max((v for _, v in self.steps), default=0)

    def value(self, metric: str) -> int:
        """The option's params, MACs or peak step."""
        return self.peak if metric == "sram" else getattr(self, metric)


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}; expected one of {list(METRICS)}")


def _t_in(cfg: ChainSpec, block: int) -> int:
    return cfg.input_shape[0] if block == 0 else cfg.lengths[block - 1]


def block_cost(cfg: ChainSpec, block: int, op: str, c_in: int, c_out: int) -> BlockOption:
    """Exact cost of ``op`` at block ``block`` from ``c_in`` to ``c_out`` channels (identity: ``c_out = c_in``)."""
    cand = parse_op(op)
    if cand is None:
        return BlockOption(IDENTITY, c_in, 0, 0, ())
    k, t_in, t_out = cand.kernel, _t_in(cfg, block), cfg.lengths[block]
    if cand.op_type == "conv":
        steps = (("", t_in * c_in + t_out * c_out),)
        return BlockOption(op, c_out, k * c_in * c_out + 2 * c_out, t_out * c_out * c_in * k, steps)
    steps = (("[dw]", t_in * c_in + t_out * c_in), ("[pw]", t_out * c_in + t_out * c_out))
    return BlockOption(op, c_out, k * c_in + c_in * c_out + 2 * c_out, t_out * c_in * (k + c_out), steps)


def head_cost(cfg: ChainSpec, c: int) -> BlockOption:
    """The head (global average pool, linear) on ``c`` channels, as a :class:`BlockOption`."""
    nc, t = cfg.num_classes, cfg.lengths[-1]
    return BlockOption("head", c, c * nc + nc, c * nc, ((".pool", t * c + c), (".linear", c + nc)))


def tflm_graph(genotype: ChainGenotype, cfg: ChainSpec) -> OpGraph:
    """The ops TFLite Micro runs for the int8 export of the genotype's network (BN and ReLU folded)."""
    t = cfg.input_shape[0]
    g = OpGraph(t * cfg.in_channels)
    x = 0
    if cfg.with_input_batchnorm:  # (x - mean) * scale: two elementwise ops, a buffer each
        x = g.add("input_bn.sub", [x], t * cfg.in_channels)
        x = g.add("input_bn.mul", [x], t * cfg.in_channels)
    c_in = cfg.in_channels
    for b, ((op, width), stride) in enumerate(zip(genotype.blocks, cfg.strides)):
        cand = parse_op(op)
        if cand is None:
            continue  # identity: no op
        t_out = cfg.lengths[b]
        key = f"blocks.{b}.{op}"
        if not same_padding_matches(t, cand.kernel, cand.dilation, stride):
            t += 2 * cand.dilation * (cand.kernel // 2)
            x = g.add(f"{key}[pad]", [x], t * c_in)
        if cand.op_type == "conv":
            x = g.add(key, [x], t_out * width, conv=True)
        else:
            x = g.add(f"{key}[dw]", [x], t_out * c_in, conv=True)
            x = g.add(f"{key}[pw]", [x], t_out * width, conv=True)
        t, c_in = t_out, width
    x = g.add("head.pool", [x], c_in)
    g.add("head.linear", [x], cfg.num_classes)
    return g


def genotype_cost(genotype: ChainGenotype, cfg: ChainSpec, *, runtime: str = "fused") -> ChainCost:
    """Exact params, MACs and peak activation memory of the :class:`ChainNetwork` of ``genotype``.

    Args:
        genotype: a member of ``cfg``.
        cfg: the space.
        runtime: ``"fused"`` (the schedule the search constrains: no copies beyond each kernel's
            input and output) or ``"tflm"`` (TensorFlow Lite Micro's planned activation arena of
            the int8 export: ``peak_sram_bytes_int8`` is then the planner's arena, the schedule
            per TFLite op in aligned int8 bytes).

    Raises:
        ValueError: ``genotype`` is not a member of ``cfg``, or an unknown runtime.
    """
    validate_genotype(genotype, cfg)
    check_runtime(runtime)
    parts: dict[str, tuple[int, int]] = {}
    schedule: list[tuple[str, int]] = []
    if cfg.with_input_batchnorm:
        parts["input_bn"] = (2 * cfg.in_channels, 0)
    c_in = cfg.in_channels
    for b, (op, width) in enumerate(genotype.blocks):
        o = block_cost(cfg, b, op, c_in, width)
        key = f"blocks.{b}.{op}"
        parts[key] = (o.params, o.macs)
        schedule += [(key + suffix, live) for suffix, live in o.steps]
        c_in = width
    head = head_cost(cfg, c_in)
    parts["head"] = (head.params, head.macs)
    schedule += [("head" + suffix, live) for suffix, live in head.steps]
    if runtime == "tflm":
        return tflm_graph(genotype, cfg).cost(ChainCost, parts)
    return ChainCost.from_parts(parts, schedule)


def check_runtime(runtime: str) -> None:
    """Raise ``ValueError`` unless ``runtime`` is one of :data:`RUNTIMES`."""
    if runtime not in RUNTIMES:
        raise ValueError(f"Unknown runtime {runtime!r}; expected one of {list(RUNTIMES)}")


# --- every choice, for extremes and the knapsack --------------------------------------------------


@functools.lru_cache(maxsize=256)
def input_states(cfg: ChainSpec) -> tuple[tuple[int, ...], ...]:
    """``states[b]``: the input widths block ``b`` can see; ``states[L]``: the head's."""
    states = [(cfg.in_channels,)]
    for b in range(cfg.num_blocks):
        out = set(cfg.width_choices[b]) | (set(states[-1]) if cfg.identity_allowed[b] else set())
        states.append(tuple(sorted(out)))
    return tuple(states)


@functools.lru_cache(maxsize=4096)
def block_options(cfg: ChainSpec, block: int, c_in: int) -> tuple[BlockOption, ...]:
    """Every ``(op, width)`` of block ``block`` from input width ``c_in``, in alphas order (op-major)."""
    out = []
    for op in cfg.candidates[block]:
        widths = (c_in,) if op == IDENTITY else cfg.width_choices[block]
        out += [block_cost(cfg, block, op, c_in, w) for w in widths]
    return tuple(out)


def _combine(metric: str, a: int, b: int) -> int:
    return max(a, b) if metric == "sram" else a + b


def fixed_cost(cfg: ChainSpec, metric: str) -> int:
    """What every genotype pays before its blocks (the input BN's parameters)."""
    return 2 * cfg.in_channels if metric == "params" and cfg.with_input_batchnorm else 0


@functools.lru_cache(maxsize=1024)
def completion(cfg: ChainSpec, metric: str, which: str) -> tuple[dict[int, int], ...]:
    """``rest[b][c]``: the least (``which="min"``) or most cost of blocks ``b..L-1`` and the head from
    input width ``c`` (params and MACs add up, the SRAM peak is a maximum): a dynamic program over
    blocks whose state is the input width."""
    best = min if which == "min" else max
    states = input_states(cfg)
    rest: list[dict[int, int]] = [{} for _ in states]
    rest[-1] = {c: head_cost(cfg, c).value(metric) for c in states[-1]}
    for b in reversed(range(cfg.num_blocks)):
        rest[b] = {
            c: best(_combine(metric, o.value(metric), rest[b + 1][o.width]) for o in block_options(cfg, b, c))
            for c in states[b]
        }
    return tuple(rest)


def min_cost(cfg: ChainSpec, metric: Metric) -> int:
    """The exact cost of the space's cheapest genotype (SRAM: the least peak, in int8 bytes).

    Raises:
        ValueError: unknown metric.
    """
    _check_metric(metric)
    return _combine(metric, fixed_cost(cfg, metric), completion(cfg, metric, "min")[0][cfg.in_channels])


def max_cost(cfg: ChainSpec, metric: Metric) -> int:
    """The exact cost of the space's most expensive genotype (see :func:`min_cost`)."""
    _check_metric(metric)
    return _combine(metric, fixed_cost(cfg, metric), completion(cfg, metric, "max")[0][cfg.in_channels])


# --- expected (differentiable) cost --------------------------------------------------------------


def _straight_through(p: Tensor, *, last: bool = False) -> Tensor:
    """Value: one-hot at the argmax (first on ties, as derive; ``last``: at the last choice, as the
    "fill" width policy derives without a budget); gradient: that of ``p``."""
    pick = torch.tensor(p.shape[-1] - 1) if last else torch.argmax(p.detach())
    hard = torch.nn.functional.one_hot(pick, p.shape[-1]).to(p)
    return hard + p - p.detach()


def _smooth_max(v: Tensor, tau: float) -> Tensor:
    """``ref tau logsumexp(v / (ref tau))``, ``ref = max(v)`` detached: >= max(v), by at most ``ref tau log n``."""
    ref = v.detach().max()
    return ref * tau * torch.logsumexp(v / (ref * tau), dim=0)


def expected_cost(
    alphas: Mapping[str, Tensor],
    cfg: ChainSpec,
    *,
    metric: Metric,
    sram_tau: float = 0.01,
    straight_through: bool = False,
) -> Tensor:
    """The expected cost of the genotype the alphas describe; differentiable in ``alphas``.

    Args:
        alphas: ``{"b{b}_op", "b{b}_width"}`` as :func:`~fnas.spaces.chain.supernet.init_supernet` makes.
        cfg: the space.
        metric: ``"params"``, ``"macs"`` or ``"sram"`` (peak activation elements = int8 bytes).
        sram_tau: relative temperature of the smooth maximum over the SRAM steps.
        straight_through: the value is that of the derived genotype (one-hot picks: its exact params
            and MACs, its SRAM peak up to the smooth maximum's slack), the gradient the soft picks'.

    Returns:
        A 0-d tensor of the alphas' dtype, fixed parts (input BN, head) included.

    Raises:
        ValueError: unknown metric, a non-positive ``sram_tau``, or alphas of the wrong shape.

    References:
        Wan et al. FBNetV2. CVPR 2020 (expected width); Risso et al. PIT. IEEE TC 2022.
    """
    check_alphas(alphas, cfg)
    _check_metric(metric)
    if not sram_tau > 0:
        raise ValueError(f"sram_tau must be positive, got {sram_tau!r}")
    ref = alphas["b0_op"]
    opts = {"dtype": ref.dtype, "device": ref.device}
    cands = cfg.op_candidates
    k = torch.tensor([c.kernel for c in cands], **opts)
    conv = torch.tensor([c.op_type == "conv" for c in cands], device=ref.device)
    c_in = torch.tensor(float(cfg.in_channels), **opts)
    total = torch.tensor(float(fixed_cost(cfg, metric)), **opts)
    steps = []
    for b in range(cfg.num_blocks):
        p, q = torch.softmax(alphas[f"b{b}_op"], -1), torch.softmax(alphas[f"b{b}_width"], -1)
        if straight_through:
            p, q = _straight_through(p), _straight_through(q, last=cfg.width_policy == "fill")
        w = q @ torch.tensor([float(v) for v in cfg.width_choices[b]], **opts)  # E[c_out | not identity]
        t_in, t_out = _t_in(cfg, b), cfg.lengths[b]
        if metric == "params":
            value = torch.where(conv, k * c_in * w + 2 * w, k * c_in + c_in * w + 2 * w)
        elif metric == "macs":
            value = torch.where(conv, t_out * w * c_in * k, t_out * c_in * (k + w))
        else:
            sep = torch.maximum(t_in * c_in + t_out * c_in, t_out * c_in + t_out * w)
            value = torch.where(conv, t_in * c_in + t_out * w, sep)
        block = p[: len(cands)] @ value
        p_id = p[-1] if cfg.identity_allowed[b] else torch.zeros((), **opts)
        if metric == "sram":
            steps.append(block)
        else:
            total = total + block
        c_in = p_id * c_in + (1 - p_id) * w
    nc, t = cfg.num_classes, cfg.lengths[-1]
    if metric == "params":
        return total + c_in * nc + nc
    if metric == "macs":
        return total + c_in * nc
    steps += [t * c_in + c_in, c_in + nc]
    return _smooth_max(torch.stack(steps), sram_tau)
