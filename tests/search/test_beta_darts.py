"""Tests for beta-DARTS in fnas.search: the beta-decay regulariser, its schedule, and arch_step with it on.

(Kept apart from test_search.py, which another change owns; both test fnas.search.)
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from fnas.core import hypergrad
from fnas.core import tree
from fnas.search.config import SearchConfig
from fnas.search import (
    arch_optimizer,
    arch_step,
    beta_decay,
    beta_decay_grad,
    beta_schedule,
    init_search,
    search_step,
    supernet_loss,
    weight_optimizer,
)

from conftest import make_batch, make_gen, tiny_search, tol

pytestmark = pytest.mark.usefixtures("single_thread")


def _formula(alphas: dict) -> torch.Tensor:
    """beta-DARTS' L_beta written out: mean over cell types of mean over edges of log sum_k exp(alpha)."""
    per_type = [torch.log(torch.exp(a).sum(-1)).mean() for a in (alphas["normal"], alphas["reduce"])]
    return (per_type[0] + per_type[1]) / 2


def _alphas(cfg: SearchConfig, seed: int = 0, dtype=torch.float64) -> dict:
    g = make_gen(seed)
    shape = (cfg.space.num_edges, len(cfg.space.primitives))
    return {k: 3 * torch.randn(shape, generator=g, dtype=dtype) for k in ("normal", "reduce")}


@pytest.mark.parametrize("step", [0, 3, 10, 25], ids=["start", "early", "end", "past-end"])
def test_beta_decay_grad_matches_autograd_of_the_formula(step: int) -> None:
    cfg = tiny_search(beta_weight=7.0, total_steps=10)
    alphas = _alphas(cfg)
    weight = 7.0 * min(step / 10, 1.0)
    leaves = {k: a.clone().requires_grad_(True) for k, a in alphas.items()}
    expected = torch.autograd.grad(weight * _formula(leaves), [leaves["normal"], leaves["reduce"]])
    grads, value = beta_decay_grad(alphas, torch.tensor(step), cfg)
    torch.testing.assert_close(grads["normal"], expected[0], **tol(torch.float64))
    torch.testing.assert_close(grads["reduce"], expected[1], **tol(torch.float64))
    torch.testing.assert_close(value, weight * _formula(alphas), **tol(torch.float64))
    torch.testing.assert_close(beta_decay(alphas), _formula(alphas), **tol(torch.float64))


def test_beta_schedule_is_linear_from_zero_to_beta_weight() -> None:
    cfg = tiny_search(beta_weight=50.0, total_steps=200)
    values = [float(beta_schedule(torch.tensor(s), cfg)) for s in (0, 50, 100, 200, 400)]
    assert values == pytest.approx([0.0, 12.5, 25.0, 50.0, 50.0])


def test_arch_step_adds_the_beta_gradient_to_the_alpha_gradient() -> None:
    cfg = tiny_search(beta_weight=20.0, total_steps=4)
    state = init_search(cfg, make_gen(0))._replace(step=torch.tensor(3))
    train, valid = make_batch(cfg.space, n=6, seed=0), make_batch(cfg.space, n=6, seed=1)
    new, metrics = arch_step(state, train, valid, cfg=cfg)

    g_val, _ = hypergrad.get("first_order")(
        lambda w, a, b: supernet_loss(w, a, state.stats, b, cfg=cfg),
        state.weights, state.alphas, state.w_opt, train, valid,
        xi=0.0, optimizer=weight_optimizer(cfg),
    )  # fmt: skip
    leaves = {k: a.clone().requires_grad_(True) for k, a in state.alphas.items()}
    g_beta = torch.autograd.grad(20.0 * 3 / 4 * _formula(leaves), [leaves["normal"], leaves["reduce"]])
    g = {"normal": g_val["normal"] + g_beta[0], "reduce": g_val["reduce"] + g_beta[1]}
    alphas, _ = arch_optimizer(cfg).update(g, state.a_opt, state.alphas, lr=cfg.arch_lr)
    for kind in alphas:
        torch.testing.assert_close(new.alphas[kind], alphas[kind])
    torch.testing.assert_close(metrics["beta_loss"], 15.0 * _formula(state.alphas))
    assert metrics["beta_loss"].ndim == 0


def test_beta_off_by_default_changes_nothing() -> None:
    cfg = tiny_search()
    assert cfg.beta_weight == 0.0
    state = init_search(cfg, make_gen(0))._replace(step=torch.tensor(5))
    train, valid = make_batch(cfg.space, n=6, seed=0), make_batch(cfg.space, n=6, seed=1)
    new, metrics = search_step(state, train, valid, cfg=cfg)
    assert "beta_loss" not in metrics
    # the same step by hand, without any regulariser: bitwise equal
    g_val, _ = hypergrad.get("first_order")(
        lambda w, a, b: supernet_loss(w, a, state.stats, b, cfg=cfg),
        state.weights, state.alphas, state.w_opt, train, valid,
        xi=0.0, optimizer=weight_optimizer(cfg),
    )  # fmt: skip
    alphas, a_opt = arch_optimizer(cfg).update(g_val, state.a_opt, state.alphas, lr=cfg.arch_lr)
    assert tree.all_equal(new.alphas, alphas) and tree.all_equal(new.a_opt, a_opt)
    on, on_metrics = search_step(state, train, valid, cfg=cfg.replace(beta_weight=10.0))
    assert "beta_loss" in on_metrics and not tree.all_equal(on.alphas, new.alphas)


def test_beta_decay_shrinks_the_alphas_spread() -> None:
    # only the regulariser (no data): every alpha decays in proportion to its softmax weight, so
    # the dominant ops lose most and the softmax flattens
    cfg = tiny_search(beta_weight=1.0, total_steps=1)
    alphas = _alphas(cfg)
    entropy = lambda a: float(-(torch.softmax(a, -1) * torch.log_softmax(a, -1)).sum())  # noqa: E731
    before = entropy(alphas["normal"])
    for _ in range(50):
        grads, _ = beta_decay_grad(alphas, torch.tensor(1), cfg)
        alphas = tree.map(lambda a, g: a - 0.5 * g * a.shape[0], alphas, grads)
    assert entropy(alphas["normal"]) > before


@pytest.mark.parametrize(
    "value", [-1.0, float("nan"), float("inf"), True, "50"], ids=["negative", "nan", "inf", "bool", "str"]
)
def test_beta_weight_is_validated(value) -> None:
    with pytest.raises(ValueError, match="beta_weight"):
        tiny_search(beta_weight=value)


def test_search_step_with_beta_and_budget_compiles_once() -> None:
    torch._dynamo.reset()
    from fnas import cost

    cfg = tiny_search(beta_weight=5.0, total_steps=8, max_params=10**6)
    state = init_search(cfg, make_gen(0))
    cost.penalty(state.alphas, cfg, mode="Memory", budget=10**6)  # warm the cost tables eagerly
    counter = CompileCounterWithBackend("aot_eager")
    step = torch.compile(functools.partial(search_step, cfg=cfg), backend=counter)
    batches = [(make_batch(cfg.space, n=6, seed=s), make_batch(cfg.space, n=6, seed=s + 50)) for s in range(3)]
    s, m = step(state, *batches[0])
    s, _ = step(s, *batches[1])
    s, m = step(s, *batches[2])
    assert counter.frame_count == 1, "a later step recompiled (the schedule must be a tensor function of step)"
    eager = state
    for b in batches:
        eager, em = search_step(eager, *b, cfg=cfg)
    torch.testing.assert_close(m["beta_loss"], em["beta_loss"])
    for kind in s.alphas:
        torch.testing.assert_close(s.alphas[kind], eager.alphas[kind], rtol=1e-4, atol=1e-5)
