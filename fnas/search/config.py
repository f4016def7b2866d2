"""The search's static configuration: ``SearchConfig`` (space, optimisers, hypergradient, budgets).

Values that change during a run (learning rate, step) are tensors in the search state.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from fnas.cost import parse_mode
from fnas.search.defaults import DEFAULTS as D
from fnas.search.defaults import penalty_weight_for
from fnas.spaces.cell.config import SpaceConfig
from fnas.spaces.chain import ChainSpaceConfig

HYPERGRADS = ("first_order", "exact", "finite_difference")


@dataclass(frozen=True)
class SearchConfig:
    """One search: the space, the optimisers and the architecture-gradient method.

    Defaults come from :data:`fnas.search.defaults.DEFAULTS` (the CLI's too); its comments say
    which differ from DARTS (Liu et al. 2019) and why.
    """

    space: SpaceConfig | ChainSpaceConfig = field(default_factory=SpaceConfig)
    lr: float = D["lr"]  # weight SGD, cosine-annealed to lr_min over total_steps
    lr_min: float = D["lr_min"]
    momentum: float = D["momentum"]
    weight_decay: float = D["weight_decay"]
    grad_clip: float = D["grad_clip"]
    arch_lr: float = D["arch_lr"]  # Adam on alphas
    arch_betas: tuple[float, float] = D["arch_betas"]
    arch_weight_decay: float = D["arch_weight_decay"]
    hypergrad: Literal["first_order", "exact", "finite_difference"] = D["hypergrad"]
    unroll_steps: int = D["unroll_steps"]  # exact only: differentiate through K virtual weight steps
    total_steps: int = 1000  # length of the cosine schedule (the search loop sets it)
    warmup_steps: int = 0  # alphas stay fixed for the first warmup_steps steps
    # Resource-aware search (the seed's nas_optimization_mode): 'Memory' (parameters), 'Compute'
    # (MACs), 'SRAM' (peak activation bytes, int8) or a combination like 'Memory+Compute'.
    penalty_mode: str | tuple[str, ...] | None = None
    # With a budget, weight 1 makes the penalty worth one cross-entropy when the derived genotype
    # is exactly at its budget, and 0 while it is under 90% of it (see fnas.cost.penalty for the tuning).
    penalty_weight: float | None = None  # None: the space's default (defaults.penalty_weight_for)
    max_params: int | None = None  # budgets; a budget without penalty_mode turns its mode on
    max_macs: int | None = None
    max_sram_bytes: int | None = None
    # beta-DARTS (Ye et al. 2022): weight of the beta-decay regulariser on the alphas, raised
    # linearly from 0 to beta_weight over total_steps; 0 turns it off. The reference code ramps it
    # as 50 * epoch / 100 in the DARTS space.
    beta_weight: float = D["beta_weight"]

    def __post_init__(self) -> None:
        if not isinstance(self.space, (SpaceConfig, ChainSpaceConfig)):
            raise ValueError(
                f"SearchConfig.space must be a SpaceConfig (DARTS cells) or a ChainSpaceConfig (a chain of conv "
                f"blocks), got {type(self.space).__name__}"
            )
        if self.hypergrad not in HYPERGRADS:
            raise ValueError(f"Unknown hypergrad {self.hypergrad!r}; expected one of {list(HYPERGRADS)}")
        for name in ("lr", "lr_min", "momentum", "weight_decay", "grad_clip", "arch_lr", "arch_weight_decay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"SearchConfig.{name} must be a non-negative number, got {value!r}")
        if self.lr_min > self.lr:
            raise ValueError(f"SearchConfig.lr_min ({self.lr_min}) must not exceed lr ({self.lr})")
        if len(self.arch_betas) != 2 or not all(0 <= b < 1 for b in self.arch_betas):
            raise ValueError(f"SearchConfig.arch_betas must be two numbers in [0, 1), got {self.arch_betas}")
        object.__setattr__(self, "arch_betas", tuple(float(b) for b in self.arch_betas))
        if not isinstance(self.unroll_steps, int) or self.unroll_steps < 1:
            raise ValueError(f"SearchConfig.unroll_steps must be an int >= 1, got {self.unroll_steps!r}")
        if self.unroll_steps > 1 and self.hypergrad != "exact":
            raise ValueError(
                f"unroll_steps={self.unroll_steps} needs hypergrad='exact' (got {self.hypergrad!r}); "
                "the finite-difference approximation is defined for one step only"
            )
        for name in ("max_params", "max_macs", "max_sram_bytes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or value <= 0):
                raise ValueError(f"SearchConfig.{name} must be a positive number or None, got {value!r}")
        if isinstance(self.penalty_mode, list):
            object.__setattr__(self, "penalty_mode", tuple(self.penalty_mode))
        if self.penalty_weight is None:
            object.__setattr__(self, "penalty_weight", penalty_weight_for(self.space))
        if not isinstance(self.penalty_weight, (int, float)) or self.penalty_weight < 0:
            raise ValueError(f"SearchConfig.penalty_weight must be >= 0, got {self.penalty_weight!r}")
        if isinstance(self.beta_weight, bool) or not isinstance(self.beta_weight, (int, float)) or not (
            0 <= self.beta_weight < float("inf")
        ):
            raise ValueError(f"SearchConfig.beta_weight must be a finite number >= 0, got {self.beta_weight!r}")
        self.penalty_metrics  # noqa: B018 - validates penalty_mode (unknown modes raise)
        if self.total_steps < 1 or self.warmup_steps < 0:
            raise ValueError(
                f"SearchConfig.total_steps must be >= 1 and warmup_steps >= 0, got {self.total_steps}, "
                f"{self.warmup_steps}"
            )

    @property
    def penalty_metrics(self) -> tuple[str, ...]:
        """The cost metrics the architecture loss penalises (``params``, ``macs``, ``sram``)."""
        modes = [] if self.penalty_mode is None else parse_mode(self.penalty_mode)
        for metric, budget in self.budgets.items():
            if budget is not None and metric not in modes:
                modes.append(metric)
        return tuple(modes)

    @property
    def budgets(self) -> dict[str, int | None]:
        """``{metric: budget or None}`` for params, MACs and SRAM bytes."""
        return {"params": self.max_params, "macs": self.max_macs, "sram": self.max_sram_bytes}

    def replace(self, **changes) -> "SearchConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)
