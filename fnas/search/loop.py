"""The search loop: ``run_search`` over data loaders, with checkpoints, data parallelism and genotype selection.

The step itself is :func:`fnas.search.step.search_step`; this module feeds it batches, averages
its metrics per epoch, writes and resumes checkpoints (:mod:`fnas.search.checkpoint`), and reads
the final genotype off the searched supernet.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from typing import Any, Callable, Literal, NamedTuple

import torch

from fnas import cost
from fnas.core import tree
from fnas.core.checks import check_input
from fnas.core.collectives import Sync, default_sync
from fnas.search.checkpoint import LoaderPosition, check_resumable, load_checkpoint, save_checkpoint
from fnas.search.compile import compile_search_step
from fnas.search.config import SearchConfig
from fnas.search.defaults import selection_for
from fnas.search.selection import Perturbation, select_by_perturbation, select_within_budget
from fnas.search.state import insane_leaves, SearchState, init_search, state_from_dict
from fnas.search.step import search_step, weight_step

Tensor = torch.Tensor
SELECTIONS = ("alphas", "perturbation")


class SearchResult(NamedTuple):
    """What a finished search hands back."""

    genotype: Any  # Genotype_CNN
    alpha_history: list  # per epoch: {"normal": probs, "reduce": probs} (softmax of the alphas)
    history: list  # per epoch: averaged metrics and the genotype of that epoch
    state: SearchState
    model: torch.nn.Module  # a freshly initialised NetworkCnn of the genotype
    budget_misses: list  # empty when the genotype meets every budget, else how it misses
    seconds: float = 0.0  # wall time of this run_search call
    resumed_seconds: float = 0.0  # wall time of the searches it resumed from (their checkpoint's); total: the sum
    selection_seconds: float = 0.0  # of ``seconds``, the wall time of reading the genotype off the supernet


def run_search(
    cfg: SearchConfig,
    train_loader,
    valid_loader,
    *,
    epochs: int,
    gen: torch.Generator,
    device: torch.device | str = "cpu",
    progress: bool = True,
    compile: bool | str = False,
    on_epoch: Callable[[int, SearchState, dict], Any] | None = None,
    checkpoint=None,
    checkpoint_every: int = 0,
    resume=None,
    state: SearchState | None = None,
    sync: Sync | Literal["auto"] | None = "auto",
    selection: str | None = None,
    selection_samples: int = 256,
) -> SearchResult:
    """Search for ``epochs`` epochs over ``train_loader`` (alphas on batches of ``valid_loader``).

    Args:
        cfg: the search config; ``total_steps`` is set here to ``epochs * len(train_loader)``.
        train_loader, valid_loader: iterables of ``(x, y)``; the validation loader is cycled.
        epochs: number of passes over ``train_loader``.
        gen: initialises the supernet and then the final model.
        device: where the search runs.
        progress: show a tqdm bar per epoch with live loss, accuracy, lr and expected cost.
        compile: run the whole step compiled (:func:`fnas.search.compile.compile_search_step`)
            instead of eagerly: ``True`` for inductor, or the name of a ``torch.compile`` backend
            (e.g. ``"aot_eager"``). On CPU, inductor's first compile of a search network takes
            minutes (about 12 for the CLI's default network on one core); later runs of the same
            network load it from inductor's cache.
        on_epoch: optional ``callback(epoch, state, record)`` after each epoch (logs, plots).
        checkpoint: path of the checkpoint file; written atomically at the end of every epoch and
            every ``checkpoint_every`` steps (0: epoch ends only).
        resume: path of a checkpoint to continue from. With loaders that shuffle from a
            ``torch.Generator`` (or torch's default one), the resumed search is bitwise equal to an
            uninterrupted one.
        state: start from this state instead of a fresh ``init_search(cfg, gen)``.
        sync: data-parallel search over a ``torch.distributed`` process group
            (:class:`fnas.core.collectives.Sync`); ``None``: a single process (e.g. independent
            searches per rank); ``"auto"`` (default): a ``Sync`` over the default group when one of
            more than one rank is initialised (e.g. under ``torchrun``). Every rank must pass the
            same arguments and iterate the same loaders (same data, same shuffling generators):
            each global batch of ``B`` is split here, rank ``r`` taking samples
            ``[r * B / W, (r + 1) * B / W)``. Gradients of weights and alphas (every hypergradient
            method, to every order) and BatchNorm statistics are synchronised, so the search
            equals a single process on the global batches up to float rounding. The initial (or
            resumed) state is broadcast from rank 0, every rank reads ``resume``, metrics are
            averaged over the ranks (so all ranks stop together on a non-finite one), and only
            rank 0 writes ``checkpoint``, shows progress and calls ``on_epoch``. Every rank
            returns the same result.
        selection: how the final genotype is read off the searched supernet (None: the space's
            default, :func:`fnas.search.defaults.selection_for`: ``"alphas"`` on chains,
            ``"perturbation"`` on cells): ``"perturbation"`` (cells: per node the
            (edge, op) whose removal raises the supernet's validation loss most, Wang et al. ICLR
            2021; see :mod:`fnas.search.selection`; with budgets, the best-scoring genotype within
            them) or ``"alphas"`` (DARTS: per node the largest softmax weight).
        selection_samples: validation samples the perturbation scores are measured on (the
            first ones of ``valid_loader``'s dataset, in order, when it has one; else its first
            batches).

    Returns:
        A :class:`SearchResult`; its ``seconds`` plus ``resumed_seconds`` is the search's wall time
        over every run that contributed (each checkpoint stores the total so far).

    Raises:
        ValueError: bad arguments, data that does not fit the space, an unreachable budget (all
            checked before training), a checkpoint that does not match ``cfg``; in data-parallel
            mode also a batch not divisible by the world size, ranks that see different data, or
            ``compile=True`` (not supported there).
        FloatingPointError: a non-finite loss or gradient, naming the step; the last checkpoint
            (written before that step) stays intact.
    """
    selection = selection_for(cfg.space) if selection is None else selection
    sync = _check_options(sync, compile, selection, selection_samples, epochs, checkpoint_every)
    steps_per_epoch = _check_data(cfg, train_loader, valid_loader, sync)
    cfg = cfg.replace(total_steps=epochs * steps_per_epoch)
    if cfg.penalty_metrics:
        # an unreachable budget fails now, naming the minimum, not after hours of search
        cost.check_budget(cfg, cfg.max_params, cfg.max_macs, cfg.max_sram_bytes)
    run = _Run(cfg, train_loader, valid_loader, gen=gen, device=device, sync=sync, checkpoint=checkpoint)
    start_epoch, resume_at = run.start(state, resume)
    steps = _step_functions(cfg, compile, sync)
    for epoch in range(start_epoch, epochs):
        run.epoch(epoch, epochs, steps, resume_at=resume_at if epoch == start_epoch else None,
                  progress=progress, checkpoint_every=checkpoint_every, on_epoch=on_epoch)
    t_select = time.perf_counter()
    genotype, first_misses = select_genotype(run.state, cfg, valid_loader, selection, selection_samples, device,
                                             progress=progress and run.lead, sync=sync)
    t_select = time.perf_counter() - t_select
    if first_misses and selection == "alphas":
        # the hard guarantee: the strongest genotype (by the alphas) whose exact cost fits
        warnings.warn(
            f"The searched argmax genotype missed its budget ({'; '.join(first_misses)}); using the "
            "strongest genotype within budget instead (fnas.cost.derive_within_budget)",
            stacklevel=2,
        )
    model = _network(genotype, cfg, gen)
    return SearchResult(genotype, run.log.alpha_history, run.log.history, run.state, model, over_budget(genotype, cfg),
                        seconds=time.perf_counter() - run.t0, resumed_seconds=run.resumed_seconds,
                        selection_seconds=t_select)


# --- checks before any training ------------------------------------------------------------------


def _check_options(sync, compile, selection, selection_samples, epochs, checkpoint_every) -> Sync | None:
    """Validate ``run_search``'s options; returns the resolved ``sync``."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if not isinstance(selection_samples, int) or selection_samples < 1:
        raise ValueError(f"selection_samples must be a positive int, got {selection_samples!r}")
    if isinstance(sync, str):
        if sync != "auto":
            raise ValueError(f"sync must be a fnas.core.collectives.Sync, None or 'auto', got {sync!r}")
        sync = default_sync()
    if not isinstance(compile, (bool, str)):
        raise ValueError(f"compile must be a bool or a torch.compile backend name, got {compile!r}")
    if sync is not None and compile:
        raise ValueError(
            "compile=True is not supported in data-parallel mode (the step's collectives would be traced); "
            "pass compile=False, or run the compiled search in a single process"
        )
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if not isinstance(checkpoint_every, int) or checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be an int >= 0, got {checkpoint_every!r}")
    return sync


def _check_data(cfg: SearchConfig, train_loader, valid_loader, sync: Sync | None) -> int:
    """Check the first batch of each loader (and, data-parallel, that the ranks agree); returns ``len(train_loader)``."""
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError("The training loader is empty; give it at least one batch")
    first = {"training": next(iter(train_loader))}
    check_batch(first["training"], cfg, what="training")
    first["validation"] = next(iter(valid_loader))
    check_batch(first["validation"], cfg, what="validation")
    if sync is not None:
        for what, batch in first.items():
            sync.shard(batch, what=what)  # a batch size not divisible by the world size fails now
            if not sync.same_on_all_ranks(*batch):
                raise ValueError(
                    f"The ranks see different first {what} batches; in data-parallel mode every rank must "
                    "iterate the same loaders in the same order (same data, same shuffling seed): "
                    "run_search splits each global batch over the ranks itself"
                )
    return steps_per_epoch


def check_batch(batch: Any, cfg: SearchConfig, *, what: str) -> None:
    """Validate one ``(x, y)`` batch against the space, before any training starts.

    Raises:
        ValueError: wrong structure, rank, channel count, spatial shape, dtype or label range.
    """
    space = cfg.space
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise ValueError(f"{what} batches must be (x, y) pairs, got {type(batch).__name__}")
    x, y = batch
    check_input(x, space.in_channels, space.input_shape, what=f"{what} x")
    if not isinstance(y, Tensor) or y.ndim != 1 or y.shape[0] != x.shape[0] or y.is_floating_point():
        raise ValueError(f"{what} y must be a 1-D integer label tensor of length N={x.shape[0]}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= space.num_classes):
        raise ValueError(
            f"{what} labels must lie in 0..{space.num_classes - 1} (num_classes={space.num_classes}), "
            f"got {int(y.min())}..{int(y.max())}"
        )


# --- the epochs ----------------------------------------------------------------------------------


class _Steps(NamedTuple):
    """``(state, train_batch, valid_batch) -> (state, metrics)`` for the warm-up and the search."""

    warmup: Callable
    search: Callable


def _step_functions(cfg: SearchConfig, compile: bool | str, sync: Sync | None) -> _Steps:
    def warmup(state, train_batch, valid_batch):  # weights only: the alphas stay fixed
        return weight_step(state, train_batch, cfg=cfg, sync=sync)

    if compile:
        return _Steps(warmup, compile_search_step(cfg, backend="inductor" if compile is True else compile))
    return _Steps(warmup, functools.partial(search_step, cfg=cfg, sync=sync))


@dataclasses.dataclass
class _Log:
    """The search's metrics: one record per finished epoch, and the running sums of the current one."""

    history: list = dataclasses.field(default_factory=list)
    alpha_history: list = dataclasses.field(default_factory=list)
    sums: dict = dataclasses.field(default_factory=dict)
    counts: dict = dataclasses.field(default_factory=dict)

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: v / self.counts[k] for k, v in self.sums.items()}

    def new_epoch(self) -> None:
        self.sums, self.counts = {}, {}

    def as_dict(self) -> dict:
        """The checkpoint's view (no copies: it is written at once)."""
        return {"history": self.history, "alpha_history": self.alpha_history, "sums": self.sums, "counts": self.counts}


class _Run:
    """One call of :func:`run_search`: the state, where the loaders stand, the metrics so far."""

    def __init__(self, cfg: SearchConfig, train_loader, valid_loader, *, gen, device, sync, checkpoint):
        self.cfg, self.gen, self.device, self.sync, self.checkpoint = cfg, gen, device, sync, checkpoint
        self.cfg_record = dataclasses.asdict(cfg)
        self.train_pos, self.valid_pos = LoaderPosition(train_loader), LoaderPosition(valid_loader)
        self.steps_per_epoch = len(train_loader)
        self.lead = sync is None or sync.rank == 0  # writes checkpoints, shows progress, calls on_epoch
        self.log = _Log()
        self.state: SearchState | None = None
        # the checkpoint carries the search's accumulated wall time, so a resumed run reports its whole cost
        self.t0, self.resumed_seconds = time.perf_counter(), 0.0

    def start(self, state: SearchState | None, resume) -> tuple[int, dict | None]:
        """Set the first state (resumed, given or fresh); returns ``(first epoch, checkpoint or None)``."""
        saved, start_epoch = None, 0
        if resume is not None:
            saved = load_checkpoint(resume)
            check_resumable(saved, self.cfg_record, resume)
            state = state_from_dict(saved["state"])
            self.gen.set_state(saved["gen"])
            start_epoch = saved["epoch"]
            self.log = _Log(saved["history"], saved["alpha_history"], saved["sums"], saved["counts"])
            self.valid_pos.restore(saved["valid_pos"])
            self.resumed_seconds = float(saved.get("elapsed_seconds", 0.0))  # 0 in checkpoints written before it
        elif state is None:
            state = init_search(self.cfg, self.gen)
        state = tree.map(lambda t: t.to(self.device), state)
        if self.sync is not None:  # every rank starts from rank 0's state (as DDP does); they stay equal
            state = self.sync.broadcast_tree(state)
        self.state = state
        if resume is None:
            self.save(0, 0)  # resumable from the very start
        return start_epoch, saved

    def save(self, epoch: int, batch: int) -> None:
        if self.checkpoint is None or not self.lead:
            return
        save_checkpoint(self.checkpoint, self.state, cfg_record=self.cfg_record, epoch=epoch, batch=batch,
                        train_pos=self.train_pos, valid_pos=self.valid_pos, gen=self.gen,
                        log=self.log.as_dict(), elapsed_seconds=self.resumed_seconds + time.perf_counter() - self.t0)

    def epoch(self, epoch: int, epochs: int, steps: _Steps, *, resume_at, progress, checkpoint_every, on_epoch):
        """One pass over the training loader (the rest of it when ``resume_at`` stopped mid-epoch)."""
        if resume_at is not None:
            self.train_pos.restore(resume_at["train_pos"])
        if resume_at is None or resume_at["batch"] == 0:
            self.train_pos.begin()
            self.log.new_epoch()
        bar = _progress(self.steps_per_epoch, epoch, epochs, progress and self.lead, initial=self.train_pos.taken)
        for i in range(self.train_pos.taken, self.steps_per_epoch):
            values = self._step(steps, epoch, i)
            self.log.add(values)
            if bar is not None:
                _show(bar, self.log.means(), values, self.cfg)
            if checkpoint_every and int(self.state.step) % checkpoint_every == 0 and i + 1 < self.steps_per_epoch:
                self.save(epoch, i + 1)
        if bar is not None:
            bar.close()
        record = self.log.means()
        genotype = self.cfg.space.derive(self.state.alphas)
        record.update(epoch=epoch, step=int(self.state.step), genotype=self.cfg.space.genotype_to_dict(genotype))
        self.log.history.append(record)
        self.log.alpha_history.append({k: torch.softmax(a.detach().cpu(), -1) for k, a in self.state.alphas.items()})
        self.log.new_epoch()
        if on_epoch is not None and self.lead:  # before the checkpoint: a crash in between repeats a log line, loses none
            on_epoch(epoch, self.state, record)
        self.save(epoch + 1, 0)

    def _step(self, steps: _Steps, epoch: int, i: int) -> dict[str, float]:
        """One step on the next batches; returns its metrics as floats.

        Raises:
            FloatingPointError: a non-finite metric (the state stays the one before the step).
        """
        (x, y), (vx, vy) = self.train_pos.take(), self.valid_pos.cycle()
        train_batch, valid_batch = (x.to(self.device), y.to(self.device)), (vx.to(self.device), vy.to(self.device))
        if self.sync is not None:
            train_batch = self.sync.shard(train_batch, what="training")
            valid_batch = self.sync.shard(valid_batch, what="validation")
        step = steps.warmup if int(self.state.step) < self.cfg.warmup_steps else steps.search
        new_state, metrics = step(self.state, train_batch, valid_batch)
        if self.sync is not None:  # the global batch's values, the same on every rank
            metrics = self.sync.mean_metrics(metrics)
        values = {k: float(v) for k, v in metrics.items()}
        bad = {k: v for k, v in values.items() if not _finite(v)}
        insane = insane_leaves(new_state)
        if bad or insane:
            what = f"Non-finite values at step {int(self.state.step)}" if bad else (
                f"The search diverged at step {int(self.state.step)}")
            detail = f"{bad}" if bad else f"the new state has {', '.join(insane[:4])} non-finite or beyond 1e4"
            raise FloatingPointError(
                f"{what} (epoch {epoch}, batch {i}): {detail}. The "
                "step was not taken and no checkpoint holds it; resume from the last checkpoint with a lower "
                "lr or arch_lr (or a lower grad_clip), e.g. `fnas search --resume RUN --lr 0.01`"
            )
        self.state = new_state
        return values


def _finite(v: float) -> bool:
    return v == v and v not in (float("inf"), float("-inf"))


def _progress(total: int, epoch: int, epochs: int, enabled: bool, *, initial: int = 0):
    if not enabled:
        return None
    from tqdm.auto import tqdm  # only when a bar is shown

    return tqdm(total=total, initial=initial, desc=f"search {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)


def _show(bar, live: dict[str, float], values: dict[str, float], cfg: SearchConfig) -> None:
    """Advance the bar; the epoch's running means and the current expected costs as its postfix."""
    bar.update(1)
    postfix = {"loss": f"{live['train_loss']:.3f}", "acc": f"{live['train_acc']:.3f}"}
    if "valid_acc" in live:
        postfix["vacc"] = f"{live['valid_acc']:.3f}"
    for metric in cfg.penalty_metrics:
        if f"expected_{metric}" in values:
            postfix[metric] = f"{values[f'expected_{metric}']:.3g}"
    bar.set_postfix(postfix, refresh=False)


# --- the result ----------------------------------------------------------------------------------


def selection_batches(valid_loader, n: int, device) -> list:
    """Up to ``n`` validation samples for the perturbation scores, without touching any RNG."""
    data = getattr(valid_loader, "dataset", None)
    if data is not None and hasattr(data, "__len__") and len(data) > 0:
        batch_size = getattr(valid_loader, "batch_size", None) or 64
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, range(min(n, len(data)))),
                                             batch_size=batch_size, shuffle=False)
    else:
        loader = valid_loader
    batches, seen = [], 0
    for x, y in loader:
        if seen >= n:
            break
        if y.shape[0] < 2:  # BatchNorm needs two samples
            continue
        batches.append((x.to(device), y.to(device)))
        seen += y.shape[0]
    return batches


def select_genotype(
    state: SearchState, cfg: SearchConfig, valid_loader, selection: str, n: int, device, *, progress: bool = False,
    sync: Sync | None = None, screened: bool = False,
):
    """The final genotype and, when it had to be replaced to meet a budget, how the first pick missed.

    Args:
        state, cfg: the searched supernet and its config.
        valid_loader, n: the perturbation scores are measured on its first ``n`` samples
            (:func:`selection_batches`).
        selection: ``"perturbation"`` or ``"alphas"``.
        device: where the samples go.
        progress: a bar over the supernet evaluations.
        sync: data parallel: the masked evaluations are split over the ranks; every rank returns
            the same genotype (the one a single process picks from the same state).
        screened: measure only the candidates a first-order screen ranks strongest
            (:meth:`fnas.search.selection.Perturbation.settle`: a fraction of the cost, but a
            heuristic that can pick differently); False (default): every (edge, op).

    Returns:
        ``(genotype, misses)``; ``misses`` is empty when the first pick met every budget.
    """
    if selection != "perturbation":
        first = cfg.space.derive(state.alphas)
        misses = cost.budget_misses(first, cfg)
        return (first, []) if not misses else (cost.derive_within_budget(state.alphas, cfg), misses)
    p = Perturbation(state.weights, state.alphas, state.stats, selection_batches(valid_loader, n, device), cfg=cfg,
                     progress=progress, sync=sync)
    try:
        p.run(exhaustive=not screened)
        first = select_by_perturbation(p.scores(), cfg)
        misses = cost.budget_misses(first, cfg)
        return (first, []) if not misses else (select_within_budget(p, state.alphas, cfg), misses)
    finally:
        p.close()


def over_budget(genotype, cfg: SearchConfig) -> list[str]:
    """How the genotype's exact cost exceeds each budget, e.g. ``"params 5,210 > 5,000 (+4.2%)"``."""
    return cost.budget_misses(genotype, cfg)


def _network(genotype, cfg: SearchConfig, gen: torch.Generator) -> torch.nn.Module:
    """A freshly initialised network of ``genotype`` in ``cfg``'s space (weights from ``gen``)."""
    return cfg.space.network(genotype, gen=gen)
