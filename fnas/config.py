"""Static configuration: frozen dataclasses validated in ``__post_init__``.

Anything that fixes shapes or the graph lives here and is passed as the keyword ``cfg``; values
that change during a run (learning rate, step) are tensors in the search state.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from fnas import primitives as P

HYPERGRADS = ("first_order", "exact", "finite_difference")


@dataclass(frozen=True)
class SpaceConfig:
    """The search network (supernet) and the space it spans.

    Attributes mirror the seed's arguments; ``input_shape`` is ``(T, 1)`` for kx1 spaces and
    ``(H, W)`` for 2D ones.
    """

    C: int = 16  # nas_init_channels
    num_classes: int = 7
    layers: int = 8  # nas_layers; cells layers//3 and 2*layers//3 reduce
    in_channels: int = 6
    input_shape: tuple[int, int] = (128, 1)
    with_input_batchnorm: bool = True
    nodes: int = 4  # nas_nodes_per_layer
    multiplier: int = 4  # nas_multiplier: how many of the last nodes are concatenated
    stem_multiplier: int = 3
    primitives: tuple[str, ...] = P.SEED_KX1
    pool_bn: bool = True  # DARTS puts an affine-free BatchNorm after pools in the search net
    fused: bool = True  # batch the mixed ops of all edges leaving a state (same result, faster)
    partial_channels: int = 1  # PC-DARTS K: mixed ops see C/K channels; K > 1 adds edge betas

    def __post_init__(self) -> None:
        object.__setattr__(self, "primitives", tuple(self.primitives))
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        for name in ("C", "num_classes", "layers", "in_channels", "nodes", "multiplier", "stem_multiplier"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SpaceConfig.{name} must be a positive int, got {value!r}")
        if self.num_classes < 2:
            raise ValueError(f"SpaceConfig.num_classes must be >= 2, got {self.num_classes}")
        if self.multiplier > self.nodes:
            raise ValueError(
                f"SpaceConfig.multiplier ({self.multiplier}) must be <= nodes ({self.nodes}): the cell "
                "output concatenates the last `multiplier` nodes"
            )
        if len(self.input_shape) != 2 or min(self.input_shape) < 1:
            raise ValueError(f"SpaceConfig.input_shape must be (T, 1) or (H, W), got {self.input_shape}")
        if not self.primitives:
            raise ValueError("SpaceConfig.primitives is empty; use e.g. fnas.primitives.SEED_KX1")
        if len(set(self.primitives)) != len(self.primitives):
            raise ValueError(f"SpaceConfig.primitives has duplicates: {self.primitives}")
        kinds = {P.get(name).kind for name in self.primitives}  # raises on unknown names
        if "1d" in kinds and "2d" in kinds:
            raise ValueError(
                f"SpaceConfig.primitives mixes kx1 and kxk primitives: {self.primitives}; pick one family"
            )
        if "1d" in kinds and self.input_shape[1] != 1:
            raise ValueError(
                f"kx1 primitives need input_shape (T, 1), got {self.input_shape}; use the 2D set "
                "(fnas.primitives.DARTS_2D) for images"
            )
        if self.primitives == ("none",):
            raise ValueError("SpaceConfig.primitives needs at least one primitive besides 'none'")
        if "skip_connect" in self.primitives and self.C % 2:
            raise ValueError(f"skip_connect in a reduction cell needs an even C, got C={self.C}")
        K = self.partial_channels
        if not isinstance(K, int) or K < 1 or self.C % K:
            raise ValueError(f"SpaceConfig.partial_channels must be a positive divisor of C={self.C}, got {K!r}")
        if K > 1 and "skip_connect" in self.primitives and (self.C // K) % 2:
            raise ValueError(
                f"partial_channels={K} leaves C/K={self.C // K} channels per mixed op; skip_connect's "
                "factorized reduce needs an even number: pick K so that C/K is even"
            )

    @property
    def is_1d(self) -> bool:
        """True for kx1 spaces: tensors run as (N, C, T) internally."""
        return self.input_shape[1] == 1 and all(P.get(n).kind != "2d" for n in self.primitives)

    @property
    def num_edges(self) -> int:
        """Mixed-op edges per cell: node j has j incoming edges, ``n (n + 1) / 2`` in all."""
        return self.nodes * (self.nodes + 1) // 2

    @property
    def reduction_layers(self) -> tuple[int, ...]:
        """Indices of the reduction cells."""
        return tuple(sorted({self.layers // 3, 2 * self.layers // 3}))

    def edges(self) -> list[tuple[int, int]]:
        """``(i, j)`` for every edge ``state_i -> node_j``, in alpha-row order (j-major)."""
        return [(i, j) for j in range(1, self.nodes + 1) for i in range(j)]


@dataclass(frozen=True)
class SearchConfig:
    """One search: the space, the optimisers and the architecture-gradient method.

    Defaults are DARTS' (Liu et al. 2019) unless noted.
    """

    space: SpaceConfig = field(default_factory=SpaceConfig)
    lr: float = 0.025  # weight SGD, cosine-annealed to lr_min over total_steps
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 3e-4  # Adam on alphas
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    hypergrad: Literal["first_order", "exact", "finite_difference"] = "first_order"
    unroll_steps: int = 1  # exact only: differentiate through K virtual weight steps
    total_steps: int = 1000  # length of the cosine schedule (the search loop sets it)
    warmup_steps: int = 0  # alphas stay fixed for the first warmup_steps steps
    # Resource-aware search (the seed's nas_optimization_mode): 'Memory' (parameters), 'Compute'
    # (MACs), 'SRAM' (peak activation bytes, int8) or a combination like 'Memory+Compute'.
    penalty_mode: str | tuple[str, ...] | None = None
    # With a budget, weight 1 makes the penalty worth one cross-entropy when the derived genotype
    # is exactly at its budget, and 0 while it is under 90% of it (see fnas.cost.penalty for the tuning).
    penalty_weight: float = 1.0
    max_params: int | None = None  # budgets; a budget without penalty_mode turns its mode on
    max_macs: int | None = None
    max_sram_bytes: int | None = None
    # beta-DARTS (Ye et al. 2022): weight of the beta-decay regulariser on the alphas, raised
    # linearly from 0 to beta_weight over total_steps; 0 turns it off. The reference code ramps it
    # as 50 * epoch / 100 in the DARTS space.
    beta_weight: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.space, SpaceConfig):
            raise ValueError(f"SearchConfig.space must be a SpaceConfig, got {type(self.space).__name__}")
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
        from fnas.cost import _parse_mode

        modes = [] if self.penalty_mode is None else _parse_mode(self.penalty_mode)
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
