"""Shared workload builders: the pytest-benchmark files and ``bench/report.py`` time the same thing.

Every builder returns a :class:`Workload`: a zero-argument ``run`` callable (one mixed-op
forward+backward, or one search step; state, batches and modules are built once, outside it) and
the name of its *plain twin*, the unfused fnas implementation of the same computation whose
FLOPs count as the useful work (so padded or fused work is never counted as useful).

Benchmarks run on one thread (:func:`use_one_thread`): this machine's 2 cores throttle 2-thread
work at random.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from fnas.core import hypergrad
from fnas.spaces import primitives as P
from fnas.core import tree
from fnas.search.config import SearchConfig
from fnas.spaces.cell.config import SpaceConfig
from fnas.spaces.cell.mixed_op import apply_edges_fused, apply_mixed_op, init_mixed_op
from fnas.search import (
    compile_search_step,
    current_lr,
    init_search,
    search_step,
    supernet_loss,
    weight_optimizer,
    weight_step,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import seed_baseline as sb  # noqa: E402

Tensor = torch.Tensor

# --- spaces and batches -------------------------------------------------------------------------

DEFAULT_1D = SpaceConfig()  # batch 64, 6 x 128 x 1 input, C=16, 8 cells, 4 nodes, the seed's 7 primitives
SMALL_1D = SpaceConfig(C=8, layers=5)  # batch 32
TINY_1D = SpaceConfig(C=4, layers=3, nodes=2, multiplier=2)  # batch 32; inductor compiles its step in minutes
DARTS_2D = SpaceConfig(
    C=8, layers=5, in_channels=3, input_shape=(32, 32), num_classes=10, primitives=P.DARTS_2D
)  # batch 32, CIFAR-shaped
SPACES: dict[str, SpaceConfig] = {
    "default_1d": DEFAULT_1D, "small_1d": SMALL_1D, "tiny_1d": TINY_1D, "darts_2d": DARTS_2D,
}  # fmt: skip
BATCH: dict[str, int] = {"default_1d": 64, "small_1d": 32, "tiny_1d": 32, "darts_2d": 32}

SEED = 0


def use_one_thread() -> None:
    """Every benchmark runs on one intra-op thread (and one inter-op thread where still settable)."""
    torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):  # only settable before the first parallel work
        torch.set_num_interop_threads(1)


def make_gen(seed: int = SEED) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_batch(space: SpaceConfig, n: int, *, seed: int, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """A random ``(x, y)`` batch, ``x`` NCHW ``(n, in_channels, *input_shape)``, from a fixed generator."""
    gen = make_gen(seed)
    x = torch.randn(n, space.in_channels, *space.input_shape, generator=gen, dtype=dtype)
    y = torch.randint(0, space.num_classes, (n,), generator=gen)
    return x, y


def make_batches(space: SpaceConfig, n: int, k: int, *, seed: int) -> list[tuple[Tensor, Tensor]]:
    """``k`` different batches (the K training batches of a K-step unroll)."""
    return [make_batch(space, n, seed=seed + 1000 * i) for i in range(k)]


def baseline_config(space: SpaceConfig) -> sb.BaselineConfig:
    """The seed-style baseline's config of the same network.

    Raises:
        ValueError: a 2D space (the baseline is kx1 only).
    """
    if not space.is_1d:
        raise ValueError("The seed baseline is kx1 only; pass a 1D space")
    return sb.BaselineConfig(
        C=space.C,
        num_classes=space.num_classes,
        layers=space.layers,
        in_channels=space.in_channels,
        input_len=space.input_shape[0],
        with_input_batchnorm=space.with_input_batchnorm,
        nodes=space.nodes,
        multiplier=space.multiplier,
        stem_multiplier=space.stem_multiplier,
        primitives=space.primitives,
    )


def search_config(space: SpaceConfig, hypergrad: str = "first_order", unroll_steps: int = 1, **changes) -> SearchConfig:
    """DARTS' settings, the given space and architecture-gradient method.

    ``arch_lr`` is DARTS' 3e-4, not ``SearchConfig``'s default (the CLI's 3e-3): the benchmark
    notes were measured with it, and the float32 yardsticks are sized for it.
    """
    return SearchConfig(space=space, hypergrad=hypergrad, unroll_steps=unroll_steps, **{"arch_lr": 3e-4, **changes})


# --- workloads ----------------------------------------------------------------------------------


@dataclass
class Workload:
    """One timed computation.

    Attributes:
        name: registry key (see :data:`MIXED_OPS`, :data:`STEPS`).
        run: zero-argument callable doing the work once.
        twin: name of the plain (unfused) fnas workload whose FLOPs are this one's useful work.
        label: human-readable description for tables.
        context: anything the builder wants to keep alive (state holders, modules).
    """

    name: str
    run: Callable[[], Any]
    twin: str
    label: str
    context: Any = None


# Mixed op: forward + backward of the 4 edges leaving state 0 of a normal cell of DEFAULT_1D.
MIXED_SHAPE = (64, 16, 128, 1)  # (N, C, T, 1)
MIXED_EDGES = 4  # state 0 -> nodes 1..4
MIXED_OPS = ("mixed_op_naive_nchw", "mixed_op_fnas_plain", "mixed_op_fnas_fused", "mixed_op_fnas_fused_compiled")

MIXED_LABELS = {
    "mixed_op_naive_nchw": "mixed op: seed NCHW `MixedOp` modules, loop over 4 edges",
    "mixed_op_fnas_plain": "mixed op: fnas `apply_mixed_op` per edge (4 edges)",
    "mixed_op_fnas_fused": "mixed op: fnas `apply_edges_fused` (4 edges at once)",
    "mixed_op_fnas_fused_compiled": "mixed op: fnas `apply_edges_fused`, `torch.compile` (inductor)",
}


def _mixed_inputs(seed: int = SEED):
    """The shared input (N, C, T, 1), mixing logits (E, K) and output cotangents (E, N, C, T, 1)."""
    gen = make_gen(seed)
    x = torch.randn(MIXED_SHAPE, generator=gen)
    alpha = 1e-3 * torch.randn(MIXED_EDGES, len(DEFAULT_1D.primitives), generator=gen)
    cots = torch.randn(MIXED_EDGES, *MIXED_SHAPE, generator=gen)
    return x, alpha, cots


def _fnas_edges(seed: int = SEED):
    space = DEFAULT_1D
    gen = make_gen(seed + 1)
    params, stats = [], []
    for _ in range(MIXED_EDGES):
        p, s = init_mixed_op(gen, MIXED_SHAPE[1], 1, space.primitives, pool_bn=space.pool_bn, dtype=torch.float32)
        params.append(tree.map(lambda t: t.detach().requires_grad_(), p))
        stats.append(s)
    return params, stats


def _grad_leaves(*trees) -> list[Tensor]:
    return [t for tr in trees for t in tree.leaves(tr) if t.requires_grad]


def _mixed_op_loss(params, stats, x, alpha, cots, *, fused: bool) -> Tensor:
    """``sum_e <cot_e, mixed_op_e(x)>``: a scalar whose backward is the edges' vector-Jacobian product."""
    space = DEFAULT_1D
    w = torch.softmax(alpha, dim=-1)  # (E, K)
    kw = dict(primitives=space.primitives, stride=1, train=True, pool_bn=space.pool_bn)
    if fused:
        outs, _ = apply_edges_fused(params, stats, x, w, **kw)
    else:
        outs = [apply_mixed_op(params[e], stats[e], x, w[e], **kw)[0] for e in range(len(params))]
    return sum((o * c).sum() for o, c in zip(outs, cots.unbind(0)))


def build_mixed_op(name: str, *, seed: int = SEED, compile_backend: str = "inductor") -> Workload:
    """A mixed-op workload: one forward + backward (to the input, the weights and the alphas).

    Raises:
        ValueError: unknown name.
    """
    x, alpha, cots = _mixed_inputs(seed)
    alpha = alpha.requires_grad_()
    if name == "mixed_op_naive_nchw":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            ops = [sb.MixedOp(MIXED_SHAPE[1], 1, DEFAULT_1D.primitives) for _ in range(MIXED_EDGES)]
        xn = x.contiguous().requires_grad_()
        leaves = [xn, alpha, *[p for op in ops for p in op.parameters()]]

        def run():
            w = torch.softmax(alpha, dim=-1)
            loss = sum((op(xn, w[e]) * cots[e]).sum() for e, op in enumerate(ops))
            return torch.autograd.grad(loss, leaves)

        return Workload(name, run, "mixed_op_fnas_plain", MIXED_LABELS[name], ops)

    if name not in MIXED_OPS:
        raise ValueError(f"Unknown mixed-op workload {name!r}; expected one of {list(MIXED_OPS)}")
    params, stats = _fnas_edges(seed)
    xc = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    leaves = [xc, alpha, *_grad_leaves(params)]
    fused = name != "mixed_op_fnas_plain"
    loss_fn = lambda p, s, xx, a, c: _mixed_op_loss(p, s, xx, a, c, fused=fused)  # noqa: E731
    if name == "mixed_op_fnas_fused_compiled":
        loss_fn = torch.compile(loss_fn, backend=compile_backend)

    def run():
        loss = loss_fn(params, stats, xc, alpha, cots)
        return torch.autograd.grad(loss, leaves)

    return Workload(name, run, "mixed_op_fnas_plain", MIXED_LABELS[name], (params, stats))


# Search steps. Names: step_<impl>_<method>[_plain]; fnas steps use the space's fused flag
# (True by default) unless the name ends in _plain.
STEPS = (
    "step_baseline_fo",
    "step_baseline_fd",
    "step_fnas_fo",
    "step_fnas_fo_plain",
    "step_fnas_fd",
    "step_fnas_exact_k1",
    "step_fnas_exact_k2",
    "step_fnas_exact_k3",
    "step_fnas_fo_compiled",
    "step_fnas_exact_k1_compiled",
)
_METHOD = {"fo": "first_order", "fd": "finite_difference", "exact": "exact"}
STEP_LABELS = {
    "step_baseline_fo": "step: seed baseline, first order",
    "step_baseline_fd": "step: seed baseline, unrolled (finite difference)",
    "step_fnas_fo": "step: fnas `search_step`, first_order",
    "step_fnas_fo_plain": "step: fnas `search_step`, first_order, `fused=False`",
    "step_fnas_fd": "step: fnas `search_step`, finite_difference",
    "step_fnas_exact_k1": "step: fnas `search_step`, exact, K=1",
    "step_fnas_exact_k2": "step: fnas `search_step`, exact, K=2",
    "step_fnas_exact_k3": "step: fnas `search_step`, exact, K=3",
    "step_fnas_fo_compiled": "step: fnas `search_step`, first_order, `torch.compile` (inductor)",
    "step_fnas_exact_k1_compiled": "step: fnas `search_step`, exact, K=1, `torch.compile` (inductor)",
}


def parse_step(name: str) -> tuple[str, str, int, bool]:
    """``step_fnas_exact_k2_plain`` -> ``("fnas", "exact", 2, plain=True)``.

    A ``_compiled`` suffix (fnas only; see :func:`build_step`) is not part of the result.

    Raises:
        ValueError: a name that is not a step workload.
    """
    parts = name.split("_")
    if parts[-1] == "compiled":
        if parts[1] != "fnas":
            raise ValueError(f"Only fnas steps have a compiled variant, got {name!r}")
        parts = parts[:-1]
    plain = parts[-1] == "plain"
    if plain:
        parts = parts[:-1]
    k = 1
    if parts[-1].startswith("k") and parts[-1][1:].isdigit():
        k = int(parts[-1][1:])
        parts = parts[:-1]
    if len(parts) != 3 or parts[0] != "step" or parts[1] not in ("fnas", "baseline") or parts[2] not in _METHOD:
        raise ValueError(f"Unknown step workload {name!r}; expected e.g. one of {list(STEPS)}")
    if parts[1] == "baseline" and (k != 1 or plain or parts[2] == "exact"):
        raise ValueError(f"The baseline has first order (fo) and finite difference (fd) steps only, got {name!r}")
    return parts[1], _METHOD[parts[2]], k, plain


def step_twin(name: str) -> str:
    """The plain fnas step computing the same thing (baseline fd -> fnas fd plain, ...)."""
    impl, method, k, _ = parse_step(name)
    short = {v: k_ for k_, v in _METHOD.items()}[method]
    return f"step_fnas_{short}" + (f"_k{k}" if method == "exact" else "") + "_plain"


def build_step(
    name: str,
    *,
    space: str = "default_1d",
    seed: int = SEED,
    batch: int | None = None,
    compile_backend: str = "inductor",
    reorder: int | None = None,
) -> Workload:
    """A search-step workload on ``SPACES[space]``: state and batches built here, ``run`` steps once.

    The fnas state is carried from call to call (as the baseline's modules are), so repeated calls
    are consecutive steps. For ``unroll_steps = K > 1`` the train batch is a list of K batches.
    Names ending in ``_compiled`` run ``torch.compile`` of the whole step, as ``run_search(...,
    compile=True)`` does (the first call compiles). ``reorder``: permute the rows of every batch with
    this seed. Mathematically the same step (batch means and BatchNorm statistics do not depend on
    the order), but other float32 round-off: a measured yardstick for "equal within float32".

    Raises:
        ValueError: unknown name or space, or a baseline step on a 2D space.
    """
    if space not in SPACES:
        raise ValueError(f"Unknown space {space!r}; expected one of {sorted(SPACES)}")
    impl, method, k, plain = parse_step(name)
    sp = SPACES[space]
    n = BATCH[space] if batch is None else batch
    order = _row_order(n, reorder)
    rows = (lambda b: b) if order is None else (lambda b: _cast_batches(b, lambda t: t[order]))  # noqa: E731
    valid = rows(make_batch(sp, n, seed=seed + 1))
    label = STEP_LABELS.get(name, name) + ("" if space == "default_1d" else f" [{space}]")
    if impl == "baseline":
        bcfg = baseline_config(sp)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            search = sb.BaselineSearch(bcfg)
        train = rows(make_batch(sp, n, seed=seed + 2))
        unrolled = method == "finite_difference"

        def run():
            return search.step(train, valid, unrolled=unrolled)

        return Workload(name, run, step_twin(name), label, search)

    if plain:
        sp = dataclasses.replace(sp, fused=False)
    cfg = search_config(sp, method, k)
    train = rows(make_batches(sp, n, k, seed=seed + 2) if k > 1 else make_batch(sp, n, seed=seed + 2))
    holder = [init_search(cfg, make_gen(seed))]
    if name.endswith("_compiled"):
        step = compile_search_step(cfg, backend=compile_backend)
    else:
        step = functools.partial(search_step, cfg=cfg)

    def run():
        holder[0], metrics = step(holder[0], train, valid)
        return metrics

    return Workload(name, run, step_twin(name), label, holder)


def _row_order(n: int, seed: int | None) -> Tensor | None:
    """The row permutation ``build_step(reorder=seed)`` applies to every batch (``None``: none)."""
    return None if seed is None else torch.randperm(n, generator=make_gen(seed))


def build(name: str, **kw) -> Workload:
    """Any workload by name (mixed op or step)."""
    if name.startswith("mixed_op_"):
        return build_mixed_op(name, **{k: v for k, v in kw.items() if k in ("seed", "compile_backend")})
    return build_step(name, **kw)


# --- measuring helpers ----------------------------------------------------------------------------


def time_once(fn: Callable[[], Any]) -> float:
    """Seconds of one call."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (``torch.utils.flop_counter``: convolutions and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_gflops(n: int = 1024, repeats: int = 20) -> float:
    """GFLOP/s of an ``n x n`` fp32 matmul on the current thread setting (best of ``repeats``)."""
    gen = make_gen(123)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)
    best = min(time_once(lambda: torch.mm(a, b, out=out)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


# --- hypergradients alone (no optimiser updates) -------------------------------------------------

HYPERGRADS = ("first_order", "finite_difference", "exact")


@dataclass
class HypergradProblem:
    """Everything ``fnas.hypergrad`` methods take, as ``arch_step`` would pass it."""

    cfg: SearchConfig
    state: Any  # SearchState
    train: Any  # one batch, or a list of K
    valid: tuple[Tensor, Tensor]

    def loss_fn(self, w, a, batch):
        return supernet_loss(w, a, self.state.stats, batch, cfg=self.cfg)

    def hypergrad(self, method: str, unroll_steps: int = 1):
        """``(g_alpha, (val_loss, aux))`` of ``method`` on this problem."""
        cfg = self.cfg
        return hypergrad.get(method)(
            self.loss_fn,
            self.state.weights,
            self.state.alphas,
            self.state.w_opt,
            self.train,
            self.valid,
            xi=current_lr(self.state.step, cfg),
            optimizer=weight_optimizer(cfg),
            unroll_steps=unroll_steps,
        )

    def to(self, dtype: torch.dtype, *, fused: bool | None = None) -> "HypergradProblem":
        """The same problem with every floating tensor (state and batches) cast to ``dtype``, and
        optionally the other cell implementation (``fused=False``: the plain reference)."""
        cast = lambda t: t.to(dtype) if t.is_floating_point() else t  # noqa: E731
        cfg = self.cfg
        if fused is not None:
            cfg = cfg.replace(space=dataclasses.replace(cfg.space, fused=fused))
        state = tree.map(cast, self.state)
        return HypergradProblem(cfg, state, _cast_batches(self.train, cast), _cast_batches(self.valid, cast))


def _cast_batches(b, cast):
    if isinstance(b, list):
        return [_cast_batches(x, cast) for x in b]
    return tuple(cast(t) for t in b)


def hypergrad_problem(
    space: str = "default_1d",
    *,
    batch: int | None = None,
    unroll_steps: int = 1,
    warmup_steps: int = 3,
    seed: int = SEED,
    primitives: tuple[str, ...] | None = None,
) -> HypergradProblem:
    """A search state after ``warmup_steps`` real weight steps (so the momentum buffers are
    nonzero), a train batch (or K) and a valid batch. ``primitives`` replaces the space's set."""
    sp = SPACES[space] if primitives is None else dataclasses.replace(SPACES[space], primitives=tuple(primitives))
    n = BATCH[space] if batch is None else batch
    cfg = search_config(sp, "exact" if unroll_steps > 1 else "first_order", unroll_steps)
    state = init_search(cfg, make_gen(seed))
    for i in range(warmup_steps):
        state, _ = weight_step(state, make_batch(sp, n, seed=seed + 100 + i), cfg=cfg)
    train = make_batches(sp, n, unroll_steps, seed=seed + 2) if unroll_steps > 1 else make_batch(sp, n, seed=seed + 2)
    return HypergradProblem(cfg, state, train, make_batch(sp, n, seed=seed + 1))


def build_hypergrad(method: str, unroll_steps: int = 1, *, space: str = "default_1d", seed: int = SEED) -> Workload:
    """The architecture gradient alone (what ``arch_step`` spends before Adam)."""
    if method not in HYPERGRADS:
        raise ValueError(f"Unknown hypergrad {method!r}; expected one of {list(HYPERGRADS)}")
    problem = hypergrad_problem(space, unroll_steps=unroll_steps, warmup_steps=1, seed=seed)
    name = f"hypergrad_{method}_k{unroll_steps}"
    return Workload(name, lambda: problem.hypergrad(method, unroll_steps), name, f"hypergrad {method} K={unroll_steps}", problem)
