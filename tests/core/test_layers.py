"""Tests for fnas.layers: the functional conv / BN / pool / linear against torch.nn with the same weights."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fnas.core import layers as L

from conftest import make_gen, tol

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
DTYPES = [pytest.param(torch.float32, id="f32"), pytest.param(torch.float64, id="f64")]


def _x(shape, dtype=F64, seed=1):
    return torch.randn(*shape, generator=make_gen(seed), dtype=dtype)


def _kx1_or_2d(kx1: bool, T: int, c: int = 3, n: int = 2):
    """(N, C, T, 1) for kx1 tests, (N, C, T, T) for 2D ones."""
    return (n, c, T, 1) if kx1 else (n, c, T, T)


CONV_CASES = [
    # (kx1, k, stride, dilation, groups)
    pytest.param(True, 3, 1, 1, 1, id="kx1-k3"),
    pytest.param(True, 5, 2, 1, 1, id="kx1-k5-s2"),
    pytest.param(True, 7, 2, 1, 1, id="kx1-k7-s2"),
    pytest.param(True, 3, 2, 2, 3, id="kx1-dil2-depthwise-s2"),
    pytest.param(True, 1, 2, 1, 1, id="kx1-pointwise-s2"),
    pytest.param(False, 3, 1, 1, 1, id="2d-k3"),
    pytest.param(False, 5, 2, 1, 3, id="2d-k5-depthwise-s2"),
    pytest.param(False, 3, 2, 2, 3, id="2d-dil2-depthwise-s2"),
]


@pytest.mark.parametrize("T", [pytest.param(7, id="T7"), pytest.param(8, id="T8")])
@pytest.mark.parametrize("kx1, k, stride, dilation, groups", CONV_CASES)
def test_conv_matches_nn_conv2d(kx1, k, stride, dilation, groups, T):
    c_in, c_out = 3, 6
    params = L.init_conv(make_gen(0), c_in, c_out, L.kernel_shape(k, kx1), groups=groups, bias=True, dtype=F64)
    ksize = (k, 1) if kx1 else (k, k)
    ref = nn.Conv2d(
        c_in,
        c_out,
        ksize,
        stride=(stride, 1) if kx1 else stride,
        padding=(dilation * (k // 2), 0) if kx1 else dilation * (k // 2),
        dilation=(dilation, 1) if kx1 else dilation,
        groups=groups,
        bias=True,
    ).double()
    with torch.no_grad():
        ref.weight.copy_(params["weight"])
        ref.bias.copy_(params["bias"])
    x = _x(_kx1_or_2d(kx1, T, c_in))
    y = L.apply_conv(params, x, stride=stride, dilation=dilation, groups=groups)
    torch.testing.assert_close(y, ref(x), **tol(F64))
    t_out = math.ceil(T / stride)
    assert y.shape == ((2, c_out, t_out, 1) if kx1 else (2, c_out, t_out, t_out))


def test_kx1_conv_matches_nn_conv1d():
    params = L.init_conv(make_gen(0), 3, 4, L.kernel_shape(5, True), dtype=F64)
    ref = nn.Conv1d(3, 4, 5, stride=2, padding=2, bias=False).double()
    with torch.no_grad():
        ref.weight.copy_(params["weight"].squeeze(-1))
    x = _x((2, 3, 9, 1))
    torch.testing.assert_close(L.apply_conv(params, x, stride=2).squeeze(-1), ref(x.squeeze(-1)), **tol(F64))


def test_conv_init_is_torch_default_range_and_reproducible():
    a = L.init_conv(make_gen(3), 8, 16, (5, 1))
    b = L.init_conv(make_gen(3), 8, 16, (5, 1))
    c = L.init_conv(make_gen(4), 8, 16, (5, 1))
    assert a["weight"].shape == (16, 8, 5, 1) and "bias" not in a
    assert torch.equal(a["weight"], b["weight"]) and not torch.equal(a["weight"], c["weight"])
    bound = 1.0 / math.sqrt(8 * 5)
    assert float(a["weight"].abs().max()) <= bound
    assert float(a["weight"].abs().max()) > 0.9 * bound  # uses the whole range, not a narrower one
    dw = L.init_conv(make_gen(0), 8, 8, (3, 3), groups=8, dtype=F64)
    assert dw["weight"].shape == (8, 1, 3, 3) and dw["weight"].dtype == F64


def _bn_pair(c: int, affine: bool, dtype, seed: int = 0):
    """fnas BN params/stats with non-trivial values and an nn.BatchNorm2d holding the same ones."""
    params, stats = L.init_bn(c, affine=affine, dtype=dtype)
    g = make_gen(seed)
    stats = {
        "running_mean": torch.randn(c, generator=g, dtype=dtype),
        "running_var": torch.rand(c, generator=g, dtype=dtype) + 0.5,
    }
    ref = nn.BatchNorm2d(c, affine=affine, momentum=L.BN_MOMENTUM, eps=L.BN_EPS).to(dtype)
    if affine:
        params = {
            "weight": torch.rand(c, generator=g, dtype=dtype) + 0.5,
            "bias": torch.randn(c, generator=g, dtype=dtype),
        }
        with torch.no_grad():
            ref.weight.copy_(params["weight"])
            ref.bias.copy_(params["bias"])
    with torch.no_grad():
        ref.running_mean.copy_(stats["running_mean"])
        ref.running_var.copy_(stats["running_var"])
    return params, stats, ref


def test_init_bn():
    p, s = L.init_bn(5, affine=True, dtype=F64)
    assert torch.equal(p["weight"], torch.ones(5, dtype=F64)) and torch.equal(p["bias"], torch.zeros(5, dtype=F64))
    assert torch.equal(s["running_mean"], torch.zeros(5, dtype=F64))
    assert torch.equal(s["running_var"], torch.ones(5, dtype=F64))
    assert L.init_bn(5, affine=False)[0] == {}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [pytest.param(True, id="affine"), pytest.param(False, id="no-affine")])
@pytest.mark.parametrize("kx1", [pytest.param(True, id="kx1"), pytest.param(False, id="2d")])
@pytest.mark.parametrize("train", [pytest.param(True, id="train"), pytest.param(False, id="eval")])
def test_bn_matches_nn_batchnorm(train, kx1, affine, dtype):
    c = 3
    params, stats, ref = _bn_pair(c, affine, dtype)
    ref.train(train)
    before = {k: v.clone() for k, v in stats.items()}
    x = _x(_kx1_or_2d(kx1, 6, c), dtype=dtype) * 2.0 + 1.0
    y, new = L.apply_bn(params, stats, x, train=train)
    torch.testing.assert_close(y, ref(x), **tol(dtype))
    # Running statistics: equal to nn.BatchNorm's after its forward (unbiased variance update).
    torch.testing.assert_close(new["running_mean"], ref.running_mean, **tol(dtype))
    torch.testing.assert_close(new["running_var"], ref.running_var, **tol(dtype))
    # The input statistics are never mutated.
    assert all(torch.equal(stats[k], before[k]) for k in stats)
    if train:
        assert not torch.equal(new["running_mean"], before["running_mean"])
        assert new["running_mean"] is not stats["running_mean"]
    else:
        assert all(torch.equal(new[k], before[k]) for k in stats)


def test_bn_kx1_equals_batchnorm1d():
    params, stats, _ = _bn_pair(4, True, F64)
    ref = nn.BatchNorm1d(4).double()
    with torch.no_grad():
        ref.weight.copy_(params["weight"])
        ref.bias.copy_(params["bias"])
        ref.running_mean.copy_(stats["running_mean"])
        ref.running_var.copy_(stats["running_var"])
    x = _x((3, 4, 10, 1))
    y, new = L.apply_bn(params, stats, x, train=True)
    torch.testing.assert_close(y.squeeze(-1), ref(x.squeeze(-1)), **tol(F64))
    torch.testing.assert_close(new["running_var"], ref.running_var, **tol(F64))


def test_bn_under_grad_does_not_mutate_stats():
    params, stats, _ = _bn_pair(3, True, F64)
    before = {k: v.clone() for k, v in stats.items()}
    x = _x((4, 3, 5, 1))
    g = torch.func.grad(lambda p: L.apply_bn(p, stats, x, train=True)[0].pow(2).sum())(params)
    assert all(torch.equal(stats[k], before[k]) for k in stats)
    assert float(g["weight"].abs().sum()) > 0


def test_batch_norm_raw_tensors_returns_new_stats():
    mean, var = torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64)
    x = _x((4, 3, 5, 1))
    y, m, v = L.batch_norm(x, mean, var, None, None, train=True)
    assert torch.equal(mean, torch.zeros(3, dtype=F64)) and torch.equal(var, torch.ones(3, dtype=F64))
    torch.testing.assert_close(m, 0.1 * x.mean(dim=(0, 2, 3)), **tol(F64))
    y_eval, m2, v2 = L.batch_norm(x, mean, var, None, None, train=False)
    assert m2 is mean and v2 is var
    torch.testing.assert_close(y_eval, x / math.sqrt(1 + L.BN_EPS), **tol(F64))


POOL_CASES = [
    pytest.param(True, 1, id="kx1-s1"),
    pytest.param(True, 2, id="kx1-s2"),
    pytest.param(False, 1, id="2d-s1"),
    pytest.param(False, 2, id="2d-s2"),
]


@pytest.mark.parametrize("T", [pytest.param(7, id="T7"), pytest.param(8, id="T8")])
@pytest.mark.parametrize("kx1, stride", POOL_CASES)
def test_pools_match_nn(kx1, stride, T):
    k = 3
    x = _x(_kx1_or_2d(kx1, T))
    if kx1:
        kw = dict(kernel_size=(k, 1), stride=(stride, 1), padding=(k // 2, 0))
    else:
        kw = dict(kernel_size=k, stride=stride, padding=k // 2)
    torch.testing.assert_close(L.max_pool(x, k, stride), nn.MaxPool2d(**kw)(x), **tol(F64))
    avg = L.avg_pool(x, k, stride)
    torch.testing.assert_close(avg, nn.AvgPool2d(**kw, count_include_pad=False)(x), **tol(F64))
    t_out = math.ceil(T / stride)
    assert avg.shape[2] == t_out and avg.shape[3] == (1 if kx1 else t_out)


def test_avg_pool_ignores_padding():
    x = torch.ones(1, 1, 5, 1, dtype=F64)
    torch.testing.assert_close(L.avg_pool(x, 3, 1), x, **tol(F64))  # borders are 1, not 2/3


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_matches_nn_linear(dtype):
    params = L.init_linear(make_gen(0), 6, 4, dtype=dtype)
    ref = nn.Linear(6, 4).to(dtype)
    with torch.no_grad():
        ref.weight.copy_(params["weight"])
        ref.bias.copy_(params["bias"])
    x = _x((5, 6), dtype=dtype)
    torch.testing.assert_close(L.apply_linear(params, x), ref(x), **tol(dtype))
    assert float(params["weight"].abs().max()) <= 1 / math.sqrt(6)


@pytest.mark.parametrize("shape", [pytest.param((2, 3, 7, 1), id="kx1"), pytest.param((2, 3, 5, 4), id="2d")])
def test_global_avg_pool(shape):
    x = _x(shape)
    torch.testing.assert_close(L.global_avg_pool(x), x.mean(dim=(2, 3)), **tol(F64))


@pytest.mark.parametrize(
    "shape, stride, expected",
    [
        pytest.param((1, 2, 7, 1), 2, (1, 2, 4, 1), id="kx1-odd"),
        pytest.param((1, 2, 8, 1), 2, (1, 2, 4, 1), id="kx1-even"),
        pytest.param((1, 2, 7, 5), 2, (1, 2, 4, 3), id="2d"),
        pytest.param((1, 2, 7, 5), 1, (1, 2, 7, 5), id="stride1"),
    ],
)
def test_subsample_grid_matches_strided_conv(shape, stride, expected):
    x = _x(shape)
    y = L.subsample(x, stride)
    assert y.shape == expected
    # The subsampled grid is the grid of a strided 'same' 1x1 convolution.
    ident = {"weight": torch.eye(2, dtype=F64).reshape(2, 2, 1, 1)}
    torch.testing.assert_close(y, L.apply_conv(ident, x, stride=stride), **tol(F64))


def test_to_layout_is_channels_last_and_value_preserving():
    x = _x((2, 3, 5, 4))
    y = L.to_layout(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, x)
