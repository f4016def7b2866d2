"""The search state: ``SearchState``, its optimisers, ``init_search``, plain-dict conversion and stacking."""

from __future__ import annotations

from typing import NamedTuple

import torch

from fnas.core import tree
from fnas.core.optim import AdamState, SGDState, Transformation, adam, sgd
from fnas.search.config import SearchConfig

Tensor = torch.Tensor


class SearchState(NamedTuple):
    """Everything a search carries from one step to the next."""

    weights: dict
    alphas: dict
    stats: dict
    w_opt: SGDState
    a_opt: AdamState
    step: Tensor  # 0-d int64: a Python int would recompile a compiled step


def weight_optimizer(cfg: SearchConfig) -> Transformation:
    """The weights' optimiser: SGD with ``cfg.momentum`` and L2 ``cfg.weight_decay`` (DARTS); its lr is scheduled."""
    return sgd(momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def arch_optimizer(cfg: SearchConfig) -> Transformation:
    """The alphas' optimiser: Adam with ``cfg.arch_betas`` and L2 ``cfg.arch_weight_decay`` (DARTS); lr ``cfg.arch_lr``."""
    return adam(betas=cfg.arch_betas, weight_decay=cfg.arch_weight_decay)


def init_search(cfg: SearchConfig, gen: torch.Generator, *, dtype: torch.dtype = torch.float32) -> SearchState:
    """A fresh search state: supernet init from ``gen``, zero optimiser states, step 0."""
    weights, alphas, stats = getattr(cfg, "space", cfg).init(gen, dtype=dtype)
    return SearchState(
        weights,
        alphas,
        stats,
        weight_optimizer(cfg).init(weights),
        arch_optimizer(cfg).init(alphas),
        torch.zeros((), dtype=torch.int64),
    )


def state_to_dict(state: SearchState) -> dict:
    """Plain nested dicts of tensors (loadable with ``torch.load(weights_only=True)``)."""
    return {
        "weights": state.weights,
        "alphas": state.alphas,
        "stats": state.stats,
        "w_opt": {"momentum": state.w_opt.momentum},
        "a_opt": {"mu": state.a_opt.mu, "nu": state.a_opt.nu, "count": state.a_opt.count},
        "step": state.step,
    }


def state_from_dict(data: dict) -> SearchState:
    """Inverse of :func:`state_to_dict`.

    Raises:
        ValueError: keys are missing (not a search state).
    """
    try:
        return SearchState(
            data["weights"],
            data["alphas"],
            data["stats"],
            SGDState(data["w_opt"]["momentum"]),
            AdamState(data["a_opt"]["mu"], data["a_opt"]["nu"], data["a_opt"]["count"]),
            data["step"],
        )
    except (KeyError, TypeError) as err:
        raise ValueError(f"Not an fnas search state (missing {err}); was it written by fnas search?") from err


def stack_states(states: list[SearchState]) -> SearchState:
    """Stack independent search states (e.g. different seeds) along a new leading axis."""
    if not states:
        raise ValueError("stack_states needs at least one state")
    return tree.map(lambda *leaves: torch.stack(leaves), *states)


def unstack_state(stacked: SearchState, index: int) -> SearchState:
    """The ``index``-th search of a stacked state."""
    return tree.map(lambda leaf: leaf[index], stacked)


PARAM_LIMIT = 1e4  # |weight| or |alpha| beyond this is a divergence, not a network


def insane_leaves(state: SearchState) -> list[str]:
    """Names of the leaves that show a divergence: non-finite anywhere, or a weight or alpha beyond ``PARAM_LIMIT``.

    A diverging search can keep a finite loss for a step or two while BatchNorm running variances
    are already infinite and weights reach 1e28; checking the metrics alone let such a state into
    the checkpoint, and resuming from it diverged again. Weights and alphas are bounded too: SGD at
    lr 0.025 with gradients clipped to norm 5 moves a weight at most 0.125 a step, so 1e4 takes
    tens of thousands of steps in one direction, while one step at lr 1e6 gets there at once. BN
    statistics follow the data's scale (a user's unstandardised inputs), so they need only be finite.
    """
    out = []
    for part in ("weights", "alphas", "stats"):
        limit = float("inf") if part == "stats" else PARAM_LIMIT
        for name, t in tree.flatten_dict(getattr(state, part)).items():
            if t.is_floating_point() and not bool((torch.isfinite(t) & (t.abs() <= limit)).all()):
                out.append(f"{part}.{name}")
    return out
