"""Running many steps fast: ``compile_search_step`` (``torch.compile``), ``vmapped_search_step`` (many
searches at once), and ``choose_compile``: whether compiling pays off for a search of so many steps.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fnas.core import tree
from fnas.core.io import atomic_write_json
from fnas.search.config import SearchConfig
from fnas.search.state import SearchState, init_search
from fnas.search.step import Batch, search_step
from fnas.spaces.chain.spec import ChainSpec

Tensor = torch.Tensor


def in_layout_of(new: Tensor, old: Tensor) -> Tensor:
    """``new`` laid out with ``old``'s strides: under ``torch.compile`` a fixed output layout, which
    inductor writes straight from the kernel that computes ``new``."""
    return torch.empty_strided(old.shape, old.stride(), dtype=new.dtype, device=new.device).copy_(new)


def unaliased(state: Any) -> Any:
    """``state`` with every tensor that appears at several leaves replaced by copies beyond the first."""
    seen: set[int] = set()

    def own(t: Tensor) -> Tensor:
        if id(t) in seen:
            return t.clone()
        seen.add(id(t))
        return t

    return tree.map(own, state)


def compile_search_step(cfg: SearchConfig, *, backend="inductor", **compile_kwargs):
    """:func:`search_step` for ``cfg`` under ``torch.compile``: ``step(state, train_batch,
    valid_batch) -> (new_state, metrics)``.

    The compiled function contains the ``torch.func`` transforms, so they are traced into the
    graph (a compiled function called *inside* an eager transform would silently run eagerly).
    The new state is handed back so that the next call passes dynamo's guards and reuses the
    first graph instead of compiling the whole step again (as long as the first compile):

    - in the memory layout of the state it was given: inductor may pick other strides for
      equivalent layouts (a ``(C, C', 1, 1)`` kernel's momentum, say); the copy into the old
      layout happens inside the graph, written straight by the kernel that computes the value;
    - without aliases: inductor returns one buffer for outputs it computes identically (the
      pool BatchNorm statistics that every edge leaving a state shares), so such leaves are
      copied apart after the call (a few small vectors).

    Args:
        cfg: the static search config (part of the compiled function, not an argument of it).
        backend, compile_kwargs: passed to ``torch.compile`` (tests use ``backend="aot_eager"``).
    """

    def step(state: SearchState, train_batch: Any, valid_batch: Batch):
        new, metrics = search_step(state, train_batch, valid_batch, cfg=cfg)
        return tree.map(in_layout_of, new, state), metrics

    compiled = torch.compile(step, backend=backend, **compile_kwargs)

    def compiled_step(state: SearchState, train_batch: Any, valid_batch: Batch):
        """:func:`search_step`, compiled (see :func:`compile_search_step`)."""
        new, metrics = compiled(state, train_batch, valid_batch)
        return unaliased(new), metrics

    return compiled_step


def vmapped_search_step(cfg: SearchConfig, *, shared_data: bool = True):
    """``search_step`` over a stacked batch of states in one call, with ``torch.func.vmap``.

    Args:
        cfg: the static config all searches share.
        shared_data: every search sees the same ``(train_batch, valid_batch)``; False: the batches
            are stacked too (leading axis = search).

    Returns:
        ``step(stacked_state, train_batch, valid_batch) -> (stacked_state, stacked_metrics)``,
        equal to running the searches one by one (tested). Useful for seed studies and for
        filling a GPU with tiny networks. Stack states with :func:`fnas.search.state.stack_states`.
    """
    data_dims = None if shared_data else 0
    return torch.func.vmap(functools.partial(search_step, cfg=cfg), in_dims=(0, data_dims, data_dims))


# --- when compiling pays off ---------------------------------------------------------------------

# The cost model per space kind (torch 2.13, CPU, one thread, inductor). A cold compile takes about
# as many seconds per aten op that one eager step dispatches, whatever the network. Cells
# (bench/COMPILED.md): first order 0.083 (small_1d), 0.091 (default_1d), 0.079 (darts_2d); exact
# 0.042 and 0.037 (its nested-grad ops are counted several times in eager). The chain
# (bench/compiled_chain.py, 20k on the watch shapes at batch 64): the default six blocks, first order
# 0.081 at 1.23x, exact 0.043 at 1.52x; four blocks 0.066 at 1.11x and 0.049 at 1.52x. Speed-ups
# are the smallest measured ones.
SECONDS_PER_OP = {"cell": {"first_order": 0.09, "exact": 0.045}, "chain": {"first_order": 0.08, "exact": 0.05}}
SPEEDUP = {"cell": {"first_order": 1.4, "exact": 2.0}, "chain": {"first_order": 1.1, "exact": 1.5}}
WARM_START_FRACTION = 0.1  # warm start / cold compile: 0.052-0.10 measured
_MARKERS = "fnas-steps"  # under the compile cache: one file per step compiled there before


class CompileDecision(NamedTuple):
    """Whether ``fnas search`` compiles its step, and why (one line)."""

    compile: bool
    reason: str


class CompileEstimate(NamedTuple):
    """What one eager step costs, and what compiling it would cost and save (seconds)."""

    eager_step_s: float
    cold_compile_s: float
    warm_start_s: float
    speedup: float


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def decide_compile(*, steps: int, estimate: CompileEstimate, warm: bool) -> CompileDecision:
    """Compile when the steps' expected saving exceeds the expected compile time; a pure function.

    Args:
        steps: search steps still to run.
        estimate: the eager step time and the modelled compile cost and speed-up.
        warm: a compile of this very step is in the cache: it costs only the warm start.

    Returns:
        The decision and its reason, e.g. ``on: 600 steps save ~5 min at ~1.4x, more than the
        ~2 min first compile``.
    """
    saving = steps * estimate.eager_step_s * (1.0 - 1.0 / estimate.speedup)
    cost, what = (estimate.warm_start_s, "warm start (compiled before, in the cache)") if warm else (
        estimate.cold_compile_s, "first compile")
    on = saving > cost
    verb, than = ("on", "more") if on else ("off", "less")
    return CompileDecision(on, f"{verb}: {steps} steps x {estimate.eager_step_s:.2f} s save ~{_duration(saving)} at "
                               f"~{estimate.speedup:.1f}x, {than} than the ~{_duration(cost)} {what}")


class _CountOps(TorchDispatchMode):
    """Counts the aten ops dispatched inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def estimate_compile(cfg: SearchConfig, train_batch: Batch, valid_batch: Batch) -> CompileEstimate:
    """Time one eager step on the batches and model the compile from its aten-op count.

    Runs two eager steps from a fresh state (one counts the ops, one is timed); nothing is kept.
    """
    state = init_search(cfg, torch.Generator().manual_seed(0))
    with _CountOps() as counter:
        search_step(state, train_batch, valid_batch, cfg=cfg)
    t0 = time.perf_counter()
    search_step(state, train_batch, valid_batch, cfg=cfg)
    eager_s = time.perf_counter() - t0
    kind = "chain" if isinstance(cfg.space, ChainSpec) else "cell"
    method = cfg.hypergrad if cfg.hypergrad in SECONDS_PER_OP[kind] else "first_order"
    cold = counter.ops * SECONDS_PER_OP[kind][method]
    return CompileEstimate(eager_s, cold, WARM_START_FRACTION * cold, SPEEDUP[kind][method])


def compile_cache_dir() -> Path:
    """Where compiled steps are cached across runs: ``$TORCHINDUCTOR_CACHE_DIR`` if set, else
    ``$XDG_CACHE_HOME/fnas/torch-compile`` (``~/.cache/fnas/torch-compile``).

    Inductor's default is a folder under ``/tmp``, which a reboot empties.
    """
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fnas" / "torch-compile"


@contextlib.contextmanager
def use_compile_cache(cache_dir: Path) -> Iterator[None]:
    """Inside: inductor's FX-graph and AOTAutograd caches live in ``cache_dir`` (created).

    Inductor reads ``TORCHINDUCTOR_CACHE_DIR`` whenever it looks a graph up; the variable is
    restored on leaving.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir.resolve())
    try:
        yield
    finally:
        if before is None:
            del os.environ["TORCHINDUCTOR_CACHE_DIR"]
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = before


def step_cache_key(cfg: SearchConfig, train_batch: Any, valid_batch: Batch, backend: str = "inductor") -> str:
    """A name for the compiled step of ``cfg`` on batches of these shapes: the config's values are
    constants of the graph, so any change (an lr, a budget) compiles a new one."""
    shapes = [(tuple(t.shape), str(t.dtype)) for t in tree.leaves((train_batch, valid_batch))]
    text = json.dumps([repr(cfg), shapes, backend, torch.__version__])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def is_warm(cache_dir: Path, key: str) -> bool:
    """Whether a step with this key was compiled into ``cache_dir`` before (:func:`mark_warm`)."""
    return (cache_dir / _MARKERS / key).is_file()


def mark_warm(cache_dir: Path, key: str) -> None:
    """Record that the step ``key`` is compiled into ``cache_dir``: a later run starts warm."""
    (cache_dir / _MARKERS).mkdir(parents=True, exist_ok=True)
    atomic_write_json(cache_dir / _MARKERS / key, {"marked": time.strftime("%Y-%m-%d %H:%M:%S")})


def choose_compile(
    requested: bool | None, cfg: SearchConfig, train_batch: Batch, valid_batch: Batch, *, steps: int,
    device: torch.device, world: int = 1, cache_dir: Path | None = None,
) -> CompileDecision:
    """Whether a search of ``steps`` steps should run its step compiled (inductor), and why.

    Args:
        requested: ``--compile`` (True) or ``--no-compile`` (False) decide; None: decide here, by
            :func:`decide_compile` on :func:`estimate_compile` (two eager steps on the batches).
        cfg, train_batch, valid_batch: the search's config and a batch of each kind (shapes only).
        steps: the search steps still to run.
        device: the auto choice is modelled on CPU figures; elsewhere it stays off.
        world: processes of a torchrun job (the step's collectives cannot be compiled).
        cache_dir: the compile cache looked in for a warm start (default :func:`compile_cache_dir`).
    """
    if requested is not None:
        return CompileDecision(requested, "on (--compile)" if requested else "off (--no-compile)")
    if world > 1:
        return CompileDecision(False, "off: not in a torchrun job (its collectives cannot be compiled)")
    if device.type != "cpu":
        return CompileDecision(False, f"off: the auto choice is modelled on CPU; pass --compile to compile on "
                                      f"{device.type}")
    cache_dir = compile_cache_dir() if cache_dir is None else cache_dir
    warm = is_warm(cache_dir, step_cache_key(cfg, train_batch, valid_batch))
    return decide_compile(steps=steps, estimate=estimate_compile(cfg, train_batch, valid_batch), warm=warm)
