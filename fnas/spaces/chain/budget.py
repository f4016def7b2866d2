"""Budgets on the chain space: the best genotype within budgets (exact knapsack) and a space sized to a budget.

:func:`derive_within_budget` is a multiple-choice knapsack over the chain, solved exactly by a
dynamic program over blocks whose state is the previous block's output width, keeping per state
the Pareto set of (budgeted costs, score). :func:`for_budget` scales a space's widths (and, if it
must, drops blocks) so that a budget binds.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Mapping, NamedTuple

import torch

from fnas.spaces.chain.config import ChainSpaceConfig
from fnas.spaces.chain.cost import (
    METRICS,
    block_options,
    completion,
    fixed_cost,
    genotype_cost,
    max_cost,
    min_cost,
)
from fnas.spaces.chain.genotype import FCN_LAYERS, ChainGenotype, check_alphas, derive_genotype, fcn_genotype
from fnas.spaces.chain.spec import IDENTITY, ChainSpec

__all__ = ["budget_fcn_width", "check_budgets", "derive_within_budget", "for_budget", "genotype_score", "meets_budgets"]

Tensor = torch.Tensor
_UNITS = {"params": "parameters", "macs": "MACs", "sram": "bytes of peak activation memory"}


class _Partial(NamedTuple):
    score: float
    cost: tuple[int, ...]  # per budgeted metric: params, MACs summed; SRAM the peak so far
    picks: tuple[tuple[str, int], ...]


def check_budgets(budgets: Mapping[str, float | None] | None) -> dict[str, float | None]:
    """``{"params", "macs", "sram"}`` with ``None`` for the missing; SRAM in bytes.

    Raises:
        ValueError: an unknown key or a budget that is not a positive number.
    """
    budgets = dict(budgets or {})
    unknown = sorted(set(budgets) - set(METRICS))
    if unknown:
        raise ValueError(f"Unknown budget keys {unknown}; expected some of {list(METRICS)} (SRAM in bytes)")
    for key, value in budgets.items():
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0):
            raise ValueError(f"budget {key!r} must be a positive number or None, got {value!r}")
    return {m: budgets.get(m) for m in METRICS}


def _limits(cfg: ChainSpec, budgets: dict, sram_bytes_per_elem: int) -> dict[str, int]:
    """Integer limits per budgeted metric (SRAM in elements), with a clear error when one is below the minimum."""
    if sram_bytes_per_elem not in (1, 2, 4, 8):
        raise ValueError(f"sram_bytes_per_elem must be 1, 2, 4 or 8, got {sram_bytes_per_elem!r}")
    limits = {}
    for m, budget in budgets.items():
        if budget is None:
            continue
        scale = sram_bytes_per_elem if m == "sram" else 1
        limits[m] = math.floor(budget / scale)
        minimum = min_cost(cfg, m) * scale
        if budget < minimum:
            raise ValueError(
                f"The {m} budget {budget:,} is below the minimum achievable in this space: {minimum:,} "
                f"{_UNITS[m]} (the cheapest genotype). Raise it, or size the space with "
                "fnas.spaces.chain.for_budget (smaller widths, fewer blocks)"
            )
    return limits


def meets_budgets(genotype: ChainGenotype, cfg: ChainSpec, budgets: Mapping, *, sram_bytes_per_elem: int = 1) -> bool:
    """Whether the genotype's exact costs meet every budget (``None``: no budget)."""
    cost = genotype_cost(genotype, cfg)
    actual = {"params": cost.params, "macs": cost.macs, "sram": cost.peak_sram_bytes_int8 * sram_bytes_per_elem}
    return all(b is None or actual[m] <= b for m, b in check_budgets(budgets).items())


FILL_OP_WEIGHT = 1e4  # under width_policy "fill": the op scores' weight against the widths' log ratios


def _block_scores(alphas_or_scores: Mapping[str, Tensor], cfg: ChainSpec, from_scores: bool) -> list:
    """Per block ``(op -> score, width -> score)``; width scores relative to the block's best width."""
    out = []
    for b in range(cfg.num_blocks):
        op, width = (alphas_or_scores[f"b{b}_{part}"].detach().double().cpu() for part in ("op", "width"))
        if not from_scores:
            op, width = torch.log_softmax(op, -1), torch.log_softmax(width, -1)
        if cfg.width_policy == "fill":
            # ops first (any log-probability gap outweighs every width), then the widths of the largest
            # product: log-width scores spread a budget's narrowing over the blocks, where equal steps
            # per width choice made one-block bottlenecks (a 4-wide last block on watch at 5k)
            op = op * FILL_OP_WEIGHT
            width = torch.log(torch.tensor(cfg.width_choices[b], dtype=torch.float64))
        width = width - width.max()
        out.append((dict(zip(cfg.candidates[b], op.tolist())), dict(zip(cfg.width_choices[b], width.tolist()))))
    return out


def genotype_score(
    genotype: ChainGenotype, alphas_or_scores: Mapping[str, Tensor], cfg: ChainSpec, *, from_scores: bool = False
) -> float:
    """The objective :func:`derive_within_budget` maximises, for one genotype.

    Sum over blocks of the op's log-probability (or score) plus, for non-identity blocks, the
    width's log-probability (or score) minus the block's largest: so its unconstrained maximum
    is exactly :func:`~fnas.spaces.chain.genotype.derive_genotype`'s pick (an identity block has
    no width to pay for).
    """
    scores = _block_scores(alphas_or_scores, cfg, from_scores)
    return sum(s_op[op] + (0.0 if op == IDENTITY else s_w[w]) for (op, w), (s_op, s_w) in zip(genotype.blocks, scores))


def _pareto(partials: list[_Partial]) -> list[_Partial]:
    """Drop every partial another beats (or ties) on score and every cost."""
    kept: list[_Partial] = []
    for p in sorted(partials, key=lambda p: (-p.score, p.cost)):
        if len(p.cost) == 1:  # sorted by score: keep only strictly cheaper ones
            if not kept or p.cost[0] < kept[-1].cost[0]:
                kept.append(p)
        elif not any(all(a <= b for a, b in zip(q.cost, p.cost)) for q in kept):
            kept.append(p)
    return kept


def derive_within_budget(
    alphas_or_scores: Mapping[str, Tensor],
    cfg: ChainSpec,
    budgets: Mapping[str, float | None] | None = None,
    *,
    from_scores: bool = False,
    sram_bytes_per_elem: int = 1,
) -> ChainGenotype:
    """The highest-scoring genotype whose exact costs meet every budget.

    The score is :func:`genotype_score`: log-probabilities of the alphas (or, with ``from_scores``,
    per-choice selection scores of the same shapes). Its unconstrained maximum is
    :func:`~fnas.spaces.chain.genotype.derive_genotype`'s pick, returned as is when it meets the
    budgets. Otherwise a dynamic program over blocks (state: the input width) keeps per state the
    Pareto set of (costs, score), drops partial genotypes that cannot finish within budget (the
    cheapest completion from each state is known exactly), and returns the best complete one.

    Args:
        alphas_or_scores: ``{"b{b}_op", "b{b}_width"}``.
        cfg: the space.
        budgets: ``{"params": 5000, "macs": None, "sram": None}`` (SRAM in bytes); missing means None.
        from_scores: maximise the raw scores instead of log-softmax of alphas.
        sram_bytes_per_elem: 1 for int8 inference, 4 for float32.

    Raises:
        ValueError: a budget below the space's minimum (naming it), budgets no genotype meets
            together, bad budget keys or values, or alphas of the wrong shape.

    References:
        Sinha, Zoltners. The Multiple-Choice Knapsack Problem. Operations Research 27(3), 1979.
    """
    check_alphas(alphas_or_scores, cfg)
    budgets = check_budgets(budgets)
    limits = _limits(cfg, budgets, sram_bytes_per_elem)
    genotype = derive_genotype(alphas_or_scores, cfg)
    if not limits or meets_budgets(genotype, cfg, budgets, sram_bytes_per_elem=sram_bytes_per_elem):
        return genotype
    metrics = list(limits)
    room = tuple(limits[m] for m in metrics)
    low = [completion(cfg, m, "min") for m in metrics]
    scores = _block_scores(alphas_or_scores, cfg, from_scores)

    def add(cost: tuple, values: tuple) -> tuple:
        return tuple(max(a, v) if m == "sram" else a + v for m, a, v in zip(metrics, cost, values))

    partials = {cfg.in_channels: [_Partial(0.0, tuple(fixed_cost(cfg, m) for m in metrics), ())]}
    for b in range(cfg.num_blocks):
        grown: dict[int, list[_Partial]] = {}
        for c_in, plist in partials.items():
            items: dict = {}  # per (width, costs) the best-scoring option: dilations cost the same
            for o in block_options(cfg, b, c_in):
                s_op, s_w = scores[b]
                score = s_op[o.op] + (0.0 if o.op == IDENTITY else s_w[o.width])
                key = (o.width, tuple(o.value(m) for m in metrics))
                if key not in items or score > items[key][0]:
                    items[key] = (score, o)
            for (width, values), (score, o) in items.items():
                for p in plist:
                    cost = add(p.cost, values)
                    finish = add(cost, tuple(rest[b + 1][width] for rest in low))
                    if all(f <= r for f, r in zip(finish, room)):
                        grown.setdefault(width, []).append(_Partial(p.score + score, cost, p.picks + ((o.op, width),)))
        partials = {c: _pareto(plist) for c, plist in grown.items()}
    finals = [p for plist in partials.values() for p in plist]
    if not finals:
        minimums = ", ".join(f"{m} {min_cost(cfg, m):,}" for m in metrics)
        raise ValueError(
            f"No genotype of this space meets the budgets {({m: budgets[m] for m in metrics})} together, although "
            f"each alone is reachable (minimums: {minimums}); relax one of them"
        )
    return ChainGenotype(max(finals, key=lambda p: p.score).picks)


# --- a space sized to a budget ------------------------------------------------------------------


def for_budget(
    max_params: int | None = None,
    max_macs: int | None = None,
    max_sram_bytes: int | None = None,
    *,
    base: ChainSpec | None = None,
    sram_bytes_per_elem: int = 1,
    target_ratio: float = 3.0,
    hold_fcn: bool = False,
) -> tuple[ChainSpec, str]:
    """A chain space in which the budgets bind: ``min cost <= budget < max cost`` for each.

    Scales ``base.widths`` by ``2^(i/8)`` (rounded, at least 1, at most 32x) and keeps the scale
    whose largest cost is nearest (in log ratio) ``target_ratio`` x the budget, worst metric
    first; when no scale fits, drops the last blocks one at a time. With ``hold_fcn``, a space
    that does not hold the widest FCN (Wang et al. 2017) within the budgets as an exact member
    (:func:`budget_fcn_width`) is rescaled to the nearest scaling that does (widened when it was
    narrower than the FCN), so that the search can never lose to the FCN for lack of expressiveness.

    Args:
        max_params, max_macs, max_sram_bytes: budgets (at least one); SRAM in bytes.
        base: the space to scale (in_channels, num_classes, input_shape, choices); default
            ``ChainSpaceConfig()``.
        sram_bytes_per_elem: 1 for int8 inference, 4 for float32.
        target_ratio: the preferred ``max cost / budget``.
        hold_fcn: rescale the space, if needed, so the budget's FCN is a member.

    Returns:
        ``(cfg, description)``: the scaled space (``base``'s type) and one line saying what was picked.

    Raises:
        ValueError: no budget, or none of the scaled spaces lets every budget bind.
    """
    base = ChainSpaceConfig() if base is None else base
    budgets = check_budgets({"params": max_params, "macs": max_macs, "sram": max_sram_bytes})
    given = {m: b for m, b in budgets.items() if b is not None}
    if not given:
        raise ValueError("for_budget needs at least one of max_params, max_macs, max_sram_bytes")
    if not target_ratio > 1:
        raise ValueError(f"target_ratio must be > 1 (the budget must bind), got {target_ratio!r}")
    scale = {m: sram_bytes_per_elem if m == "sram" else 1 for m in given}
    for blocks in range(base.num_blocks, 0, -1):
        best, seen = None, set()
        for i in range(-40, 41):
            widths = tuple(max(1, round(w * 2 ** (i / 8))) for w in base.widths[:blocks])
            if widths in seen:
                continue
            seen.add(widths)
            cfg = replace(base, widths=widths, strides=base.strides[:blocks])
            low = {m: min_cost(cfg, m) * scale[m] for m in given}
            high = {m: max_cost(cfg, m) * scale[m] for m in given}
            if not all(low[m] <= b < high[m] for m, b in given.items()):
                continue
            miss = max(abs(math.log(high[m] / b / target_ratio)) for m, b in given.items())
            if best is None or miss < best[0]:
                best = (miss, cfg, low, high)
        if best is not None:
            _, cfg, low, high = best
            held = ""
            w = budget_fcn_width(base, given, sram_bytes_per_elem) if hold_fcn and blocks == base.num_blocks else None
            holder = None if w is None or _exact_fcn(cfg, w) is not None else _holding(base, cfg, w)
            if holder is not None:
                low = {m: min_cost(holder, m) * scale[m] for m in given}
                high = {m: max_cost(holder, m) * scale[m] for m in given}
                if not all(low[m] <= b < high[m] for m, b in given.items()):  # pragma: no cover (FCN < max)
                    raise AssertionError(f"the space {holder.widths} holding the FCN (w={w}) does not let {given} bind")
                verb = "widened" if all(h >= c for h, c in zip(holder.widths, cfg.widths)) else "rescaled"
                cfg, held = holder, f", {verb} to hold the budget's FCN (w={w})"
            elif w is not None:
                held = f", holds the budget's FCN (w={w})"
            ranges = "; ".join(
                f"{m} {low[m]:,}..{high[m]:,} for a budget of {b:,} (max {high[m] / b:.1f}x)" for m, b in given.items()
            )
            return cfg, f"chain space widths={cfg.widths} ({cfg.num_blocks} blocks{held}): {ranges}"
    raise ValueError(
        f"No scaling of widths {base.widths} (1/32x..32x, or fewer blocks) lets the budgets {given} bind "
        "(min cost <= budget < max cost); change the budgets or the base space's choices"
    )


def _scaled_to(base: ChainSpec, w0: int) -> ChainSpec:
    """``base`` with its widths scaled so that block 0's maximum width is ``w0``."""
    return replace(base, widths=tuple(max(1, round(bw * w0 / base.widths[0])) for bw in base.widths))


def _holding(base: ChainSpec, cfg: ChainSpec, w: int) -> ChainSpec | None:
    """The scaling of ``base`` nearest ``cfg`` (in log width) that holds the FCN of width ``w`` exactly:
    block 0's maximum width ``w / f`` for a width fraction ``f``, so never narrower than the FCN; ties
    go to the wider. ``None`` if none holds it."""
    fits = [_scaled_to(base, round(w / f)) for f in base.width_fractions]
    fits = [c for c in fits if _exact_fcn(c, w) is not None]
    return min(fits, key=lambda c: (abs(math.log(c.widths[0] / cfg.widths[0])), -c.widths[0]), default=None)


def _exact_fcn(cfg: ChainSpec, w: int) -> ChainGenotype | None:
    """The FCN of width ``w`` if ``cfg`` holds it exactly (conv widths w, 2w, w), else ``None``."""
    try:
        genotype = fcn_genotype(cfg, w)
    except ValueError:
        return None
    convs = [width for op, width in genotype.blocks if op != IDENTITY]
    return genotype if convs == [mult * w for _, mult in FCN_LAYERS] else None


def budget_fcn_width(base: ChainSpec, budgets: Mapping[str, float | None], sram_bytes_per_elem: int = 1) -> int | None:
    """The largest ``w`` whose FCN (widths w, 2w, w; kernels nearest 8, 5, 3) meets the budgets, held exactly
    by ``base`` scaled to block-0 width ``w``; ``None`` when no such FCN exists (e.g. no ``conv`` op, no
    dilation 1, fewer than 3 blocks, a width pattern that cannot hold it, or budgets below the smallest).

    References:
        Wang, Yan, Oates. Time Series Classification from Scratch with Deep Neural Networks: A Strong
        Baseline. IJCNN 2017.
    """
    try:
        fcn_genotype(base, 1)  # no conv op, no dilation 1, no placement: no FCN at any width
    except ValueError:
        return None
    best, misses = None, 0
    for w in range(1, 32 * max(base.widths) + 1):
        cfg = _scaled_to(base, w)
        genotype = _exact_fcn(cfg, w)
        if genotype is None:
            continue
        if meets_budgets(genotype, cfg, budgets, sram_bytes_per_elem=sram_bytes_per_elem):
            best, misses = w, 0
        else:
            misses += 1  # the costs grow with w: a few misses in a row end the search
            if misses >= 3:
                break
    return best
