"""The search: ``SearchState``, ``init_search``, the pure ``search_step``, and the loop around it.

``search_step(state, train_batch, valid_batch, *, cfg) -> (state, metrics)`` first updates the
alphas on the validation batch (Adam, with the configured architecture gradient), then the weights
on the training batch (SGD with momentum, weight decay, clipping, cosine lr), as DARTS does. It
never mutates its inputs and returns 0-d tensors as metrics, so it can be jitted, vmapped and
dropped into any loop.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from fnas import cost
from fnas.core import collectives as distributed
from fnas.core import hypergrad
from fnas.core import tree
from fnas.core.checks import check_input
from fnas.search.config import SearchConfig
from fnas.core.optim import AdamState, SGDState, adam_init, adam_update, clip_by_global_norm, cosine_lr, sgd_init
from fnas.core.optim import sgd_update
from fnas.spaces.cell.supernet import apply_supernet, init_supernet

Tensor = torch.Tensor
Batch = tuple[Tensor, Tensor]


class SearchState(NamedTuple):
    """Everything a search carries from one step to the next."""

    weights: dict
    alphas: dict
    stats: dict
    w_opt: SGDState
    a_opt: AdamState
    step: Tensor  # 0-d int64: a Python int would recompile a compiled step


def state_to_dict(state: SearchState) -> dict:
    """Plain nested dicts of tensors (loadable with ``torch.load(weights_only=True)``)."""
    return {
        "weights": state.weights,
        "alphas": state.alphas,
        "stats": state.stats,
        "w_opt": {"momentum": state.w_opt.momentum},
        "a_opt": {"mu": state.a_opt.mu, "nu": state.a_opt.nu, "count": state.a_opt.count},
        "step": state.step,
    }


def state_from_dict(data: dict) -> SearchState:
    """Inverse of :func:`state_to_dict`.

    Raises:
        ValueError: keys are missing (not a search state).
    """
    try:
        return SearchState(
            data["weights"],
            data["alphas"],
            data["stats"],
            SGDState(data["w_opt"]["momentum"]),
            AdamState(data["a_opt"]["mu"], data["a_opt"]["nu"], data["a_opt"]["count"]),
            data["step"],
        )
    except (KeyError, TypeError) as err:
        raise ValueError(f"Not an fnas search state (missing {err}); was it written by fnas search?") from err


def init_search(cfg: SearchConfig, gen: torch.Generator, *, dtype: torch.dtype = torch.float32) -> SearchState:
    """A fresh search state: supernet init from ``gen``, zero optimiser states, step 0."""
    weights, alphas, stats = init_supernet(cfg, gen, dtype=dtype)
    return SearchState(weights, alphas, stats, sgd_init(weights), adam_init(alphas), torch.zeros((), dtype=torch.int64))


def supernet_loss(weights: dict, alphas: dict, stats: dict, batch: Batch, *, cfg: SearchConfig, train: bool = True):
    """Cross-entropy of the supernet on ``batch``.

    In data-parallel mode (:func:`fnas.core.collectives.data_parallel`) ``batch`` is this rank's shard:
    the loss is the shard's mean, but every gradient taken of it with respect to ``weights`` or
    ``alphas`` (at any nesting depth) is the global batch's (:func:`fnas.core.collectives.sync_grads`),
    and BatchNorm uses the global batch's statistics.

    Returns:
        ``(loss, (new_stats, correct))`` where ``correct`` counts right top-1 predictions.
    """
    if distributed.is_active():
        weights, alphas = distributed.sync_grads(weights), distributed.sync_grads(alphas)
    x, y = batch
    logits, new_stats = apply_supernet(weights, alphas, stats, x, cfg=cfg, train=train)
    loss = F.cross_entropy(logits, y)
    correct = (logits.argmax(-1) == y).sum()
    return loss, (new_stats, correct)


def current_lr(step: Tensor, cfg: SearchConfig) -> Tensor:
    """The weight learning rate at ``step`` (cosine annealing over ``cfg.total_steps``)."""
    return cosine_lr(step, lr=cfg.lr, lr_min=cfg.lr_min, total_steps=cfg.total_steps)


def _first(train_batch: Any) -> Batch:
    return hypergrad.as_batches(train_batch, 1)[0]


def arch_step(state: SearchState, train_batch: Any, valid_batch: Batch, *, cfg: SearchConfig):
    """Update the alphas only; returns ``(state, metrics)``.

    ``train_batch`` is one batch or, for ``unroll_steps = K > 1``, a list of K batches.
    """
    lr = current_lr(state.step, cfg)

    def loss_fn(w, a, batch):
        return supernet_loss(w, a, state.stats, batch, cfg=cfg)

    method = hypergrad.get(cfg.hypergrad)
    g_alpha, (val_loss, (_, val_correct)) = method(
        loss_fn,
        state.weights,
        state.alphas,
        state.w_opt.momentum,
        train_batch,
        valid_batch,
        xi=lr,
        momentum_coef=cfg.momentum,
        weight_decay=cfg.weight_decay,
        unroll_steps=cfg.unroll_steps,
    )
    metrics = {}
    if cfg.penalty_metrics:
        g_pen, pen = torch.func.grad_and_value(lambda a: resource_penalty(a, cfg))(state.alphas)
        g_alpha = tree.add(g_alpha, g_pen)
        metrics["penalty"] = pen.detach()
        for metric in cfg.penalty_metrics:
            metrics[f"expected_{metric}"] = cost.expected_cost(state.alphas, cfg, metric=metric).detach()
    if cfg.beta_weight:  # static config: no branching on tensor values
        g_beta, beta = beta_decay_grad(state.alphas, state.step, cfg)
        g_alpha = tree.add(g_alpha, g_beta)
        metrics["beta_loss"] = beta
    alphas, a_opt = adam_update(
        g_alpha, state.a_opt, state.alphas, lr=cfg.arch_lr, betas=cfg.arch_betas, weight_decay=cfg.arch_weight_decay
    )
    metrics.update(
        valid_loss=val_loss.detach(),
        valid_acc=val_correct / valid_batch[1].shape[0],
        alpha_grad_norm=tree.norm(g_alpha),
    )
    return state._replace(alphas=alphas, a_opt=a_opt), metrics


def resource_penalty(alphas: dict, cfg: SearchConfig) -> Tensor:
    """The configured resource penalty of ``alphas`` (0 when none is configured)."""
    if not cfg.penalty_metrics:
        return torch.zeros(())
    budgets = {m: cfg.budgets[m] for m in cfg.penalty_metrics}
    return cost.penalty(alphas, cfg, mode=cfg.penalty_metrics, budget=budgets, weight=cfg.penalty_weight)


def beta_decay(alphas: dict) -> Tensor:
    """The beta-decay regulariser of beta-DARTS (unweighted).

    ``L_beta = mean over cell types of mean over edges of logsumexp_k(alpha_(e,k))``: the smooth
    maximum of each edge's alphas. Its gradient is ``softmax(alpha_e) / E``: every alpha decays in
    proportion to its own softmax weight ("beta", hence beta-decay), which keeps the value and the
    variance of the betas in check, so the supernet's ops keep competing on fair terms (the paper's
    remedy for DARTS' collapse onto parameter-free ops). Averaging over both cell types equals the
    mean over the stacked alphas, as in the reference code, so the paper's weight (50) carries over.

    Args:
        alphas: ``{"normal", "reduce"}``, each ``(num_edges, num_primitives)``.

    Returns:
        A 0-d tensor.

    References:
        Ye et al. beta-DARTS: Beta-Decay Regularization for Differentiable Architecture Search. CVPR 2022.
    """
    kinds = [k for k in ("normal", "reduce") if k in alphas]  # op weights only, not PC-DARTS edge betas
    return sum(torch.logsumexp(alphas[k], dim=-1).mean() for k in kinds) / len(kinds)


def beta_schedule(step: Tensor, cfg: SearchConfig) -> Tensor:
    """The beta-decay weight at ``step``: ``beta_weight * min(step / total_steps, 1)`` (linear from 0).

    A pure function of the 0-d ``step`` tensor (no recompiles, no ``.item()``).
    """
    return cfg.beta_weight * (step.to(torch.float64) / cfg.total_steps).clamp(0.0, 1.0)


def beta_decay_grad(alphas: dict, step: Tensor, cfg: SearchConfig) -> tuple[dict, Tensor]:
    """Gradient and value of ``beta_schedule(step) * beta_decay(alphas)``, in closed form.

    ``d/d alpha_(e,k) mean_e logsumexp(alpha_e) = softmax(alpha_e)_k / E`` for each cell type, and
    the mean over the ``T`` cell types divides by ``T``. Tensor arithmetic only (compile-friendly).

    Returns:
        ``(grads, weighted_loss)``: a tree like ``alphas``, and a detached 0-d tensor.
    """
    kinds = [k for k in ("normal", "reduce") if k in alphas]  # op weights only, not PC-DARTS edge betas
    weight = beta_schedule(step, cfg)
    grads = {
        k: (weight.to(a.dtype) / (a.shape[0] * len(kinds))) * torch.softmax(a.detach(), dim=-1)
        if k in kinds else torch.zeros_like(a)
        for k, a in alphas.items()
    }
    return grads, (weight.to(alphas[kinds[0]].dtype) * beta_decay({k: a.detach() for k, a in alphas.items()}))


def weight_step(state: SearchState, train_batch: Any, *, cfg: SearchConfig):
    """Update the weights (and BN statistics) only; returns ``(state, metrics)``."""
    batch = _first(train_batch)
    lr = current_lr(state.step, cfg)
    g, (loss, (stats, correct)) = torch.func.grad(
        lambda w: _aux(supernet_loss(w, state.alphas, state.stats, batch, cfg=cfg)), has_aux=True
    )(state.weights)
    g, grad_norm = clip_by_global_norm(g, cfg.grad_clip)
    weights, w_opt = sgd_update(
        g, state.w_opt, state.weights, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    metrics = {
        "train_loss": loss.detach(),
        "train_acc": correct / batch[1].shape[0],
        "lr": lr,
        "grad_norm": grad_norm,
    }
    return state._replace(weights=weights, stats=stats, w_opt=w_opt, step=state.step + 1), metrics


def _aux(result):
    loss, aux = result
    return loss, (loss, aux)


def search_step(state: SearchState, train_batch: Any, valid_batch: Batch, *, cfg: SearchConfig):
    """One DARTS step: alphas on ``valid_batch``, then weights on ``train_batch``.

    Args:
        state: the current :class:`SearchState` (not modified).
        train_batch: ``(x, y)``; for ``cfg.unroll_steps = K > 1`` optionally a list of K batches
            (the first is also the real weight step's batch).
        valid_batch: ``(x, y)``.
        cfg: the static :class:`SearchConfig`.

    Returns:
        ``(new_state, metrics)``; metrics are 0-d tensors: train/valid loss and accuracy, lr,
        weight-gradient norm before clipping, alpha-gradient norm.
    """
    state, arch_metrics = arch_step(state, train_batch, valid_batch, cfg=cfg)
    state, w_metrics = weight_step(state, train_batch, cfg=cfg)
    return state, {**w_metrics, **arch_metrics}


def _in_layout_of(new: Tensor, old: Tensor) -> Tensor:
    """``new`` laid out with ``old``'s strides: under ``torch.compile`` a fixed output layout, which
    inductor writes straight from the kernel that computes ``new``."""
    return torch.empty_strided(old.shape, old.stride(), dtype=new.dtype, device=new.device).copy_(new)


def _unaliased(state: SearchState) -> SearchState:
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
        return tree.map(_in_layout_of, new, state), metrics

    compiled = torch.compile(step, backend=backend, **compile_kwargs)

    def compiled_step(state: SearchState, train_batch: Any, valid_batch: Batch):
        """:func:`search_step`, compiled (see :func:`compile_search_step`)."""
        new, metrics = compiled(state, train_batch, valid_batch)
        return _unaliased(new), metrics

    return compiled_step


# --- the loop -------------------------------------------------------------------------------


class SearchResult(NamedTuple):
    """What a finished search hands back."""

    genotype: Any  # Genotype_CNN
    alpha_history: list  # per epoch: {"normal": probs, "reduce": probs} (softmax of the alphas)
    history: list  # per epoch: averaged metrics and the genotype of that epoch
    state: SearchState
    model: torch.nn.Module  # a freshly initialised NetworkCnn of the genotype
    budget_misses: list  # empty when the genotype meets every budget, else how it misses


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


class _Position:
    """Where a loader's iteration stands: the state of its ``generator`` when its current pass
    began, and how many batches of that pass were taken. Restoring both replays the pass exactly.
    A loader without a generator (a list, or a DataLoader shuffling from torch's global RNG, which
    the library never reseeds) resumes at the right batch count but with fresh shuffles."""

    def __init__(self, loader):
        self.loader = loader
        gen = getattr(loader, "generator", None)
        self.gen = gen if isinstance(gen, torch.Generator) else None
        self.start_state: Tensor | None = None
        self.taken = 0
        self.it = None

    def begin(self) -> None:
        self.start_state = self.gen.get_state() if self.gen is not None else None
        self.it = iter(self.loader)
        self.taken = 0

    def take(self):
        batch = next(self.it)
        self.taken += 1
        return batch

    def cycle(self):
        """The next batch, starting a new pass when the current one is exhausted."""
        if self.it is None:
            self.begin()
        try:
            return self.take()
        except StopIteration:
            self.begin()
            try:
                return self.take()
            except StopIteration:
                raise ValueError("The validation loader is empty; give it at least one batch") from None

    def save(self) -> dict:
        now = self.gen.get_state() if self.gen is not None else None
        return {"rng": self.start_state, "taken": self.taken, "rng_now": now}

    def restore(self, saved: dict) -> None:
        """Replay the current pass up to where it stood, then put the generator where it was (a
        pass that had just ended must leave the next pass's shuffle to the same generator state)."""
        if saved["rng"] is not None and self.gen is not None:
            self.gen.set_state(saved["rng"])
        self.begin()
        for _ in range(saved["taken"]):
            self.take()
        if saved["rng_now"] is not None and self.gen is not None:
            self.gen.set_state(saved["rng_now"])


CHECKPOINT_FORMAT = "fnas-search-checkpoint/1"


def load_checkpoint(path) -> dict:
    """Read a search checkpoint written by :func:`run_search` (``torch.load(weights_only=True)``).

    Raises:
        ValueError: missing, truncated or foreign file.
    """
    from fnas.core.io import safe_torch_load

    data = safe_torch_load(path)
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(path)!r} is not an fnas search checkpoint (expected format {CHECKPOINT_FORMAT})")
    return data


def run_search(
    cfg: SearchConfig,
    train_loader,
    valid_loader,
    *,
    epochs: int,
    gen: torch.Generator,
    device: torch.device | str = "cpu",
    progress: bool = True,
    compile: bool = False,
    on_epoch=None,
    checkpoint=None,
    checkpoint_every: int = 0,
    resume=None,
    state: SearchState | None = None,
    data_parallel: bool | None = None,
    selection: str = "alphas",
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
        compile: run the whole step compiled (:func:`compile_search_step`) instead of eagerly:
            ``True`` for inductor, or the name of a ``torch.compile`` backend (e.g. ``"aot_eager"``).
            On CPU, inductor's first compile of a search network takes minutes (about 12 for the
            CLI's default network on one core); later runs of the same network load it from
            inductor's cache.
        on_epoch: optional ``callback(epoch, state, record)`` after each epoch (logs, plots).
        checkpoint: path of the checkpoint file; written atomically at the end of every epoch and
            every ``checkpoint_every`` steps (0: epoch ends only).
        resume: path of a checkpoint to continue from. With loaders that shuffle from a
            ``torch.Generator`` (or torch's default one), the resumed search is bitwise equal to an
            uninterrupted one.
        state: start from this state instead of a fresh ``init_search(cfg, gen)``.
        data_parallel: search data-parallel over the ``torch.distributed`` process group
            (:mod:`fnas.distributed`); None (default): when a group of more than one rank is
            initialised (e.g. under ``torchrun``) or :func:`fnas.core.collectives.data_parallel` is
            active. Every rank must pass the same arguments and iterate the same loaders (same
            data, same shuffling generators): each global batch of ``B`` is split here, rank ``r``
            taking samples ``[r * B / W, (r + 1) * B / W)``. Gradients of weights and alphas (every
            hypergradient method, to every order) and BatchNorm statistics are synchronised, so
            the search equals a single process on the global batches up to float rounding. The
            initial (or resumed) state is broadcast from rank 0, every rank reads ``resume``,
            metrics are averaged over the ranks (so all ranks stop together on a non-finite one),
            and only rank 0 writes ``checkpoint``, shows progress and calls ``on_epoch``. Every
            rank returns the same result.
        selection: how the final genotype is read off the searched supernet: ``"alphas"`` (DARTS:
            per node the largest softmax weight) or ``"perturbation"`` (per node the (edge, op)
            whose removal raises the supernet's validation loss most, Wang et al. ICLR 2021; see
            :mod:`fnas.selection`; with budgets, the best-scoring genotype within them). The CLI
            defaults to ``"perturbation"``, which won ``bench/quality.py``.
        selection_samples: validation samples the perturbation scores are measured on (the
            first ones of ``valid_loader``'s dataset, in order, when it has one; else its first
            batches).

    Returns:
        A :class:`SearchResult`.

    Raises:
        ValueError: bad arguments, data that does not fit the space, an unreachable budget (all
            checked before training), a checkpoint that does not match ``cfg``; in data-parallel
            mode also a batch not divisible by the world size, ranks that see different data, or
            ``compile=True`` (not supported there).
        FloatingPointError: a non-finite loss or gradient, naming the step; the last checkpoint
            (written before that step) stays intact.
    """
    import contextlib

    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if not isinstance(selection_samples, int) or selection_samples < 1:
        raise ValueError(f"selection_samples must be a positive int, got {selection_samples!r}")
    if data_parallel is None:
        data_parallel = distributed.is_active() or distributed.world_size() > 1
    if not isinstance(compile, (bool, str)):
        raise ValueError(f"compile must be a bool or a torch.compile backend name, got {compile!r}")
    if data_parallel and compile:
        raise ValueError(
            "compile=True is not supported in data-parallel mode (the step's collectives would be traced); "
            "pass compile=False, or run the compiled search in a single process"
        )
    if data_parallel == distributed.is_active():
        mode = contextlib.nullcontext()  # already in the requested mode (and group)
    else:
        mode = distributed.data_parallel(enabled=data_parallel)
    with mode:
        return _run_search(cfg, train_loader, valid_loader, epochs=epochs, gen=gen, device=device,
                           progress=progress, compile=compile, on_epoch=on_epoch, checkpoint=checkpoint,
                           checkpoint_every=checkpoint_every, resume=resume, state=state, selection=selection,
                           selection_samples=selection_samples)


SELECTIONS = ("alphas", "perturbation")


def _selection_batches(valid_loader, n: int, device) -> list:
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


def _select(state: SearchState, cfg: SearchConfig, valid_loader, selection: str, n: int, device):
    """The final genotype and, when it had to be replaced to meet a budget, how the first pick missed."""
    from fnas.spaces.cell.genotype import derive_genotype

    if selection == "perturbation":
        from fnas.search.selection import perturbation_scores, select_by_perturbation

        scores = perturbation_scores(state.weights, state.alphas, state.stats,
                                     _selection_batches(valid_loader, n, device), cfg=cfg)
        first = select_by_perturbation(scores, cfg)
    else:
        scores, first = None, derive_genotype(state.alphas, cfg.space)
    misses = over_budget(first, cfg)
    if not misses:
        return first, []
    return cost.derive_within_budget(state.alphas, cfg, scores=scores), misses


def _run_search(cfg, train_loader, valid_loader, *, epochs, gen, device, progress, compile, on_epoch, checkpoint,
                checkpoint_every, resume, state, selection, selection_samples) -> SearchResult:
    """The body of :func:`run_search`, in the data-parallel mode it has set."""
    import dataclasses

    from fnas.spaces.cell.genotype import derive_genotype, genotype_to_dict
    from fnas.spaces.cell.network import NetworkCnn
    from fnas.core.io import atomic_torch_save

    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if not isinstance(checkpoint_every, int) or checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be an int >= 0, got {checkpoint_every!r}")
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError("The training loader is empty; give it at least one batch")
    first_train = next(iter(train_loader))
    check_batch(first_train, cfg, what="training")
    first_valid = next(iter(valid_loader))
    check_batch(first_valid, cfg, what="validation")
    dp = distributed.is_active()
    lead = distributed.active_rank() == 0  # writes checkpoints, shows progress, calls on_epoch
    if dp:
        for batch, what in ((first_train, "training"), (first_valid, "validation")):
            distributed.shard(batch, what=what)  # a batch size not divisible by the world size fails now
            if not distributed.same_on_all_ranks(*batch):
                raise ValueError(
                    f"The ranks see different first {what} batches; in data-parallel mode every rank must "
                    "iterate the same loaders in the same order (same data, same shuffling seed): "
                    "run_search splits each global batch over the ranks itself"
                )
    cfg = cfg.replace(total_steps=epochs * steps_per_epoch)
    if cfg.penalty_metrics:
        # an unreachable budget fails now, naming the minimum, not after hours of search
        cost.check_budget(cfg, cfg.max_params, cfg.max_macs, cfg.max_sram_bytes)
    cfg_record = dataclasses.asdict(cfg)
    space = cfg.space
    train_pos, valid_pos = _Position(train_loader), _Position(valid_loader)
    history: list = []
    alpha_history: list = []
    start_epoch, skip, sums, counts = 0, 0, {}, {}
    if resume is not None:
        saved = load_checkpoint(resume)
        # the space and the schedule's length must match; optimiser settings may change (e.g. a
        # lower lr after a divergence)
        diff = [k for k in ("space", "total_steps") if saved["cfg"].get(k) != cfg_record[k]]
        if diff:
            raise ValueError(f"Checkpoint {str(resume)!r} was written for a different search space or schedule "
                             f"(fields {diff}); resume with the run's own space, data and epochs")
        state = state_from_dict(saved["state"])
        gen.set_state(saved["gen"])
        start_epoch, skip = saved["epoch"], saved["batch"]
        history, alpha_history = saved["history"], saved["alpha_history"]
        sums, counts = saved["sums"], saved["counts"]
        valid_pos.restore(saved["valid_pos"])
    elif state is None:
        state = init_search(cfg, gen)
    state = tree.map(lambda t: t.to(device), state)
    if dp:  # every rank starts from rank 0's state (as DDP does); they stay equal step by step
        state = distributed.broadcast_tree(state)
    if compile:
        step_fn = compile_search_step(cfg, backend="inductor" if compile is True else compile)
    else:
        step_fn = search_step

    def save(epoch: int, batch: int) -> None:
        if checkpoint is None or not lead:
            return
        atomic_torch_save(checkpoint, {
            "format": CHECKPOINT_FORMAT,
            "cfg": cfg_record,
            "state": tree.map(lambda t: t.detach().cpu(), state_to_dict(state)),
            "epoch": epoch,
            "batch": batch,
            "train_pos": train_pos.save(),
            "valid_pos": valid_pos.save(),
            "gen": gen.get_state(),
            "history": history,
            "alpha_history": alpha_history,
            "sums": sums,
            "counts": counts,
        })

    if resume is None:
        save(0, 0)  # resumable from the very start
    for epoch in range(start_epoch, epochs):
        resuming_mid_epoch = resume is not None and epoch == start_epoch and skip > 0
        if resume is not None and epoch == start_epoch:
            train_pos.restore(saved["train_pos"])
        if not resuming_mid_epoch:
            train_pos.begin()
            sums, counts = {}, {}
        bar = _progress(steps_per_epoch, epoch, epochs, progress and lead, initial=train_pos.taken)
        for i in range(train_pos.taken, steps_per_epoch):
            x, y = train_pos.take()
            vx, vy = valid_pos.cycle()
            train_batch, valid_batch = (x.to(device), y.to(device)), (vx.to(device), vy.to(device))
            if dp:
                train_batch = distributed.shard(train_batch, what="training")
                valid_batch = distributed.shard(valid_batch, what="validation")
            if int(state.step) < cfg.warmup_steps:
                new_state, metrics = weight_step(state, train_batch, cfg=cfg)
            elif compile:
                new_state, metrics = step_fn(state, train_batch, valid_batch)
            else:
                new_state, metrics = step_fn(state, train_batch, valid_batch, cfg=cfg)
            if dp:  # the global batch's values, the same on every rank
                metrics = distributed.mean_metrics(metrics)
            values = {k: float(v) for k, v in metrics.items()}
            if not all(map(_finite, values.values())):
                bad = {k: v for k, v in values.items() if not _finite(v)}
                raise FloatingPointError(
                    f"Non-finite values at step {int(state.step)} (epoch {epoch}, batch {i}): {bad}; "
                    "lower lr or arch_lr, or raise grad_clip, and resume from the last checkpoint"
                )
            state = new_state
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            if bar is not None:
                bar.update(1)
                live = {k: sums[k] / counts[k] for k in sums}
                postfix = {"loss": f"{live['train_loss']:.3f}", "acc": f"{live['train_acc']:.3f}"}
                if "valid_acc" in live:
                    postfix["vacc"] = f"{live['valid_acc']:.3f}"
                for metric in cfg.penalty_metrics:
                    if f"expected_{metric}" in values:
                        postfix[metric] = f"{values[f'expected_{metric}']:.3g}"
                bar.set_postfix(postfix, refresh=False)
            if checkpoint_every and int(state.step) % checkpoint_every == 0 and i + 1 < steps_per_epoch:
                save(epoch, i + 1)
        if bar is not None:
            bar.close()
        record = {k: v / counts[k] for k, v in sums.items()}
        genotype = derive_genotype(state.alphas, space)
        record.update(epoch=epoch, step=int(state.step), genotype=genotype_to_dict(genotype))
        history.append(record)
        alpha_history.append({k: torch.softmax(a.detach().cpu(), -1) for k, a in state.alphas.items()})
        sums, counts = {}, {}
        if on_epoch is not None and lead:  # before the checkpoint: a crash in between repeats a log line, loses none
            on_epoch(epoch, state, record)
        save(epoch + 1, 0)

    genotype, first_misses = _select(state, cfg, valid_loader, selection, selection_samples, device)
    budget_misses = over_budget(genotype, cfg)
    if first_misses and selection == "alphas":
        # the hard guarantee: the strongest genotype (by the alphas) whose exact cost fits
        warnings.warn(
            f"The searched argmax genotype missed its budget ({'; '.join(first_misses)}); using the "
            "strongest genotype within budget instead (fnas.cost.derive_within_budget)",
            stacklevel=2,
        )
    model = NetworkCnn(
        space.C,
        space.num_classes,
        space.layers,
        genotype,
        space.in_channels,
        space.with_input_batchnorm,
        space.nodes,
        space.multiplier,
        space.stem_multiplier,
        gen=gen,
        kx1=space.is_1d,
    )
    return SearchResult(genotype, alpha_history, history, state, model, budget_misses)


def over_budget(genotype, cfg: SearchConfig) -> list[str]:
    """How the genotype's exact cost exceeds each budget, e.g. ``"params 5,210 > 5,000 (+4.2%)"``."""
    exact = cost.genotype_cost(genotype, cfg)
    actual = {"params": exact.params, "macs": exact.macs, "sram": exact.peak_sram_bytes_int8}
    return [
        f"{metric} {actual[metric]:,} > {int(budget):,} (+{100 * (actual[metric] / budget - 1):.1f}%)"
        for metric, budget in cfg.budgets.items()
        if budget is not None and actual[metric] > budget
    ]


def _finite(v: float) -> bool:
    return v == v and v not in (float("inf"), float("-inf"))


def _progress(total: int, epoch: int, epochs: int, enabled: bool, *, initial: int = 0):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"search {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)


# --- many searches at once ------------------------------------------------------------------


def stack_states(states: list[SearchState]) -> SearchState:
    """Stack independent search states (e.g. different seeds) along a new leading axis."""
    if not states:
        raise ValueError("stack_states needs at least one state")
    return tree.map(lambda *leaves: torch.stack(leaves), *states)


def unstack_state(stacked: SearchState, index: int) -> SearchState:
    """The ``index``-th search of a stacked state."""
    return tree.map(lambda leaf: leaf[index], stacked)


def vmapped_search_step(cfg: SearchConfig, *, shared_data: bool = True):
    """``search_step`` over a stacked batch of states in one call, with ``torch.func.vmap``.

    Args:
        cfg: the static config all searches share.
        shared_data: every search sees the same ``(train_batch, valid_batch)``; False: the batches
            are stacked too (leading axis = search).

    Returns:
        ``step(stacked_state, train_batch, valid_batch) -> (stacked_state, stacked_metrics)``,
        equal to running the searches one by one (tested). Useful for seed studies and for
        filling a GPU with tiny networks.
    """
    import functools

    data_dims = None if shared_data else 0
    return torch.func.vmap(functools.partial(search_step, cfg=cfg), in_dims=(0, data_dims, data_dims))
