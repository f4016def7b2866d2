"""Tests for fnas.primitives: output grids of every primitive, references for the DARTS ops, the registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fnas.core import layers as L
from fnas.spaces import primitives as P
from fnas.core import tree
from fnas.spaces.cell.supernet import apply_supernet, init_supernet

from conftest import make_batch, make_gen, tiny_space, tol

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
C = 4

CASES = (
    [pytest.param(name, True, id=f"kx1-{name}") for name in P.SEED_KX1 + P.KX1_EXTRA + P.KX1_WIDE]
    + [pytest.param(name, False, id=f"2d-{name}") for name in P.DARTS_2D]
)


def _input(kx1: bool, T: int, dtype=F64, seed: int = 1) -> torch.Tensor:
    shape = (3, C, T, 1) if kx1 else (3, C, T, T)
    return L.to_layout(torch.randn(*shape, generator=make_gen(seed), dtype=dtype))


def test_sets_are_registered_and_kinds_fit():
    for name in P.SEED_KX1 + P.KX1_EXTRA + P.KX1_WIDE:
        assert P.get(name).kind in ("1d", "any"), name
    for name in P.DARTS_2D:
        assert P.get(name).kind in ("2d", "any"), name
    assert set(P.SEED_KX1 + P.KX1_EXTRA + P.KX1_WIDE + P.DARTS_2D) <= set(P.names())
    assert set(P.LEAN_KX1) <= set(P.SEED_KX1 + P.KX1_EXTRA + P.KX1_WIDE) and "none" in P.LEAN_KX1


@pytest.mark.parametrize("stride", [pytest.param(1, id="s1"), pytest.param(2, id="s2")])
@pytest.mark.parametrize("T", [pytest.param(7, id="T7"), pytest.param(8, id="T8")])
@pytest.mark.parametrize("name, kx1", CASES)
def test_primitive_output_grid_and_purity(name, kx1, T, stride):
    prim = P.get(name)
    params, stats = prim.init(make_gen(0), C, stride, affine=False, dtype=F64)
    x = _input(kx1, T)
    x0, p0, s0 = x.clone(), tree.clone(params), tree.clone(stats)
    y, new = prim.apply(params, stats, x, stride=stride, train=True)
    t_out = math.ceil(T / stride)
    assert y.shape == ((3, C, t_out, 1) if kx1 else (3, C, t_out, t_out))
    assert y.dtype == F64 and bool(torch.isfinite(y).all())
    # Pure: inputs untouched; stats come back with the same structure.
    assert torch.equal(x, x0) and tree.all_equal(params, p0) and tree.all_equal(stats, s0)
    assert tree.all_equal(tree.zeros_like(new), tree.zeros_like(stats))
    if tree.size(stats):  # BN inside: training moves the running statistics
        assert not tree.all_equal(new, stats)
    y_eval, same = prim.apply(params, stats, x, stride=stride, train=False)
    assert y_eval.shape == y.shape
    assert tree.all_equal(same, stats)
    if name == "none":
        assert float(y.abs().sum()) == 0.0


def test_init_is_reproducible_from_the_generator():
    a = P.get("sep_conv_5x1").init(make_gen(7), C, 1, affine=False, dtype=F64)
    b = P.get("sep_conv_5x1").init(make_gen(7), C, 1, affine=False, dtype=F64)
    c = P.get("sep_conv_5x1").init(make_gen(8), C, 1, affine=False, dtype=F64)
    assert tree.all_equal(a, b) and not tree.all_equal(a[0], c[0])


def test_affine_flag_adds_bn_parameters():
    p_aff, _ = P.get("conv_bn_relu_3x1").init(make_gen(0), C, 1, affine=True, dtype=F64)
    p_no, _ = P.get("conv_bn_relu_3x1").init(make_gen(0), C, 1, affine=False, dtype=F64)
    assert tree.size(p_aff) == tree.size(p_no) + 2 * C


# --- references: the DARTS / seed modules written with torch.nn -------------------------------


def _conv(w: torch.Tensor, kx1: bool, stride: int = 1, dilation: int = 1, groups: int = 1) -> nn.Conv2d:
    k = w.shape[2]
    conv = nn.Conv2d(
        w.shape[1] * groups,
        w.shape[0],
        (k, 1) if kx1 else (k, k),
        stride=(stride, 1) if kx1 else stride,
        padding=(dilation * (k // 2), 0) if kx1 else dilation * (k // 2),
        dilation=(dilation, 1) if kx1 else dilation,
        groups=groups,
        bias=False,
    ).double()
    with torch.no_grad():
        conv.weight.copy_(w)
    return conv


def _bn() -> nn.BatchNorm2d:
    return nn.BatchNorm2d(C, affine=False).double()


def _reference(name: str, params: dict, kx1: bool, stride: int) -> nn.Module:
    if name.startswith("conv_bn_relu"):
        return nn.Sequential(_conv(params["conv"]["weight"], kx1, stride), _bn(), nn.ReLU())
    if name.startswith("sep_conv"):
        return nn.Sequential(
            nn.ReLU(), _conv(params["dw1"]["weight"], kx1, stride, groups=C),
            _conv(params["pw1"]["weight"], kx1), _bn(),
            nn.ReLU(), _conv(params["dw2"]["weight"], kx1, 1, groups=C),
            _conv(params["pw2"]["weight"], kx1), _bn(),
        )
    if name.startswith("dil_conv"):
        return nn.Sequential(
            nn.ReLU(), _conv(params["dw"]["weight"], kx1, stride, dilation=2, groups=C),
            _conv(params["pw"]["weight"], kx1), _bn(),
        )
    raise AssertionError(name)


REF_CASES = [
    pytest.param(n, True, id=f"kx1-{n}") for n in P.SEED_KX1 + P.KX1_EXTRA + P.KX1_WIDE if "conv" in n
] + [pytest.param(n, False, id=f"2d-{n}") for n in P.DARTS_2D if "conv" in n]


@pytest.mark.parametrize("stride", [pytest.param(1, id="s1"), pytest.param(2, id="s2")])
@pytest.mark.parametrize("name, kx1", REF_CASES)
def test_conv_primitives_match_torch_nn_reference(name, kx1, stride):
    prim = P.get(name)
    params, stats = prim.init(make_gen(0), C, stride, affine=False, dtype=F64)
    ref = _reference(name, params, kx1, stride).train()
    x = _input(kx1, 8)
    y, new = prim.apply(params, stats, x, stride=stride, train=True)
    torch.testing.assert_close(y, ref(x), **tol(F64))
    # Running statistics agree with the reference BatchNorms (same order of the BN layers).
    bns = [m for m in ref.modules() if isinstance(m, nn.BatchNorm2d)]
    want = sorted(float(t.sum()) for m in bns for t in (m.running_mean, m.running_var))
    got = sorted(float(t.sum()) for t in tree.leaves(new))
    assert got == pytest.approx(want, rel=1e-10, abs=1e-12)
    ref.eval()
    y_eval, _ = prim.apply(params, new, x, stride=stride, train=False)
    torch.testing.assert_close(y_eval, ref(x), **tol(F64))


@pytest.mark.parametrize("kx1", [pytest.param(True, id="kx1"), pytest.param(False, id="2d")])
def test_skip_connect_stride2_is_darts_factorized_reduce(kx1):
    prim = P.get("skip_connect")
    params, stats = prim.init(make_gen(0), C, 2, affine=False, dtype=F64)
    x = _input(kx1, 8)  # even length: DARTS' FactorizedReduce is defined there
    y, _ = prim.apply(params, stats, x, stride=2, train=True)
    conv1 = _conv(params["conv1"]["weight"], kx1, 2)
    conv2 = _conv(params["conv2"]["weight"], kx1, 2)
    r = torch.relu(x)
    shifted = r[:, :, 1:, :] if kx1 else r[:, :, 1:, 1:]
    ref = _bn().train()(torch.cat([conv1(r), conv2(shifted)], dim=1))
    torch.testing.assert_close(y, ref, **tol(F64))


def test_skip_connect_stride1_is_identity():
    x = _input(True, 7)
    y, _ = P.get("skip_connect").apply({}, {}, x, stride=1, train=True)
    assert torch.equal(y, x)


def test_skip_connect_stride2_needs_even_channels():
    with pytest.raises(ValueError, match="even channel count"):
        P.get("skip_connect").init(make_gen(0), 5, 2, affine=False, dtype=F64)


# --- the registry -------------------------------------------------------------------------------


def _scale_primitive(name: str) -> P.Primitive:
    """A user primitive: per-channel learnable scale on the strided grid (params (1, C, 1, 1))."""

    def init(gen, C, stride, *, affine, dtype):
        return {"scale": 1.0 + 0.1 * torch.randn(1, C, 1, 1, generator=gen, dtype=dtype)}, {}

    def apply(params, stats, x, *, stride, train):
        return L.subsample(x, stride) * params["scale"], stats

    return P.Primitive(name, init, apply, kind="any", family="conv")


def _is_scale_leaf(t: torch.Tensor) -> bool:
    return t.ndim == 4 and t.shape[0] == 1 and t.shape[2:] == (1, 1)


@pytest.mark.parametrize("fused", [pytest.param(True, id="fused"), pytest.param(False, id="plain")])
def test_registered_primitive_works_in_space_and_supernet(temp_primitives, fused):
    temp_primitives(_scale_primitive("test_channel_scale"))
    assert "test_channel_scale" in P.names()
    space = tiny_space(primitives=("none", "skip_connect", "test_channel_scale"), fused=fused)
    weights, alphas, stats = init_supernet(space, make_gen(0), dtype=F64)
    scale_leaves = [t for t in tree.leaves(weights) if _is_scale_leaf(t)]
    assert len(scale_leaves) == space.layers * space.num_edges
    x, y = make_batch(space, dtype=F64)

    def loss(w):
        logits, _ = apply_supernet(w, alphas, stats, x, cfg=space, train=True)
        return torch.nn.functional.cross_entropy(logits, y)

    grads = torch.func.grad(loss)(weights)
    scale_grads = [g for g, w in zip(tree.leaves(grads), tree.leaves(weights)) if _is_scale_leaf(w)]
    assert len(scale_grads) == len(scale_leaves)
    assert all(float(g.abs().sum()) > 0 for g in scale_grads), "a custom primitive's parameter got no gradient"


def test_duplicate_registration_raises(temp_primitives):
    temp_primitives(_scale_primitive("test_dup"))
    with pytest.raises(ValueError, match="'test_dup' is already registered"):
        P.register(_scale_primitive("test_dup"))
    with pytest.raises(ValueError, match="'skip_connect' is already registered"):
        P.register(_scale_primitive("skip_connect"))
    replacement = _scale_primitive("test_dup")
    temp_primitives(replacement, overwrite=True)
    assert P.get("test_dup") is replacement


def test_register_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind must be"):
        P.register(P.Primitive("test_bad_kind", _scale_primitive("x").init, _scale_primitive("x").apply, kind="3d"))
    assert "test_bad_kind" not in P.names()


def test_unknown_name_lists_the_known_names():
    with pytest.raises(ValueError, match=r"Unknown primitive 'conv_bn_relu_11x1'") as err:
        P.get("conv_bn_relu_11x1")
    for name in ("conv_bn_relu_3x1", "sep_conv_3x3", "none"):
        assert repr(name) in str(err.value)
    assert "register" in str(err.value)
