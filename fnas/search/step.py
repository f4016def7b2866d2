"""The pure search step: ``supernet_loss``, ``arch_step``, ``weight_step``, ``search_step``, and the alpha regularisers.

``search_step(state, train_batch, valid_batch, *, cfg) -> (state, metrics)`` first updates the
alphas on the validation batch (Adam, with the configured architecture gradient), then the weights
on the training batch (SGD with momentum, weight decay, clipping, cosine lr), as DARTS does. It
never mutates its inputs and returns 0-d tensors as metrics, so it can be compiled, vmapped and
dropped into any loop. ``sync`` (a :class:`fnas.core.collectives.Sync`) makes it data-parallel.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from fnas import cost
from fnas.core import hypergrad
from fnas.core import tree
from fnas.core.collectives import Sync
from fnas.core.optim import clip_by_global_norm, cosine_lr
from fnas.search.config import SearchConfig
from fnas.search.state import SearchState, arch_optimizer, weight_optimizer
from fnas.spaces.base import Space

Tensor = torch.Tensor
Batch = tuple[Tensor, Tensor]


def supernet_loss(
    weights: dict, alphas: dict, stats: dict, batch: Batch, *, cfg: SearchConfig | Space, train: bool = True,
    sync: Sync | None = None,
):
    """Cross-entropy of the supernet on ``batch``.

    With a ``sync`` (data-parallel search) ``batch`` is this rank's shard: the loss is the shard's
    mean, but every gradient taken of it with respect to ``weights`` or ``alphas`` (at any nesting
    depth) is the global batch's (:meth:`fnas.core.collectives.Sync.sync_grads`), and BatchNorm
    uses the global batch's statistics.

    Returns:
        ``(loss, (new_stats, correct))`` where ``correct`` counts right top-1 predictions.
    """
    if sync is not None:
        weights, alphas = sync.sync_grads(weights), sync.sync_grads(alphas)
    x, y = batch
    space = getattr(cfg, "space", cfg)  # a SearchConfig, or the space itself
    logits, new_stats = space.apply(weights, alphas, stats, x, train=train, sync=sync)
    loss = F.cross_entropy(logits, y)
    correct = (logits.argmax(-1) == y).sum()
    return loss, (new_stats, correct)


def current_lr(step: Tensor, cfg: SearchConfig) -> Tensor:
    """The weight learning rate at ``step`` (cosine annealing over ``cfg.total_steps``)."""
    return cosine_lr(step, lr=cfg.lr, lr_min=cfg.lr_min, total_steps=cfg.total_steps)


def arch_step(
    state: SearchState, train_batch: Any, valid_batch: Batch, *, cfg: SearchConfig, sync: Sync | None = None
):
    """Update the alphas only; returns ``(state, metrics)``.

    ``train_batch`` is one batch or, for ``unroll_steps = K > 1``, a list of K batches. The
    virtual step of a second-order hypergradient is the weight optimiser's own update, at the
    current weight learning rate.
    """

    def loss_fn(w, a, batch):
        return supernet_loss(w, a, state.stats, batch, cfg=cfg, sync=sync)

    method = hypergrad.get(cfg.hypergrad)
    g_alpha, (val_loss, (_, val_correct)) = method(
        loss_fn,
        state.weights,
        state.alphas,
        state.w_opt,
        train_batch,
        valid_batch,
        xi=current_lr(state.step, cfg),
        optimizer=weight_optimizer(cfg),
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
    alphas, a_opt = arch_optimizer(cfg).update(g_alpha, state.a_opt, state.alphas, lr=cfg.arch_lr)
    metrics.update(
        valid_loss=val_loss.detach(),
        valid_acc=val_correct / valid_batch[1].shape[0],
        alpha_grad_norm=tree.norm(g_alpha),
    )
    return state._replace(alphas=alphas, a_opt=a_opt), metrics


def weight_step(state: SearchState, train_batch: Any, *, cfg: SearchConfig, sync: Sync | None = None):
    """Update the weights (and BN statistics) only; returns ``(state, metrics)``."""
    batch = hypergrad.as_batches(train_batch, 1)[0]
    lr = current_lr(state.step, cfg)

    def loss_fn(w):
        loss, aux = supernet_loss(w, state.alphas, state.stats, batch, cfg=cfg, sync=sync)
        return loss, (loss, aux)

    g, (loss, (stats, correct)) = torch.func.grad(loss_fn, has_aux=True)(state.weights)
    g, grad_norm = clip_by_global_norm(g, cfg.grad_clip)
    weights, w_opt = weight_optimizer(cfg).update(g, state.w_opt, state.weights, lr=lr)
    metrics = {
        "train_loss": loss.detach(),
        "train_acc": correct / batch[1].shape[0],
        "lr": lr,
        "grad_norm": grad_norm,
    }
    return state._replace(weights=weights, stats=stats, w_opt=w_opt, step=state.step + 1), metrics


def search_step(
    state: SearchState, train_batch: Any, valid_batch: Batch, *, cfg: SearchConfig, sync: Sync | None = None
):
    """One DARTS step: alphas on ``valid_batch``, then weights on ``train_batch``.

    Args:
        state: the current :class:`SearchState` (not modified).
        train_batch: ``(x, y)``; for ``cfg.unroll_steps = K > 1`` optionally a list of K batches
            (the first is also the real weight step's batch).
        valid_batch: ``(x, y)``.
        cfg: the static :class:`SearchConfig`.
        sync: data-parallel synchronisation (the batches are then this rank's shards); None: one process.

    Returns:
        ``(new_state, metrics)``; metrics are 0-d tensors: train/valid loss and accuracy, lr,
        weight-gradient norm before clipping, alpha-gradient norm.
    """
    state, arch_metrics = arch_step(state, train_batch, valid_batch, cfg=cfg, sync=sync)
    state, w_metrics = weight_step(state, train_batch, cfg=cfg, sync=sync)
    return state, {**w_metrics, **arch_metrics}


# --- regularisers of the alphas ------------------------------------------------------------------


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
    kinds = _op_kinds(alphas)
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
    kinds = _op_kinds(alphas)
    weight = beta_schedule(step, cfg)
    grads = {
        k: (weight.to(a.dtype) / (a.shape[0] * len(kinds))) * torch.softmax(a.detach(), dim=-1)
        if k in kinds else torch.zeros_like(a)
        for k, a in alphas.items()
    }
    return grads, (weight.to(alphas[kinds[0]].dtype) * beta_decay({k: a.detach() for k, a in alphas.items()}))


def _op_kinds(alphas: dict) -> list[str]:
    """The keys of the op weights (``normal``, ``reduce``), not PC-DARTS' edge betas."""
    return [k for k in ("normal", "reduce") if k in alphas]
