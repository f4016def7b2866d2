"""The chain space's static fields, their validation, and the geometry every other module reads.

:class:`ChainSpec` holds no behaviour beyond derived sizes; :class:`~fnas.spaces.chain.config.ChainSpaceConfig`
adds the :class:`~fnas.spaces.base.Space` methods on top (so supernet, genotype, network and cost
import this module, and the config imports them: no cycle).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

__all__ = ["IDENTITY", "OP_TYPES", "WIDTH_POLICIES", "Candidate", "ChainSpec", "op_name", "parse_op"]

IDENTITY = "identity"
WIDTH_POLICIES = ("fill", "alphas")
OP_TYPES = ("conv", "sep")  # conv-BN-ReLU; depthwise (k, 1) -> pointwise 1x1 -> BN -> ReLU


class Candidate(NamedTuple):
    """A non-identity op of a block: ``op_type`` with a ``kernel``-tap kernel at ``dilation``."""

    op_type: str
    kernel: int
    dilation: int

    @property
    def name(self) -> str:
        return op_name(self.op_type, self.kernel, self.dilation)


def op_name(op_type: str, kernel: int, dilation: int) -> str:
    """``"conv_k5_d2"``: the op's name in alphas order and in genotypes."""
    return f"{op_type}_k{kernel}_d{dilation}"


def parse_op(name: str) -> Candidate | None:
    """The :class:`Candidate` a name stands for, ``None`` for ``"identity"``.

    Raises:
        ValueError: a name not of the form ``"<type>_k<kernel>_d<dilation>"`` or ``"identity"``.
    """
    if name == IDENTITY:
        return None
    parts = name.split("_") if isinstance(name, str) else []
    if (
        len(parts) == 3
        and parts[0] in OP_TYPES
        and parts[1][:1] == "k"
        and parts[1][1:].isdigit()
        and parts[2][:1] == "d"
        and parts[2][1:].isdigit()
    ):
        return Candidate(parts[0], int(parts[1][1:]), int(parts[2][1:]))
    raise ValueError(f"Unknown chain op {name!r}; expected 'identity' or e.g. 'conv_k5_d1', 'sep_k9_d2'")


def _positive_ints(owner: str, name: str, values, *, unique: bool = True) -> tuple[int, ...]:
    try:
        values = tuple(values)
    except TypeError:
        raise ValueError(f"{owner}.{name} must be a tuple of positive ints, got {values!r}") from None
    if not values:
        raise ValueError(f"{owner}.{name} is empty; give at least one value")
    bad = [v for v in values if not isinstance(v, int) or isinstance(v, bool) or v < 1]
    if bad:
        raise ValueError(f"{owner}.{name} must hold positive ints, got {values!r} (bad: {bad!r})")
    if unique and len(set(values)) != len(values):
        raise ValueError(f"{owner}.{name} has duplicates: {values!r}")
    return values


@dataclass(frozen=True)
class ChainSpec:
    """A chain of ``L = len(widths)`` searchable conv blocks on kx1 input: input BN, blocks, pool, linear.

    Block ``b`` picks one op (``op_type`` x ``kernels`` x ``dilations``, plus ``identity`` where the
    block keeps shape) and an output width among ``round(f * widths[b])`` for ``f`` in
    ``width_fractions``. Kernel, dilation and width choices share one weight per op type (PIT,
    FBNetV2), see :mod:`fnas.spaces.chain.supernet`.

    References:
        Risso et al. Lightweight Neural Architecture Search for Temporal Convolutional Networks at
        the Edge (PIT). IEEE Transactions on Computers 2022; DAC 2021.
        Wan et al. FBNetV2: Differentiable Neural Architecture Search for Spatial and Channel
        Dimensions. CVPR 2020.
        Wang, Yan, Oates. Time Series Classification from Scratch with Deep Neural Networks: A Strong
        Baseline. IJCNN 2017 (the FCN the default space contains).
    """

    in_channels: int = 6
    num_classes: int = 7
    input_shape: tuple[int, int] = (128, 1)  # (T, 1): kx1 only
    with_input_batchnorm: bool = True
    widths: tuple[int, ...] = (32, 64, 64, 32)  # maximum output width per block; L = len(widths)
    width_fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    kernels: tuple[int, ...] = (3, 5, 7, 9)  # odd: 'same' padding is symmetric
    dilations: tuple[int, ...] = (1, 2, 4)
    op_types: tuple[str, ...] = OP_TYPES
    identity: bool = True  # blocks that keep shape may be skipped (depth search)
    strides: tuple[int, ...] = ()  # per block; () means all 1
    # How a genotype's widths are read off: "fill" takes the alphas' ops and then the widths of the
    # largest product the budgets allow (searched widths left 40-80% of a 5k/20k budget unused on
    # the watch data and lost 3-7 points; see docs/chain-space.md); "alphas" takes the width alphas'
    # argmax.
    width_policy: str = "fill"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for name in ("in_channels", "num_classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{owner}.{name} must be a positive int, got {value!r}")
        if self.num_classes < 2:
            raise ValueError(f"{owner}.num_classes must be >= 2, got {self.num_classes}")
        shape = _positive_ints(owner, "input_shape", self.input_shape, unique=False)
        if len(shape) != 2 or shape[1] != 1:
            raise ValueError(
                f"{owner}.input_shape must be (T, 1): the chain space is kx1 (time series) only, got "
                f"{self.input_shape!r}; use the cell space (SpaceConfig with primitives DARTS_2D) for images"
            )
        widths = _positive_ints(owner, "widths", self.widths, unique=False)
        kernels = _positive_ints(owner, "kernels", self.kernels)
        even = [k for k in kernels if k % 2 == 0]
        if even:
            raise ValueError(
                f"{owner}.kernels must be odd ('same' padding needs a centre tap), got even {even}; "
                "use e.g. 7 or 9 for the FCN's 8"
            )
        dilations = _positive_ints(owner, "dilations", self.dilations)
        strides = _positive_ints(owner, "strides", self.strides or (1,) * len(widths), unique=False)
        if len(strides) != len(widths):
            raise ValueError(
                f"{owner}.strides has {len(strides)} entries but widths has {len(widths)} blocks; give one "
                "stride per block or () for all 1"
            )
        op_types = tuple(self.op_types)
        if not op_types or len(set(op_types)) != len(op_types) or not set(op_types) <= set(OP_TYPES):
            raise ValueError(f"{owner}.op_types must be distinct names from {OP_TYPES}, got {self.op_types!r}")
        bad_fractions = f"{owner}.width_fractions must be non-empty numbers in (0, 1], got {self.width_fractions!r}"
        try:
            fractions = tuple(float(f) for f in self.width_fractions)
        except (TypeError, ValueError):
            raise ValueError(bad_fractions) from None
        if not fractions or not all(0.0 < f <= 1.0 for f in fractions):
            raise ValueError(bad_fractions)
        if self.width_policy not in WIDTH_POLICIES:
            raise ValueError(f"{owner}.width_policy must be one of {WIDTH_POLICIES}, got {self.width_policy!r}")
        if not isinstance(self.identity, bool) or not isinstance(self.with_input_batchnorm, bool):
            raise ValueError(f"{owner}.identity and .with_input_batchnorm must be bools")
        for name, value in (
            ("input_shape", shape), ("widths", widths), ("kernels", kernels), ("dilations", dilations),
            ("strides", strides), ("op_types", op_types), ("width_fractions", fractions),
        ):  # fmt: skip
            object.__setattr__(self, name, value)

    # --- geometry (derived sizes; cached: the dataclass is frozen) ---------------------------

    @property
    def is_1d(self) -> bool:
        """Always True: activations are (N, C, T, 1)."""
        return True

    @property
    def num_blocks(self) -> int:
        """L, the number of blocks."""
        return len(self.widths)

    @cached_property
    def taps(self) -> int:
        """Taps of the shared kernel: the largest receptive field ``(k_max - 1) d_max + 1``."""
        return (max(self.kernels) - 1) * max(self.dilations) + 1

    @cached_property
    def in_widths(self) -> tuple[int, ...]:
        """Maximum input width of each block (``in_channels``, then the previous block's maximum)."""
        return (self.in_channels, *self.widths[:-1])

    @cached_property
    def width_choices(self) -> tuple[tuple[int, ...], ...]:
        """Per block, the sorted distinct output widths ``max(1, round(f * widths[b]))``."""
        return tuple(tuple(sorted({max(1, round(f * w)) for f in self.width_fractions})) for w in self.widths)

    @cached_property
    def identity_allowed(self) -> tuple[bool, ...]:
        """Per block: stride 1 and maximum input width == maximum output width."""
        return tuple(
            self.identity and s == 1 and c_in == c_out
            for s, c_in, c_out in zip(self.strides, self.in_widths, self.widths)
        )

    @cached_property
    def op_candidates(self) -> tuple[Candidate, ...]:
        """The non-identity ops, type-major, then kernel, then dilation (alphas order)."""
        return tuple(Candidate(t, k, d) for t in self.op_types for k in self.kernels for d in self.dilations)

    @cached_property
    def candidates(self) -> tuple[tuple[str, ...], ...]:
        """Per block, the op names in alphas order: ``op_candidates``, then ``"identity"`` where allowed."""
        names = tuple(c.name for c in self.op_candidates)
        return tuple(names + ((IDENTITY,) if allowed else ()) for allowed in self.identity_allowed)

    @cached_property
    def lengths(self) -> tuple[int, ...]:
        """Series length T after each block: 'same' padding, stride s gives ``ceil(T / s)``."""
        out, t = [], self.input_shape[0]
        for s in self.strides:
            t = math.ceil(t / s)
            out.append(t)
        return tuple(out)
