"""Tests for fnas.core.optim: the bound optimiser transformations against torch.optim, clipping, the cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch

from fnas.core import tree
from fnas.core.optim import adam, clip_by_global_norm, cosine_lr, sgd

F64 = torch.float64
TOL64 = dict(rtol=1e-12, atol=1e-12)


def _params(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "conv": {"weight": torch.randn(3, 2, 3, generator=g, dtype=F64)},
        "bias": torch.randn(4, generator=g, dtype=F64),
    }


def _grads(step: int) -> dict:
    """A different, deterministic gradient per step."""
    return _params(100 + step)


def _torch_run(opt_factory, params: dict, steps: int) -> list[torch.Tensor]:
    leaves = [p.clone().requires_grad_(True) for p in tree.leaves(params)]
    opt = opt_factory(leaves)
    for step in range(steps):
        for p, g in zip(leaves, tree.leaves(_grads(step))):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in leaves]


@pytest.mark.parametrize(
    "momentum, weight_decay",
    [pytest.param(0.9, 3e-4, id="darts"), pytest.param(0.0, 0.0, id="plain"), pytest.param(0.5, 0.1, id="strong-wd")],
)
def test_sgd_update_matches_torch_sgd(momentum, weight_decay):
    lr = 0.05
    params = _params()
    expected = _torch_run(
        lambda ps: torch.optim.SGD(ps, lr=lr, momentum=momentum, weight_decay=weight_decay), params, steps=3
    )
    opt = sgd(momentum=momentum, weight_decay=weight_decay)
    state = opt.init(params)
    p = params
    for step in range(3):
        p, state = opt.update(_grads(step), state, p, lr=lr)
    for got, want in zip(tree.leaves(p), expected):
        torch.testing.assert_close(got, want, **TOL64)


def test_sgd_update_is_pure_and_accepts_tensor_lr():
    params = _params()
    opt = sgd(momentum=0.9, weight_decay=1e-3)
    state = opt.init(params)
    p0, s0, g0 = tree.clone(params), tree.clone(state), tree.clone(_grads(0))
    new_p, new_s = opt.update(g0, state, params, lr=torch.tensor(0.1, dtype=F64))
    assert tree.all_equal(params, p0) and tree.all_equal(state, s0)
    assert not tree.all_equal(new_p, params)
    # First step: the buffer is g + wd * w (torch's "buf = d_p" on the first step).
    torch.testing.assert_close(new_s.momentum["bias"], g0["bias"] + 1e-3 * params["bias"], **TOL64)


@pytest.mark.parametrize(
    "betas, weight_decay",
    [pytest.param((0.5, 0.999), 1e-3, id="darts-arch"), pytest.param((0.9, 0.999), 0.0, id="default")],
)
def test_adam_update_matches_torch_adam(betas, weight_decay):
    lr = 3e-2
    params = _params()
    expected = _torch_run(
        lambda ps: torch.optim.Adam(ps, lr=lr, betas=betas, weight_decay=weight_decay, foreach=False),
        params,
        steps=3,
    )
    opt = adam(betas=betas, weight_decay=weight_decay)
    state = opt.init(params)
    p = params
    for step in range(3):
        p, state = opt.update(_grads(step), state, p, lr=lr)
    assert int(state.count) == 3 and state.count.ndim == 0
    for got, want in zip(tree.leaves(p), expected):
        torch.testing.assert_close(got, want, **TOL64)


def test_adam_update_is_pure():
    params = _params()
    opt = adam(betas=(0.5, 0.999), weight_decay=1e-3)
    state = opt.init(params)
    p0, s0 = tree.clone(params), tree.clone(state)
    opt.update(_grads(0), state, params, lr=0.1)
    assert tree.all_equal(params, p0) and tree.all_equal(state, s0)


@pytest.mark.parametrize("weight_decay", [pytest.param(0.0, id="no-wd"), pytest.param(0.1, id="wd")])
def test_sgd_nesterov_matches_torch_sgd(weight_decay):
    lr = 0.05
    params = _params()
    expected = _torch_run(
        lambda ps: torch.optim.SGD(ps, lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True), params, steps=3
    )
    opt = sgd(momentum=0.9, weight_decay=weight_decay, nesterov=True)
    state, p = opt.init(params), params
    for step in range(3):
        p, state = opt.update(_grads(step), state, p, lr=lr)
    for got, want in zip(tree.leaves(p), expected):
        torch.testing.assert_close(got, want, **TOL64)


@pytest.mark.parametrize(
    "make, match",
    [
        pytest.param(lambda: sgd(momentum=-0.1), "momentum >= 0", id="sgd-momentum"),
        pytest.param(lambda: sgd(nesterov=True), "needs momentum > 0", id="sgd-nesterov"),
        pytest.param(lambda: adam(betas=(1.0, 0.999)), "betas in", id="adam-betas"),
    ],
)
def test_bad_hyperparameters_fail_at_binding(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("max_norm", [pytest.param(0.5, id="clips"), pytest.param(1e6, id="no-op")])
def test_clip_by_global_norm_matches_clip_grad_norm(max_norm):
    grads = _grads(0)
    leaves = [torch.zeros_like(g, requires_grad=True) for g in tree.leaves(grads)]
    for p, g in zip(leaves, tree.leaves(grads)):
        p.grad = g.clone()
    want_norm = torch.nn.utils.clip_grad_norm_(leaves, max_norm)
    clipped, total = clip_by_global_norm(grads, max_norm)
    torch.testing.assert_close(total, want_norm, **TOL64)
    for got, p in zip(tree.leaves(clipped), leaves):
        torch.testing.assert_close(got, p.grad, **TOL64)
    if max_norm < float(want_norm):
        torch.testing.assert_close(tree.norm(clipped), torch.tensor(max_norm, dtype=F64), rtol=1e-5, atol=0)


@pytest.mark.parametrize(
    "step, expected",
    [
        pytest.param(0, 0.025, id="start"),
        pytest.param(50, 0.5 * (0.025 + 0.001), id="middle"),
        pytest.param(100, 0.001, id="end"),
        pytest.param(250, 0.001, id="past-end"),
    ],
)
def test_cosine_lr(step, expected):
    lr = cosine_lr(torch.tensor(step), lr=0.025, lr_min=0.001, total_steps=100)
    assert lr.ndim == 0
    assert math.isclose(float(lr), expected, rel_tol=1e-12, abs_tol=1e-15)


def test_cosine_lr_is_monotone():
    lrs = [float(cosine_lr(torch.tensor(t), lr=1.0, lr_min=0.1, total_steps=10)) for t in range(11)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
