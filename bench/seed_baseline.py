"""Seed-style stateful DARTS baseline for the fnas benchmarks.

What this models
----------------
A faithful, competently written reimplementation of the classic DARTS search
code (Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search",
ICLR 2019, https://arxiv.org/abs/1806.09055) adapted to 1-D time series in the
way a typical user of the seed spec writes it:

* ``nn.Module`` operations in NCHW layout working on ``(N, C, T, 1)`` tensors
  with ``(k, 1)`` kernels (``conv2d`` / ``max_pool2d`` / ``avg_pool2d``);
* a ``MixedOp`` that evaluates *every* primitive (including ``none``, which,
  as in DARTS, returns ``x.mul(0.)``) and sums ``w * op(x)``;
* architecture parameters ``alphas_normal`` / ``alphas_reduce`` stored as
  ``nn.Parameter`` on the network;
* a ``torch.optim.SGD`` optimiser (momentum, weight decay) on the network
  weights with gradient-norm clipping;
* an ``Architect`` with ``torch.optim.Adam`` on the alphas that performs either
  the first-order step (gradient of the validation loss w.r.t. alpha) or the
  DARTS second-order "unrolled" step: a virtual weight step
  ``w' = w - lr * (momentum * buf + dL_train/dw + wd * w)``, the validation
  loss gradient at ``w'`` and the finite-difference Hessian-vector product

      implicit = (d_alpha L_train(w + R v) - d_alpha L_train(w - R v)) / (2 R),
      v = dL_val/dw',   R = 0.01 / ||v||,
      grad_alpha = d_alpha L_val(w', alpha) - lr * implicit.

Network (matches fnas's supernet): optional affine input BatchNorm, stem
(3x1 conv + affine BN), ``layers`` single-input cells (reduction cells at
``layers//3`` and ``2*layers//3`` double the channels and use stride (2,1) on
the edges leaving the cell input), ReLU-1x1conv-BN(affine=False)
preprocessing, ``nodes`` intermediate nodes with j-major edge order, concat of
the last ``multiplier`` nodes, global average pooling and a linear head.

Implementation notes (what is *not* deliberately slow, and what is faithful):

* The virtual ("unrolled") model is a persistent second network instance
  created once; weights and alphas are copied into it with ``_foreach`` ops
  each step instead of DARTS's per-step ``model.new()`` + ``load_state_dict``.
* Gradients are only accumulated into the leaves that are needed
  (``backward(inputs=...)`` / ``autograd.grad``), e.g. the weight step does
  not accumulate alpha gradients and the first-order architect step does not
  accumulate weight gradients.
* Like DARTS, all forward passes run in train mode (BatchNorm uses batch
  statistics and updates its running statistics on every forward, including
  the extra forwards of the unrolled step), and the perturbed weights of the
  Hessian-vector product are restored arithmetically (``+R, -2R, +R``).
* BatchNorm momentum 0.1 and eps 1e-5 (torch defaults); loss is
  cross-entropy.
* ``Architect.r`` is the DARTS finite-difference constant (0.01).  Because
  d_alpha L_train is only piecewise smooth in w (ReLU / max-pool kinks), the
  DARTS step R = 0.01/||v|| can straddle kinks, so the approximation is only
  accurate to O(R^2) on smooth networks; the smoke test checks the formula
  against exact autograd with a small ``r`` and with the default ``r`` on a
  smoothed copy of the network.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "BaselineConfig",
    "Zero",
    "PoolBN",
    "FactorizedReduceT",
    "ConvBNReLU",
    "OPS",
    "MixedOp",
    "Cell",
    "Network",
    "Architect",
    "BaselineSearch",
    "time_steps",
]


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------


@dataclass
class BaselineConfig:
    C: int = 16
    num_classes: int = 7
    layers: int = 8
    in_channels: int = 6
    input_len: int = 128
    with_input_batchnorm: bool = True
    nodes: int = 4
    multiplier: int = 4
    stem_multiplier: int = 3
    primitives: Tuple[str, ...] = (
        "none",
        "avg_pool_3x1",
        "max_pool_3x1",
        "skip_connect",
        "conv_bn_relu_3x1",
        "conv_bn_relu_5x1",
        "conv_bn_relu_7x1",
    )
    # weight optimiser (SGD)
    lr: float = 0.025
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    # architecture optimiser (Adam)
    arch_lr: float = 3e-4
    arch_betas: Tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3

    @property
    def num_edges(self) -> int:
        return self.nodes * (self.nodes + 1) // 2


# --------------------------------------------------------------------------
# Primitive operations (search variants: BatchNorm affine=False)
# --------------------------------------------------------------------------


class Zero(nn.Module):
    """DARTS ``Zero``: computes ``x.mul(0.)`` (strided along T if needed)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :].mul(0.0)


class PoolBN(nn.Module):
    """(3,1) pooling followed by BatchNorm (DARTS adds BN after pools in MixedOp)."""

    def __init__(self, kind: str, C: int, stride: int):
        super().__init__()
        if kind == "avg":
            self.pool = nn.AvgPool2d(
                (3, 1), stride=(stride, 1), padding=(1, 0), count_include_pad=False
            )
        elif kind == "max":
            self.pool = nn.MaxPool2d((3, 1), stride=(stride, 1), padding=(1, 0))
        else:
            raise ValueError(kind)
        self.bn = nn.BatchNorm2d(C, affine=False)

    def forward(self, x):
        return self.bn(self.pool(x))


class FactorizedReduceT(nn.Module):
    """FactorizedReduce along T only: ReLU, two strided 1x1 convs (the second
    on the input shifted by one time step), channel concat, BatchNorm."""

    def __init__(self, C_in: int, C_out: int):
        super().__init__()
        assert C_out % 2 == 0, "FactorizedReduce needs an even channel count"
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=(2, 1), bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=(2, 1), bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=False)

    def forward(self, x):
        x = self.relu(x)
        shifted = F.pad(x[:, :, 1:, :], (0, 0, 0, 1))
        out = torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1)
        return self.bn(out)


class ConvBNReLU(nn.Sequential):
    """Conv2d((k,1)) -> BatchNorm2d(affine=False) -> ReLU."""

    def __init__(self, C: int, k: int, stride: int):
        super().__init__(
            nn.Conv2d(C, C, (k, 1), stride=(stride, 1), padding=(k // 2, 0), bias=False),
            nn.BatchNorm2d(C, affine=False),
            nn.ReLU(inplace=False),
        )


OPS = {
    "none": lambda C, stride: Zero(stride),
    "avg_pool_3x1": lambda C, stride: PoolBN("avg", C, stride),
    "max_pool_3x1": lambda C, stride: PoolBN("max", C, stride),
    "skip_connect": lambda C, stride: (
        nn.Identity() if stride == 1 else FactorizedReduceT(C, C)
    ),
    "conv_bn_relu_3x1": lambda C, stride: ConvBNReLU(C, 3, stride),
    "conv_bn_relu_5x1": lambda C, stride: ConvBNReLU(C, 5, stride),
    "conv_bn_relu_7x1": lambda C, stride: ConvBNReLU(C, 7, stride),
}


# --------------------------------------------------------------------------
# Supernet
# --------------------------------------------------------------------------


class MixedOp(nn.Module):
    def __init__(self, C: int, stride: int, primitives: Sequence[str]):
        super().__init__()
        self._ops = nn.ModuleList([OPS[p](C, stride) for p in primitives])

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self._ops))


class Cell(nn.Module):
    def __init__(
        self,
        nodes: int,
        multiplier: int,
        C_prev: int,
        C: int,
        reduction: bool,
        primitives: Sequence[str],
    ):
        super().__init__()
        self.reduction = reduction
        self._nodes = nodes
        self._multiplier = multiplier
        self.preprocess = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_prev, C, 1, bias=False),
            nn.BatchNorm2d(C, affine=False),
        )
        self._ops = nn.ModuleList()
        for j in range(1, nodes + 1):
            for i in range(j):
                stride = 2 if (reduction and i == 0) else 1
                self._ops.append(MixedOp(C, stride, primitives))

    def forward(self, s0, weights):
        states = [self.preprocess(s0)]
        offset = 0
        for _ in range(self._nodes):
            s = sum(
                self._ops[offset + i](h, weights[offset + i])
                for i, h in enumerate(states)
            )
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self._multiplier :], dim=1)


class Network(nn.Module):
    """DARTS-style search network on (N, C_in, T, 1) inputs."""

    def __init__(self, cfg: BaselineConfig):
        super().__init__()
        self.cfg = cfg
        C = cfg.C
        self.input_bn = (
            nn.BatchNorm2d(cfg.in_channels) if cfg.with_input_batchnorm else None
        )
        C_curr = cfg.stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(cfg.in_channels, C_curr, (3, 1), padding=(1, 0), bias=False),
            nn.BatchNorm2d(C_curr),
        )
        C_prev, C_curr = C_curr, C
        reduction_idx = {cfg.layers // 3, 2 * cfg.layers // 3}
        self.cells = nn.ModuleList()
        for i in range(cfg.layers):
            reduction = i in reduction_idx
            if reduction:
                C_curr *= 2
            self.cells.append(
                Cell(cfg.nodes, cfg.multiplier, C_prev, C_curr, reduction, cfg.primitives)
            )
            C_prev = cfg.multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, cfg.num_classes)

        k, n_ops = cfg.num_edges, len(cfg.primitives)
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(k, n_ops))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(k, n_ops))

    # -- parameter groups -------------------------------------------------
    def arch_parameters(self) -> List[nn.Parameter]:
        return [self.alphas_normal, self.alphas_reduce]

    def named_weights(self):
        return [
            (n, p) for n, p in self.named_parameters() if not n.startswith("alphas_")
        ]

    def weights(self) -> List[nn.Parameter]:
        return [p for _, p in self.named_weights()]

    def new(self) -> "Network":
        """A second instance with the same structure, device and dtype
        (and a copy of the current alphas), as DARTS's ``Network.new``."""
        p = self.alphas_normal
        m = Network(self.cfg).to(device=p.device, dtype=p.dtype)
        with torch.no_grad():
            for dst, src in zip(m.arch_parameters(), self.arch_parameters()):
                dst.copy_(src)
        return m

    # -- forward ----------------------------------------------------------
    def forward(self, x):
        if self.input_bn is not None:
            x = self.input_bn(x)
        s = self.stem(x)
        w_normal = F.softmax(self.alphas_normal, dim=-1)
        w_reduce = F.softmax(self.alphas_reduce, dim=-1)
        for cell in self.cells:
            s = cell(s, w_reduce if cell.reduction else w_normal)
        out = self.global_pooling(s)
        return self.classifier(out.flatten(1))

    def loss(self, x, y):
        return F.cross_entropy(self(x), y)


# --------------------------------------------------------------------------
# Architect
# --------------------------------------------------------------------------


class Architect:
    """Adam on the alphas; first-order or DARTS unrolled (second-order) step."""

    def __init__(self, model: Network, network_optimizer: torch.optim.SGD, cfg: BaselineConfig):
        self.model = model
        self.network_optimizer = network_optimizer
        self.network_momentum = cfg.momentum
        self.network_weight_decay = cfg.weight_decay
        self.optimizer = torch.optim.Adam(
            model.arch_parameters(),
            lr=cfg.arch_lr,
            betas=cfg.arch_betas,
            weight_decay=cfg.arch_weight_decay,
        )
        # finite-difference step of the Hessian-vector product: R = r / ||v||
        self.r = 1e-2
        # persistent virtual model for the unrolled step (created once)
        self.unrolled_model = model.new()
        self._weights = model.weights()
        self._alphas = model.arch_parameters()
        self._v_weights = self.unrolled_model.weights()
        self._v_alphas = self.unrolled_model.arch_parameters()

    @property
    def eta(self) -> float:
        # follows any lr scheduler attached to the weight optimiser
        return self.network_optimizer.param_groups[0]["lr"]

    def step(self, x_train, y_train, x_valid, y_valid, unrolled: bool):
        self.optimizer.zero_grad()
        if unrolled:
            grads = self.unrolled_grads(x_train, y_train, x_valid, y_valid)[0]
            for a, g in zip(self._alphas, grads):
                a.grad = g
        else:
            self._backward_step(x_valid, y_valid)
        self.optimizer.step()

    # first order ----------------------------------------------------------
    def _backward_step(self, x_valid, y_valid):
        loss = self.model.loss(x_valid, y_valid)
        loss.backward(inputs=self._alphas)

    # second order ---------------------------------------------------------
    def _compute_unrolled_model(self, x_train, y_train, eta: float):
        """Write w' = w - eta * (momentum * buf + dL_train/dw + wd * w) and the
        current alphas into the persistent virtual model."""
        loss = self.model.loss(x_train, y_train)
        dtheta = torch.autograd.grad(loss, self._weights)
        with torch.no_grad():
            step = torch._foreach_add(dtheta, self._weights, alpha=self.network_weight_decay)
            state = self.network_optimizer.state
            bufs = [state[p].get("momentum_buffer") for p in self._weights] if state else []
            if bufs and all(b is not None for b in bufs):
                torch._foreach_add_(step, bufs, alpha=self.network_momentum)
            torch._foreach_copy_(self._v_weights, self._weights)
            torch._foreach_add_(self._v_weights, step, alpha=-eta)
            torch._foreach_copy_(self._v_alphas, self._alphas)
        return self.unrolled_model

    def unrolled_grads(self, x_train, y_train, x_valid, y_valid):
        """DARTS ``_backward_step_unrolled``.

        Returns ``(grad_alpha, dalpha_val, implicit)`` where
        ``grad_alpha = dalpha_val - eta * implicit`` (lists over the two alphas).
        """
        eta = self.eta
        unrolled_model = self._compute_unrolled_model(x_train, y_train, eta)
        unrolled_loss = unrolled_model.loss(x_valid, y_valid)
        n_a = len(self._v_alphas)
        grads = torch.autograd.grad(unrolled_loss, self._v_alphas + self._v_weights)
        dalpha = list(grads[:n_a])
        vector = list(grads[n_a:])
        implicit = self._hessian_vector_product(vector, x_train, y_train)
        grad_alpha = [da - eta * ig for da, ig in zip(dalpha, implicit)]
        return grad_alpha, dalpha, implicit

    def _hessian_vector_product(self, vector, x, y, r: Optional[float] = None):
        """Central finite difference of d_alpha L_train along ``vector``:
        (g(w + R v) - g(w - R v)) / (2 R) with R = r / ||v||."""
        r = self.r if r is None else r
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(vector)))
        R = r / norm.item()
        with torch.no_grad():
            torch._foreach_add_(self._weights, vector, alpha=R)
        grads_p = torch.autograd.grad(self.model.loss(x, y), self._alphas)
        with torch.no_grad():
            torch._foreach_add_(self._weights, vector, alpha=-2.0 * R)
        grads_n = torch.autograd.grad(self.model.loss(x, y), self._alphas)
        with torch.no_grad():
            torch._foreach_add_(self._weights, vector, alpha=R)
        return [(gp - gn).div_(2.0 * R) for gp, gn in zip(grads_p, grads_n)]


# --------------------------------------------------------------------------
# Search driver
# --------------------------------------------------------------------------


class BaselineSearch:
    """Network + SGD weight optimiser + Architect, stepped DARTS style.

    ``step((x_train, y_train), (x_valid, y_valid), unrolled)`` does the
    architect step on the validation batch, then one SGD step on the train
    batch, and returns the train loss as a float.
    """

    def __init__(
        self,
        cfg: Optional[BaselineConfig] = None,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ):
        self.cfg = cfg if cfg is not None else BaselineConfig()
        self.model = Network(self.cfg).to(device=device, dtype=dtype)
        self.model.train()
        self.weights = self.model.weights()
        self.optimizer = torch.optim.SGD(
            self.weights,
            lr=self.cfg.lr,
            momentum=self.cfg.momentum,
            weight_decay=self.cfg.weight_decay,
        )
        self.architect = Architect(self.model, self.optimizer, self.cfg)
        self.architect.unrolled_model.train()

    def step(self, train_batch, valid_batch, unrolled: bool = False) -> float:
        x_train, y_train = train_batch
        x_valid, y_valid = valid_batch
        self.architect.step(x_train, y_train, x_valid, y_valid, unrolled)

        self.optimizer.zero_grad()
        loss = self.model.loss(x_train, y_train)
        loss.backward(inputs=self.weights)
        nn.utils.clip_grad_norm_(self.weights, self.cfg.grad_clip)
        self.optimizer.step()
        return loss.item()


# --------------------------------------------------------------------------
# Timing helper
# --------------------------------------------------------------------------


def time_steps(
    cfg: Optional[BaselineConfig] = None,
    batch: int = 64,
    threads: Optional[int] = 1,
    warmup: int = 1,
    repeats: int = 1,
):
    """Seconds per first-order and per unrolled step (best of ``repeats``)."""
    cfg = cfg if cfg is not None else BaselineConfig()
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        search = BaselineSearch(cfg)

        def batch_():
            return (
                torch.randn(batch, cfg.in_channels, cfg.input_len, 1),
                torch.randint(0, cfg.num_classes, (batch,)),
            )

        tb, vb = batch_(), batch_()
        for _ in range(warmup):
            search.step(tb, vb, unrolled=False)
        out = {}
        for unrolled in (False, True):
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                search.step(tb, vb, unrolled=unrolled)
                best = min(best, time.perf_counter() - t0)
            out["unrolled" if unrolled else "first_order"] = best
        return out
    finally:
        torch.set_num_threads(old_threads)


if __name__ == "__main__":  # pragma: no cover
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()
    res = time_steps(batch=a.batch, threads=a.threads, warmup=a.warmup, repeats=a.repeats)
    print(
        f"seed baseline, {a.threads} thread(s), batch {a.batch}: "
        f"first-order {res['first_order']:.3f} s/step, unrolled {res['unrolled']:.3f} s/step"
    )
