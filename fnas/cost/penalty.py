"""The resource penalty added to the architecture loss, and the parsing of its modes and budgets."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from fnas.cost.budget import max_cost
from fnas.cost.expected import Estimator, expected_cost
from fnas.spaces.cell.config import SpaceConfig
from fnas.spaces.cell.topology import space_of
from fnas.cost.chain import chain_of

__all__ = ["parse_mode", "penalty"]

Tensor = torch.Tensor

# The spec's nas_optimization_mode names and our metric names, lower-cased.
_MODES = {"memory": "params", "params": "params", "compute": "macs", "macs": "macs", "sram": "sram"}


def parse_mode(mode: str | Sequence[str]) -> list[str]:
    """The metrics a penalty mode names: ``'Memory+Compute'`` -> ``['params', 'macs']``.

    Raises:
        ValueError: an unknown or empty mode.
    """
    names = mode.split("+") if isinstance(mode, str) else list(mode)
    metrics = []
    for name in names:
        key = name.strip().lower() if isinstance(name, str) else None
        if key not in _MODES:
            raise ValueError(
                f"Unknown penalty mode {name!r} in {mode!r}; expected 'Memory' (params), 'Compute' (MACs), "
                "'SRAM' (peak activations), or a combination such as 'Memory+Compute' or ('Memory', 'SRAM')"
            )
        if _MODES[key] not in metrics:
            metrics.append(_MODES[key])
    if not metrics:
        raise ValueError(f"Empty penalty mode {mode!r}; expected e.g. 'Memory' or 'Memory+Compute'")
    return metrics


def _parse_budget(budget, metrics: list[str], mode) -> dict[str, float | None]:
    if budget is None:
        return dict.fromkeys(metrics)
    if isinstance(budget, Mapping):
        out = dict.fromkeys(metrics)
        for key, value in budget.items():
            metric = parse_mode(key)
            if len(metric) != 1 or metric[0] not in metrics:
                raise ValueError(f"budget key {key!r} is not one of the penalty's modes {mode!r}")
            out[metric[0]] = value
    elif isinstance(budget, (list, tuple)):
        if len(budget) != len(metrics):
            raise ValueError(f"budget {budget!r} needs one entry per mode of {mode!r} ({len(metrics)})")
        out = dict(zip(metrics, budget))
    elif len(metrics) == 1:
        out = {metrics[0]: budget}
    else:
        raise ValueError(
            f"A single budget {budget!r} is ambiguous for mode {mode!r}; pass a dict such as "
            "{'Memory': 50_000, 'Compute': 2_000_000}"
        )
    for metric, value in out.items():
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0):
            raise ValueError(f"budget for {metric!r} must be a positive number or None, got {value!r}")
    return out


def penalty(
    alphas: Mapping[str, Tensor],
    cfg: SpaceConfig | Any,
    *,
    mode: str | Sequence[str],
    budget: float | Mapping[str, float | None] | Sequence[float | None] | None = None,
    weight: float | Tensor = 1.0,
    margin: float = 0.1,
    estimator: Estimator = "genotype",
    tau: float = 1.0,
    sram_tau: float = 0.01,
    sram_bytes_per_elem: int = 1,
    straight_through: bool | None = None,
) -> Tensor:
    """A differentiable resource penalty to add to the architecture loss.

    Per metric:

    - with a budget ``b``, a linear hinge on the *derived* genotype's cost::

          relu(cost / b - (1 - margin)) / margin

      where ``cost = expected_cost(alphas, cfg, metric=..., straight_through=True)``: its value is
      the exact cost of the genotype :func:`~fnas.spaces.cell.genotype.derive_genotype` would return now, its
      gradient the soft genotype estimator's (``tau``). The term is 0 while that genotype costs at
      most ``(1 - margin) b``, reaches 1 (about a cross-entropy's worth) at the budget and grows
      with slope ``1 / margin`` beyond;
    - without a budget: ``cost / max_cost(cfg, metric)`` with the soft expected cost: normalised by
      the space's most expensive genotype, so it lies in ``(0, 1]`` for every metric and weights
      are comparable across metrics.

    The result is ``weight * sum over metrics``. Check that budgets are reachable once, up front,
    with :func:`check_budget`; :func:`derive_within_budget` makes the final genotype meet them.

    Why this shape (tuned on the watch IMU data, 30-100 step searches, Adam on the alphas): the
    soft expected cost is a poor proxy for the derived genotype's: near-uniform alphas give the
    mean cost of the space whatever their argmax is, so a hinge on it is idle while the argmax is
    over budget (a loose budget was missed by 14%), and keeps pushing long after the argmax is the
    cheapest genotype of the space (tight and medium budgets collapsed to the minimum, wasting the
    budget). The straight-through value switches the push on exactly when the genotype that would
    be derived misses ``(1 - margin) b`` and off when it does not, so the search settles below the
    budget (65-90% of it in those runs and in ``bench/PARETO.md``). The hinge is linear because its
    value is piecewise constant: only its slope matters, and a squared hinge's slope vanishes at the
    boundary, where the validation loss then wins. Scale under Adam: per alpha, the step is about
    ``arch_lr`` in the direction of the summed gradients, whatever their size, so the slope only
    decides who sets that direction. The validation loss's gradient is ~5e-3 per alpha; at slope
    ``1 / margin = 10`` the penalty's is 0.05-0.13 (``tau = 1``), so while the derived genotype is
    over target the penalty steers every alpha, and an over-budget argmax flips within a few steps
    (slope 3 behaved like 10; at slope 1 a loose budget was missed by 14% in a 60-step search). Below target
    the validation loss alone orders the ops. The margin absorbs the validation loss drifting the
    argmax back up between pushes; :func:`derive_within_budget` covers what it cannot.

    Args:
        alphas: ``{"normal", "reduce"}`` architecture parameters.
        cfg: the space, or a config holding it as ``.space``.
        mode: ``'Memory'`` (params), ``'Compute'`` (MACs), ``'SRAM'`` (peak activation bytes), or a
            combination: ``'Memory+Compute'`` or a tuple/list of modes. Case-insensitive; the metric
            names ``params``/``macs``/``sram`` work too.
        budget: None, a number (single mode), a dict ``{mode: number or None}`` or a sequence
            aligned with the modes. SRAM budgets are in bytes.
        weight: the penalty's weight (a float or a 0-d tensor, e.g. from the search state).
        margin: relative slack of the hinge, in ``(0, 1)``: the push stops at ``(1 - margin) b``.
        estimator, tau, sram_tau: see :func:`expected_cost`.
        sram_bytes_per_elem: 1 for int8 inference, 4 for float32.
        straight_through: budget terms on the derived genotype's cost (the default with the
            genotype estimator) or on the soft expected cost (False; the supernet estimator's only
            choice).

    Returns:
        A 0-d tensor.

    Raises:
        ValueError: unknown modes, budgets that do not match the modes or are not positive, a
            margin outside ``(0, 1)``, ``straight_through=True`` with the supernet estimator, or the
            errors of :func:`expected_cost`.

    References:
        Tan et al. MnasNet: Platform-Aware Neural Architecture Search for Mobile. CVPR 2019.
        Bengio, Leonard, Courville. Estimating or Propagating Gradients Through Stochastic Neurons
        for Conditional Computation. arXiv:1308.3432, 2013 (straight-through estimator).
    """
    space = chain_of(cfg) or space_of(cfg)
    metrics = parse_mode(mode)
    budgets = _parse_budget(budget, metrics, mode)
    if not 0 < margin < 1:
        raise ValueError(f"margin must be in (0, 1), got {margin!r}")
    if straight_through is None:
        straight_through = estimator == "genotype"
    total = None
    for metric in metrics:
        b = budgets[metric]
        cost = expected_cost(
            alphas, space, metric=metric, estimator=estimator, tau=tau, sram_tau=sram_tau,
            straight_through=straight_through and b is not None,
        )  # fmt: skip
        scale = sram_bytes_per_elem if metric == "sram" else 1
        if b is None:
            term = cost / float(max_cost(space, metric))
        else:
            term = torch.relu(cost * scale / float(b) - (1.0 - margin)) / margin
        total = term if total is None else total + term
    return weight * total
