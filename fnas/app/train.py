"""Building, training and evaluating a fixed network (the found architecture), with a standard recipe.

SGD with Nesterov momentum, cosine learning rate, label smoothing and weight decay: the usual
recipe for small CNNs, kept short so the end-to-end job stays within minutes on a CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fnas.spaces.cell.config import SpaceConfig
from fnas.spaces.chain import ChainSpaceConfig


def build_network(
    space: SpaceConfig | ChainSpaceConfig, genotype: Any, gen: torch.Generator | None = None
) -> nn.Module:
    """The fixed network of ``genotype`` sized by ``space`` (the one place its arguments are spelled).

    Args:
        space: channels, cells, nodes, input and classes of the network (cells), or a chain space.
        genotype: the cells to build (a ``Genotype_CNN``), or a ``ChainGenotype``.
        gen: generator of the initial weights; ``None`` seeds one with 0, so the same call gives
            the same network (what loading a state_dict into it needs).

    Raises:
        ValueError: the genotype does not fit ``space`` (nodes, multiplier, 1D vs 2D ops; a chain's blocks).
    """
    return space.network(genotype, gen=gen or torch.Generator().manual_seed(0))


@dataclass(frozen=True)
class TrainConfig:
    """Recipe for training the final network from scratch."""

    epochs: int = 30
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    grad_clip: float = 5.0
    # recompute BN running statistics over the training data at the end (see recalibrate_bn)
    recalibrate_bn: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"TrainConfig.epochs must be a positive int, got {self.epochs!r}")
        for name in ("lr", "momentum", "weight_decay", "label_smoothing", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.label_smoothing >= 1:
            raise ValueError(f"TrainConfig.label_smoothing must be < 1, got {self.label_smoothing}")


@torch.no_grad()
def evaluate(model: nn.Module, loader, *, device: torch.device | str = "cpu") -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy of ``model`` over ``loader`` (eval mode).

    Returns:
        ``(loss, accuracy)``.
    """
    model.eval()
    total, loss_sum, correct = 0, 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(-1) == y).sum())
        total += y.shape[0]
    if total == 0:
        raise ValueError("Cannot evaluate on an empty loader")
    return loss_sum / total, correct / total


def train_model(
    model: nn.Module,
    train_loader,
    *,
    cfg: TrainConfig = TrainConfig(),
    valid_loader=None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    on_epoch=None,
) -> list[dict]:
    """Train ``model`` in place; returns per-epoch records (loss, accuracy, lr, valid metrics).

    Raises:
        FloatingPointError: a non-finite training loss.
    """
    model.to(device)
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True
    )
    steps = cfg.epochs * len(train_loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps)))
    history = []
    for epoch in range(cfg.epochs):
        model.train()
        total, loss_sum, correct = 0, 0.0, 0
        bar = train_loader
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(train_loader, desc=f"train {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True)
        for x, y in bar:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"Non-finite training loss in epoch {epoch}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            total += y.shape[0]
            loss_sum += loss.item() * y.shape[0]
            correct += int((logits.argmax(-1) == y).sum())
            if progress:
                bar.set_postfix(loss=f"{loss_sum / total:.3f}", acc=f"{correct / total:.3f}")
        record = {"epoch": epoch, "train_loss": loss_sum / total, "train_acc": correct / total,
                  "lr": opt.param_groups[0]["lr"]}
        if valid_loader is not None:
            record["valid_loss"], record["valid_acc"] = evaluate(model, valid_loader, device=device)
        history.append(record)
        if on_epoch is not None:
            on_epoch(epoch, record)
    if cfg.recalibrate_bn:
        recalibrate_bn(model, train_loader, device=device)
    return history


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader, *, device: torch.device | str = "cpu") -> int:
    """Recompute every BatchNorm's running statistics as the plain average over ``loader``.

    During training the running statistics trail the weights (an exponential average with momentum
    0.1 over batches of older weights); after a short training they can be far from the final
    network's, and eval-mode accuracy can collapse (a user saw 0.52 against 1.00 with batch statistics after 3
    epochs). One pass in train mode with ``momentum=None`` (PyTorch's cumulative average) over the
    training data, weights frozen, gives the statistics of the final network.

    Returns:
        The number of BatchNorm layers recalibrated (0: nothing to do).
    """
    kinds = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    norms = [m for m in model.modules() if isinstance(m, kinds) and m.track_running_stats]
    if not norms:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for x, _ in loader:
        model(x.to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    return len(norms)
