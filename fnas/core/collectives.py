"""Data-parallel search over ``torch.distributed``: differentiable all-reduces, gradient sync, sync BN.

Every rank holds the same search state and takes its own shard (``B / W`` samples) of every global
batch of ``B``. A :class:`Sync` (``run_search`` builds one by itself when a process group of more
than one rank is initialised, e.g. under ``torchrun``) is passed explicitly to the step and on to
the layers:

- :meth:`Sync.sync_grads` (applied by ``fnas.search.step.supernet_loss`` to the weights and the
  alphas) is the identity forward and all-reduces (means) the cotangent backward, so every gradient
  of the local shard's mean loss is the gradient of the global batch's mean loss, on every rank;
- ``fnas.core.layers.batch_norm(..., sync=sync)`` normalises with the statistics of the *global*
  batch (:meth:`Sync.batch_norm`) and updates the running statistics with them, so ``W`` ranks
  compute exactly the function one process computes on the whole batch (up to float rounding).

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

Whether data parallelism is on is decided by the caller, never by a global: ``sync=None`` (the
default everywhere) runs exactly the single-process code, so the step functions stay pure
functions of their inputs. ``torch.compile`` and ``torch.func.vmap`` are not supported in data-parallel
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

from dataclasses import dataclass
from typing import Any

import torch

from fnas.core import tree
from fnas.core.layers import BN_EPS, BN_MOMENTUM

Tensor = torch.Tensor



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


# --- differentiable collectives ----------------------------------------------------------------


def _all_reduce_sum(x: Tensor, group) -> Tensor:
    y = x.clone(memory_format=torch.contiguous_format)  # collectives need dense, contiguous buffers
    _dist().all_reduce(y, op=_dist().ReduceOp.SUM, group=group)
    return y


class AllReduceSum(torch.autograd.Function):
    """``sum_q x_q`` over the ranks of ``group``, on every rank; differentiable to any order, forward and reverse.

    ``AllReduceSum.apply(x, group)``. The map is linear and self-adjoint across ranks, so
    ``backward`` and ``jvp`` are the same all-reduce (written with ``.apply``: double backward and
    forward-over-reverse sync too).
    """

    @staticmethod
    def forward(x: Tensor, group) -> Tensor:
        return _all_reduce_sum(x, group)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.group = inputs[1]

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return AllReduceSum.apply(grad, ctx.group), None

    @staticmethod
    def jvp(ctx, tangent: Tensor, _group_tangent) -> Tensor:
        return AllReduceSum.apply(tangent, ctx.group)


class SyncGrad(torch.autograd.Function):
    """Identity on any number of tensors; backward all-reduces (means) their cotangents at once.

    ``SyncGrad.apply(group, *tensors)``. One flat all-reduce per backward pass, whatever the number
    of leaves (DDP buckets gradients for the same reason, Li et al. 2020). The tangent rule is the
    identity.
    """

    @staticmethod
    def forward(group, *xs: Tensor) -> tuple[Tensor, ...]:
        return tuple(x.clone() for x in xs)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.group = inputs[0]

    @staticmethod
    def backward(ctx, *grads: Tensor) -> tuple:
        flat = AllReduceSum.apply(torch.cat([g.reshape(-1) for g in grads]), ctx.group) / world_size(ctx.group)
        parts = flat.split([g.numel() for g in grads])
        return (None, *(p.reshape(g.shape).to(g.dtype) for p, g in zip(parts, grads)))

    @staticmethod
    def jvp(ctx, _group_tangent, *tangents: Tensor) -> tuple[Tensor, ...]:
        return tuple(t.clone() for t in tangents)


@dataclass(frozen=True)
class Sync:
    """Data-parallel synchronisation over one ``torch.distributed`` process group, passed explicitly.

    The search hands it to ``search_step(..., sync=sync)``, which hands it on to the loss and every
    BatchNorm (``fnas.core.layers.batch_norm(..., sync=sync)``); ``None`` there means a single
    process. It holds no state besides the group, so it is as static as a config.

    Args:
        group: the process group to reduce over (None: the default group).

    Raises:
        ValueError: no initialised process group.
    """

    group: Any = None

    def __post_init__(self) -> None:
        if not is_initialized():
            raise ValueError(
                "Sync() needs an initialised torch.distributed process group; call "
                "torch.distributed.init_process_group first (torchrun sets up its environment)"
            )

    @property
    def world_size(self) -> int:
        """Ranks in the group."""
        return world_size(self.group)

    @property
    def rank(self) -> int:
        """This process's rank in the group."""
        return rank(self.group)

    # --- differentiable (used inside the step) ----------------------------------------------

    def all_reduce_sum(self, x: Tensor) -> Tensor:
        """Differentiable sum over the ranks."""
        return AllReduceSum.apply(x, self.group)

    def all_reduce_mean(self, x: Tensor) -> Tensor:
        """Differentiable mean over the ranks."""
        return AllReduceSum.apply(x, self.group) / self.world_size

    def all_gather(self, x: Tensor) -> Tensor:
        """Differentiable ``(W, *x.shape)`` stack of every rank's ``x``, in rank order, on every rank.

        Built on :class:`AllReduceSum` (each rank fills its own slot of a zero tensor), so it inherits
        its backward (the cotangent's all-reduce, sliced at this rank) and its tangent rule.
        """
        r, w = self.rank, self.world_size
        zeros = x.new_zeros((1, *x.shape))
        slots = torch.cat([zeros.expand(r, *x.shape), x[None], zeros.expand(w - r - 1, *x.shape)])
        return AllReduceSum.apply(slots, self.group)

    def sync_grads(self, params: Any) -> Any:
        """``params`` unchanged in value, but every gradient taken through the result is the mean over ranks.

        Applied to the weights and the alphas before a loss on the local shard, it makes
        ``grad(loss)`` the gradient of the global batch's loss (shards of equal size), at every level
        of nested ``torch.func`` differentiation.
        """
        leaves = tree.leaves(params)
        if not leaves:
            return params
        synced = iter(SyncGrad.apply(self.group, *leaves))
        return tree.map(lambda _: next(synced), params)

    def batch_norm(
        self, x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Training-mode batch norm with the statistics of the batch of every rank (synchronised BN).

        Each rank computes its shard's per-channel count, mean and biased variance (over every axis
        but 1), one differentiable :meth:`all_gather` shares them, and every rank combines them in
        rank order with Chan et al.'s pairwise formula (no ``E[x^2] - E[x]^2`` cancellation): the
        global batch's mean and biased variance, identical on every rank. The normalisation is plain
        tensor arithmetic, so gradients (of any order, forward or reverse) flow through the global
        statistics to every rank's inputs, as in a single process on the whole batch. The running
        statistics are updated as ``F.batch_norm`` does (momentum ``BN_MOMENTUM``, unbiased
        variance). With one rank it equals ``F.batch_norm`` in training mode (tested in float64).

        Returns:
            ``(y, new_running_mean, new_running_var)``.

        Raises:
            ValueError: a single value per channel over all ranks (the variance is undefined).
        """
        dims = [0, *range(2, x.ndim)]
        count = x.numel() // x.shape[1]
        if count * self.world_size <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
        local_var, local_mean = torch.var_mean(x, dim=dims, unbiased=False)
        stats = self.all_gather(torch.stack([torch.full_like(local_mean, count), local_mean, local_var]))  # (W, 3, C)
        n, means, variances = stats.unbind(1)
        total = n.sum(0)
        batch_mean = (n * means).sum(0) / total
        m2 = (n * variances).sum(0) + (n * (means - batch_mean) ** 2).sum(0)
        batch_var = m2 / total
        shape = (1, -1, *([1] * (x.ndim - 2)))
        scale = torch.rsqrt(batch_var + BN_EPS)
        if weight is not None:
            scale = scale * weight
        y = (x - batch_mean.reshape(shape)) * scale.reshape(shape)
        if bias is not None:
            y = y + bias.reshape(shape)
        unbiased = (m2 / (total - 1)).detach()
        new_mean = BN_MOMENTUM * batch_mean.detach() + (1 - BN_MOMENTUM) * mean
        new_var = BN_MOMENTUM * unbiased + (1 - BN_MOMENTUM) * var
        return y, new_mean, new_var

    # --- for the loop (no gradients) ----------------------------------------------------------

    def _comm_device(self, t: Tensor) -> torch.device:
        """Where a collective on ``t`` must run: the current CUDA device for NCCL, else ``t``'s device."""
        if _dist().get_backend(self.group) == "nccl" and t.device.type != "cuda":
            return torch.device("cuda", torch.cuda.current_device())
        return t.device

    def mean_metrics(self, metrics: dict[str, Tensor]) -> dict[str, Tensor]:
        """Every 0-d metric averaged over the ranks in one all-reduce (float64).

        Metrics of the local shard (losses, accuracies) become the global batch's (equal shards);
        the ones that are already global (lr, gradient norms, costs) keep their value. All ranks
        then agree, so a non-finite value stops every rank at the same step.
        """
        if not metrics:
            return metrics
        keys = list(metrics)
        flat = torch.stack([metrics[k].detach().reshape(()).to(torch.float64) for k in keys])
        device = flat.device
        flat = flat.to(self._comm_device(flat))
        _dist().all_reduce(flat, op=_dist().ReduceOp.SUM, group=self.group)
        flat = (flat / self.world_size).to(device)
        return {k: flat[i] for i, k in enumerate(keys)}

    def sum_over_ranks(self, x: Tensor) -> Tensor:
        """``sum_q x_q`` over the ranks, on every rank, outside any differentiation (on ``x``'s device).

        Used to share work split over the ranks: each rank fills its own entries and leaves zeros
        elsewhere, so every rank receives every entry exactly (adding zeros rounds nothing).
        """
        device = x.device
        buf = x.detach().to(self._comm_device(x)).clone(memory_format=torch.contiguous_format)
        _dist().all_reduce(buf, op=_dist().ReduceOp.SUM, group=self.group)
        return buf.to(device)

    def broadcast_tree(self, params: Any, src: int = 0) -> Any:
        """Copies of the leaves of ``params`` as held by rank ``src`` (DDP's start: every rank starts equal)."""
        dist = _dist()
        global_src = dist.get_global_rank(self.group, src) if self.group is not None else src

        def bcast(t: Tensor) -> Tensor:
            buf = t.detach().to(self._comm_device(t)).clone(memory_format=torch.contiguous_format)
            dist.broadcast(buf, src=global_src, group=self.group)
            return buf.to(t.device)

        return tree.map(bcast, params)

    def same_on_all_ranks(self, *tensors: Tensor) -> bool:
        """True when every rank holds the same values in the same order (min and max of float64 checksums agree)."""
        flat = [t.detach().reshape(-1).to(torch.float64) for t in tensors]
        # plain and position-weighted sums: a different order of the same samples differs too
        positions = [torch.arange(1, f.numel() + 1, dtype=f.dtype, device=f.device) for f in flat]
        sums = torch.stack([f.sum() for f in flat] + [(f * i).sum() for f, i in zip(flat, positions)])
        sums = sums.to(self._comm_device(sums))
        lo, hi = sums.clone(), sums.clone()
        _dist().all_reduce(lo, op=_dist().ReduceOp.MIN, group=self.group)
        _dist().all_reduce(hi, op=_dist().ReduceOp.MAX, group=self.group)
        return bool(torch.equal(lo, hi))

    def shard(self, batch: Any, *, what: str = "global") -> Any:
        """This rank's contiguous slice ``[r * B / W, (r + 1) * B / W)`` of every tensor of ``batch``.

        Raises:
            ValueError: ``B`` is not divisible by the world size.
        """
        w, r = self.world_size, self.rank
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


def default_sync() -> Sync | None:
    """A :class:`Sync` over the default group when one of more than one rank is initialised (e.g.
    under ``torchrun``), else None (a single process)."""
    return Sync() if is_initialized() and world_size() > 1 else None


__all__ = ["AllReduceSum", "Sync", "SyncGrad", "default_sync", "is_initialized", "rank", "world_size"]
