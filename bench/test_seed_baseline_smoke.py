"""Smoke tests for the seed-style stateful DARTS baseline (bench/seed_baseline.py).

Checks that the baseline runs and updates the alphas, and that its
finite-difference unrolled architecture gradient matches an exact autograd
double-backward of d/dalpha L_val(w'(alpha), alpha) in float64 (i.e. it is a
correct DARTS, not a strawman).  Also prints one 1-thread timing at the
default config (run with ``-s`` to see it).

About the finite-difference step: d_alpha L_train(w) is only piecewise smooth
in w (ReLU and max-pool kinks), so the DARTS step R = 0.01/||v|| straddles
kinks and its error is not O(R^2) on the real network (measured ~1.7 relative
error at the tiny config, vs 2e-9 with r = 1e-5).  We therefore check
(a) the real network with a small r, and (b) the DARTS default r = 0.01 on a
smoothed copy (ReLU -> Softplus, MaxPool -> AvgPool), where the central
difference is O(R^2)-accurate.
"""

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parent))
import seed_baseline as sb  # noqa: E402

TINY = dict(C=4, layers=3, input_len=16)
BATCH = 4


def _batch(cfg, n, dtype=torch.float32):
    x = torch.randn(n, cfg.in_channels, cfg.input_len, 1, dtype=dtype)
    y = torch.randint(0, cfg.num_classes, (n,))
    return x, y


def _cat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


def _smooth_(model):
    """Replace ReLU by Softplus and MaxPool by AvgPool, in place (no params)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, name, nn.Softplus())
            elif isinstance(child, nn.MaxPool2d):
                setattr(
                    parent,
                    name,
                    nn.AvgPool2d(
                        child.kernel_size, child.stride, child.padding,
                        count_include_pad=False,
                    ),
                )


def test_network_shapes_and_edges():
    cfg = sb.BaselineConfig(**TINY)
    net = sb.Network(cfg)
    assert net.alphas_normal.shape == (10, 7)
    assert net.alphas_reduce.shape == (10, 7)
    assert [c.reduction for c in net.cells] == [False, True, True]
    assert all(len(c._ops) == 10 for c in net.cells)
    # edges leaving the input state of a reduction cell are strided
    red = net.cells[1]
    x = torch.randn(2, 4 * 4, 16, 1)
    assert red(x, torch.softmax(net.alphas_reduce, -1)).shape == (2, 4 * 8, 8, 1)
    out = net(_batch(cfg, BATCH)[0])
    assert out.shape == (BATCH, cfg.num_classes)
    names = {n for n, _ in net.named_weights()}
    assert "alphas_normal" not in names and "alphas_reduce" not in names
    assert len(net.weights()) + 2 == len(list(net.parameters()))


@pytest.mark.parametrize("unrolled", [False, True])
def test_step_runs_and_updates_alphas(unrolled):
    torch.manual_seed(0)
    cfg = sb.BaselineConfig(**TINY)
    search = sb.BaselineSearch(cfg)
    a0 = [a.detach().clone() for a in search.model.arch_parameters()]
    w0 = [w.detach().clone() for w in search.weights]
    loss = search.step(_batch(cfg, BATCH), _batch(cfg, BATCH), unrolled=unrolled)
    assert isinstance(loss, float) and math.isfinite(loss)
    for a, b in zip(search.model.arch_parameters(), a0):
        assert not torch.equal(a.detach(), b)
    assert any(not torch.equal(w.detach(), b) for w, b in zip(search.weights, w0))
    # a second step (now with SGD momentum buffers) also works
    loss2 = search.step(_batch(cfg, BATCH), _batch(cfg, BATCH), unrolled=unrolled)
    assert math.isfinite(loss2)


def _check_unrolled_against_autograd(seed, smooth, r):
    torch.manual_seed(seed)
    dtype = torch.float64
    cfg = sb.BaselineConfig(**TINY)
    search = sb.BaselineSearch(cfg, dtype=dtype)
    if smooth:
        _smooth_(search.model)
        _smooth_(search.architect.unrolled_model)
    search.architect.r = r
    # one real step first so the SGD momentum buffers are non-zero
    search.step(_batch(cfg, BATCH, dtype), _batch(cfg, BATCH, dtype), unrolled=False)

    model, arch = search.model, search.architect
    xt, yt = _batch(cfg, BATCH, dtype)
    xv, yv = _batch(cfg, BATCH, dtype)

    # --- reference: exact autograd through the virtual SGD step -------------
    names = [n for n, _ in model.named_weights()]
    w = [p.detach().clone().requires_grad_(True) for p in model.weights()]
    a = [p.detach().clone().requires_grad_(True) for p in model.arch_parameters()]
    bufs = [search.optimizer.state[p]["momentum_buffer"] for p in model.weights()]
    lr, mom, wd = cfg.lr, cfg.momentum, cfg.weight_decay

    def loss_fn(ws, alphas, x, y):
        params = dict(zip(names, ws))
        params["alphas_normal"], params["alphas_reduce"] = alphas
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    g = torch.autograd.grad(loss_fn(w, a, xt, yt), w, create_graph=True)
    w_virtual = [wi - lr * (mom * b + gi + wd * wi) for wi, b, gi in zip(w, bufs, g)]
    ref_total = torch.autograd.grad(loss_fn(w_virtual, a, xv, yv), a)
    ref_direct = torch.autograd.grad(
        loss_fn([t.detach() for t in w_virtual], a, xv, yv), a
    )

    # --- baseline: DARTS finite-difference unrolled gradient ----------------
    w_before = [p.detach().clone() for p in model.weights()]
    grad_alpha, dalpha, implicit = arch.unrolled_grads(xt, yt, xv, yv)
    for p, q in zip(model.weights(), w_before):  # HVP restores the weights
        torch.testing.assert_close(p.detach(), q, rtol=0, atol=1e-12)

    # direct term d_alpha L_val(w', alpha): identical up to round-off
    torch.testing.assert_close(_cat(dalpha), _cat(ref_direct), rtol=1e-8, atol=1e-12)
    # implicit (second-order) term: exact value is -lr * H_{alpha w} v
    ref_implicit = _cat(ref_total) - _cat(ref_direct)
    fd_implicit = -lr * _cat(implicit)
    assert ref_implicit.norm() > 0
    rel = ((fd_implicit - ref_implicit).norm() / ref_implicit.norm()).item()
    rel_total = ((_cat(grad_alpha) - _cat(ref_total)).norm() / _cat(ref_total).norm()).item()
    print(f"\n[smooth={smooth}, r={r:g}] implicit rel err {rel:.2e}, total rel err {rel_total:.2e}")
    assert rel < 1e-2, f"implicit gradient relative error {rel:.3e}"
    assert rel_total < 1e-2, f"total alpha gradient relative error {rel_total:.3e}"

    # and the full step applies exactly that gradient through Adam
    a_before = [p.detach().clone() for p in model.arch_parameters()]
    search.step((xt, yt), (xv, yv), unrolled=True)
    assert all(not torch.equal(p.detach(), q) for p, q in zip(model.arch_parameters(), a_before))


def test_unrolled_gradient_matches_autograd_small_r():
    _check_unrolled_against_autograd(seed=1, smooth=False, r=1e-6)


def test_unrolled_gradient_matches_autograd_darts_r_smooth_net():
    _check_unrolled_against_autograd(seed=2, smooth=True, r=1e-2)


def test_print_default_timing_one_thread():
    torch.manual_seed(0)
    res = sb.time_steps(sb.BaselineConfig(), batch=64, threads=1, warmup=1, repeats=1)
    print(
        "\nseed baseline default config, 1 thread, batch 64: "
        f"first-order {res['first_order']:.3f} s/step, "
        f"unrolled {res['unrolled']:.3f} s/step"
    )
    assert res["first_order"] > 0 and res["unrolled"] > 0
