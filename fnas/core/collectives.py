"""Data-parallel search over ``torch.distributed``: differentiable all-reduces, gradient sync, sync BN.

Every rank holds the same search state and takes its own shard (``B / W`` samples) of every global
batch of ``B``. Inside :func:`data_parallel` (``run_search`` enters it by itself when a process
group of more than one rank is initialised, e.g. under ``torchrun``):

- :func:`sync_grads` (applied by ``fnas.search.loop.supernet_loss`` to the weights and the alphas) is the
  identity forward and all-reduces (means) the cotangent backward, so every gradient of the local
  shard's mean loss is the gradient of the global batch's mean loss, on every rank;
- ``fnas.core.layers.batch_norm`` normalises with the statistics of the *global* batch (synchronised
  BatchNorm) and updates the running statistics with them, so ``W`` ranks compute exactly the
  function one process computes on the whole batch (up to float rounding).

The reduction happens *inside* the differentiated functions, as differentiable operations
(``torch.autograd.Function`` with ``backward`` and ``jvp`` written with ``.apply`` again), not after
the backward pass as in DDP's bucketed gradient all-reduce. That is what the architecture
gradients need: the exact hypergradient differentiates through the virtual step
``w' = w - xi * (m * buf + dL_train/dw + wd * w)``, whose inner gradient must already be the global
one, and its mixed second-order term (forward-over-reverse ``torch.func.jvp`` or nested
``torch.func.grad``) must see the global cotangents. An all-reduce is linear and, across ranks,
self-adjoint (the map ``x_r -> sum_q x_q`` on every rank ``r`` is its own transpose), so its
backward and its tangent rule are the same all-reduce; every level of nesting therefore composes
into the derivative of the global objective.

Whether data parallelism is on is a static, per-process setting (a module global toggled by
:func:`data_parallel`), like ``torch.backends`` flags: the step functions stay pure functions of
their inputs, and a single process (no process group, or outside the context) runs exactly the
code it ran before. ``torch.compile`` and ``torch.func.vmap`` are not supported in data-parallel
mode (collectives inside the traced step).

References:
    Li et al. PyTorch Distributed: Experiences on Accelerating Data Parallel Training. VLDB 2020
    (gradient all-reduce, broadcasting the initial state from rank 0).
    Ioffe, Szegedy. Batch Normalization: Accelerating Deep Network Training by Reducing Internal
    Covariate Shift. ICML 2015.
    Chan, Golub, LeVeque. Updating Formulae and a Pairwise Algorithm for Computing Sample
    Variances. 1979 (combining per-shard means and variances).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from fnas.core import tree

Tensor = torch.Tensor

_ACTIVE = False  # inside data_parallel(): the step functions all-reduce
_GROUP = None  # the process group data_parallel() was entered with (None: the default group)


def _dist():
    import torch.distributed as dist

    return dist


def is_initialized() -> bool:
    """True when ``torch.distributed`` is available and a default process group exists."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized()


def world_size(group=None) -> int:
    """Ranks in ``group`` (the default group when None); 1 without a process group."""
    return _dist().get_world_size(group) if is_initialized() else 1


def rank(group=None) -> int:
    """This process's rank in ``group``; 0 without a process group."""
    return _dist().get_rank(group) if is_initialized() else 0


def is_active() -> bool:
    """True inside :func:`data_parallel`: losses sync gradients and BatchNorm syncs statistics."""
    return _ACTIVE


def active_world_size() -> int:
    """The world size of the active data-parallel group (1 when data parallelism is off)."""
    return world_size(_GROUP) if _ACTIVE else 1


def active_rank() -> int:
    """This process's rank in the active data-parallel group (0 when data parallelism is off)."""
    return rank(_GROUP) if _ACTIVE else 0


@contextlib.contextmanager
def data_parallel(group=None, *, enabled: bool = True) -> Iterator[None]:
    """Turn data-parallel mode on for the block (nesting is allowed; the previous mode comes back).

    Args:
        group: the process group to reduce over (default: the default group).
        enabled: False runs the block in single-process mode (e.g. independent searches per rank).

    Raises:
        ValueError: ``enabled`` without an initialised process group.
    """
    global _ACTIVE, _GROUP
    if enabled and not is_initialized():
        raise ValueError(
            "data_parallel() needs an initialised torch.distributed process group; call "
            "torch.distributed.init_process_group first (torchrun sets up its environment)"
        )
    before = (_ACTIVE, _GROUP)
    _ACTIVE, _GROUP = bool(enabled), group if enabled else None
    try:
        yield
    finally:
        _ACTIVE, _GROUP = before


# --- differentiable collectives ----------------------------------------------------------------


def _all_reduce_sum(x: Tensor) -> Tensor:
    y = x.clone(memory_format=torch.contiguous_format)  # collectives need dense, contiguous buffers
    _dist().all_reduce(y, op=_dist().ReduceOp.SUM, group=_GROUP)
    return y


class AllReduceSum(torch.autograd.Function):
    """``sum_q x_q`` over the ranks, on every rank; differentiable to any order, forward and reverse.

    The map is linear and self-adjoint across ranks, so ``backward`` and ``jvp`` are the same
    all-reduce (written with ``.apply``: double backward and forward-over-reverse sync too).
    """

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return _all_reduce_sum(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return AllReduceSum.apply(grad)

    @staticmethod
    def jvp(ctx, tangent: Tensor) -> Tensor:
        return AllReduceSum.apply(tangent)


def _mean_over_ranks(x: Tensor) -> Tensor:
    """``mean_q x_q`` over the ranks, differentiable to any order (:class:`AllReduceSum` scaled)."""
    return AllReduceSum.apply(x) / world_size(_GROUP)


class SyncGrad(torch.autograd.Function):
    """Identity on any number of tensors; backward all-reduces (means) their cotangents at once.

    One flat all-reduce per backward pass, whatever the number of leaves (DDP buckets gradients
    for the same reason, Li et al. 2020). The tangent rule is the identity.
    """

    @staticmethod
    def forward(*xs: Tensor) -> tuple[Tensor, ...]:
        return tuple(x.clone() for x in xs)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, *grads: Tensor) -> tuple[Tensor, ...]:
        flat = _mean_over_ranks(torch.cat([g.reshape(-1) for g in grads]))
        parts = flat.split([g.numel() for g in grads])
        return tuple(p.reshape(g.shape).to(g.dtype) for p, g in zip(parts, grads))

    @staticmethod
    def jvp(ctx, *tangents: Tensor) -> tuple[Tensor, ...]:
        return tuple(t.clone() for t in tangents)


def all_reduce_sum(x: Tensor) -> Tensor:
    """Differentiable sum over the active group's ranks (the identity when data parallelism is off)."""
    return AllReduceSum.apply(x) if _ACTIVE else x


def all_reduce_mean(x: Tensor) -> Tensor:
    """Differentiable mean over the active group's ranks (the identity when data parallelism is off)."""
    return _mean_over_ranks(x) if _ACTIVE else x


def all_gather(x: Tensor) -> Tensor:
    """Differentiable ``(W, *x.shape)`` stack of every rank's ``x``, in rank order, on every rank.

    Built on :class:`AllReduceSum` (each rank fills its own slot of a zero tensor), so it inherits
    its backward (the cotangent's all-reduce, sliced at this rank) and its tangent rule.
    """
    if not _ACTIVE:
        return x[None]
    r, w = active_rank(), active_world_size()
    zeros = x.new_zeros((1, *x.shape))
    return AllReduceSum.apply(torch.cat([zeros.expand(r, *x.shape), x[None], zeros.expand(w - r - 1, *x.shape)]))


def sync_grads(params: Any) -> Any:
    """``params`` unchanged in value, but every gradient taken through the result is the mean over ranks.

    Applied to the weights and the alphas before a loss on the local shard, it makes
    ``grad(loss)`` the gradient of the global batch's loss (shards of equal size), at every level
    of nested ``torch.func`` differentiation. The identity when data parallelism is off.

    Args:
        params: a pytree of tensors.

    Returns:
        A pytree of the same structure and values.
    """
    if not _ACTIVE:
        return params
    leaves = tree.leaves(params)
    if not leaves:
        return params
    synced = iter(SyncGrad.apply(*leaves))
    return tree.map(lambda _: next(synced), params)


# --- helpers for the loop (no gradients) -------------------------------------------------------


def _comm_device(t: Tensor) -> torch.device:
    """Where a collective on ``t`` must run: the current CUDA device for NCCL, else ``t``'s device."""
    if _dist().get_backend(_GROUP) == "nccl" and t.device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return t.device


def mean_metrics(metrics: dict[str, Tensor]) -> dict[str, Tensor]:
    """Every 0-d metric averaged over the active group's ranks in one all-reduce (float64).

    Metrics of the local shard (losses, accuracies) become the global batch's (equal shards); the
    ones that are already global (lr, gradient norms, costs) keep their value. All ranks then agree,
    so a non-finite value stops every rank at the same step.
    """
    if not _ACTIVE or not metrics:
        return metrics
    keys = list(metrics)
    flat = torch.stack([metrics[k].detach().reshape(()).to(torch.float64) for k in keys])
    device = flat.device
    flat = flat.to(_comm_device(flat))
    _dist().all_reduce(flat, op=_dist().ReduceOp.SUM, group=_GROUP)
    flat = (flat / world_size(_GROUP)).to(device)
    return {k: flat[i] for i, k in enumerate(keys)}


def broadcast_tree(params: Any, src: int = 0) -> Any:
    """Copies of the leaves of ``params`` as held by rank ``src`` (DDP's start: every rank starts equal)."""
    if not _ACTIVE:
        return params

    def bcast(t: Tensor) -> Tensor:
        buf = t.detach().to(_comm_device(t)).clone(memory_format=torch.contiguous_format)
        _dist().broadcast(buf, src=_dist().get_global_rank(_GROUP, src) if _GROUP is not None else src, group=_GROUP)
        return buf.to(t.device)

    return tree.map(bcast, params)


def same_on_all_ranks(*tensors: Tensor) -> bool:
    """True when every rank holds the same values in the same order (min and max of float64 checksums agree)."""
    if not _ACTIVE:
        return True
    flat = [t.detach().reshape(-1).to(torch.float64) for t in tensors]
    # plain and position-weighted sums: a different order of the same samples differs too
    sums = torch.stack([f.sum() for f in flat] + [(f * torch.arange(1, f.numel() + 1, dtype=f.dtype,
                                                                      device=f.device)).sum() for f in flat])
    sums = sums.to(_comm_device(sums))
    lo, hi = sums.clone(), sums.clone()
    _dist().all_reduce(lo, op=_dist().ReduceOp.MIN, group=_GROUP)
    _dist().all_reduce(hi, op=_dist().ReduceOp.MAX, group=_GROUP)
    return bool(torch.equal(lo, hi))


def shard(batch: Any, *, what: str = "global") -> Any:
    """This rank's contiguous slice ``[r * B / W, (r + 1) * B / W)`` of every tensor of ``batch``.

    Raises:
        ValueError: ``B`` is not divisible by the world size.
    """
    if not _ACTIVE:
        return batch
    w, r = active_world_size(), active_rank()
    n = tree.leaves(batch)[0].shape[0]
    if n % w:
        lower, upper = (n // w) * w, (n // w + 1) * w
        raise ValueError(
            f"A {what} batch of {n} samples does not split evenly over the {w} data-parallel processes; "
            f"use a batch size divisible by {w} (e.g. {lower or upper} or {upper}) and drop incomplete "
            "last batches (drop_last=True)"
        )
    m = n // w
    return tree.map(lambda t: t[r * m : (r + 1) * m], batch)


__all__ = [
    "AllReduceSum",
    "SyncGrad",
    "active_rank",
    "active_world_size",
    "all_gather",
    "all_reduce_mean",
    "all_reduce_sum",
    "broadcast_tree",
    "data_parallel",
    "is_active",
    "is_initialized",
    "mean_metrics",
    "rank",
    "same_on_all_ranks",
    "shard",
    "sync_grads",
    "world_size",
]
