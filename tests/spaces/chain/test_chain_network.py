"""fnas.spaces.chain supernet and ChainNetwork: shapes, purity, gradients, one-hot alphas == the network, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fnas.core import tree
from fnas.spaces.chain import IDENTITY, ChainGenotype, ChainSpaceConfig
from fnas.spaces.chain.supernet import tap_index, tap_masks

from chain_helpers import onehot_alphas, tiny
from conftest import make_gen, tol

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64


def _x(cfg, n=4, seed=0, dtype=F64):
    return torch.randn(n, cfg.in_channels, *cfg.input_shape, generator=make_gen(seed), dtype=dtype)


def test_init_shapes_and_alpha_keys():
    cfg = tiny()
    weights, alphas, stats = cfg.init(make_gen(0))
    assert sorted(alphas) == ["b0_op", "b0_width", "b1_op", "b1_width", "b2_op", "b2_width"]
    assert alphas["b1_op"].shape == (9,) and alphas["b2_width"].shape == (2,)
    assert alphas["b0_op"].abs().max() < 1e-2  # DARTS' 1e-3 * randn
    b1 = weights["blocks"]["b1"]
    assert b1["conv"]["weight"].shape == (4, 4, cfg.taps, 1)
    assert b1["sep"]["dw"].shape == (4, 1, cfg.taps, 1) and b1["sep"]["pw"].shape == (4, 4, 1, 1)
    assert weights["head"]["weight"].shape == (3, 6)
    assert set(stats["blocks"]["b2"]) == {"conv", "sep"}
    w2, a2, _ = cfg.init(make_gen(0))
    assert all(torch.equal(a, b) for a, b in zip(tree.leaves((weights, alphas)), tree.leaves((w2, a2))))


def test_tap_masks_are_centred_and_dilated():
    cfg = tiny()  # taps = (5 - 1) * 2 + 1 = 9
    assert cfg.taps == 9
    assert tap_index(9, 3, 2) == [2, 4, 6] and tap_index(9, 5, 1) == [2, 3, 4, 5, 6]
    masks = tap_masks(cfg, "conv")
    assert masks.shape == (4, 9) and masks.sum(1).tolist() == [3, 3, 5, 5]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_apply_is_pure_and_shapes_follow_strides(train):
    cfg = tiny()
    weights, alphas, stats = cfg.init(make_gen(0))
    before = [t.clone() for t in tree.leaves(stats)]
    logits, new = cfg.apply(weights, alphas, stats, _x(cfg, dtype=torch.float32), train=train)
    assert logits.shape == (4, 3) and torch.isfinite(logits).all()
    assert all(torch.equal(a, b) for a, b in zip(before, tree.leaves(stats)))
    changed = [not torch.equal(a, b) for a, b in zip(tree.leaves(stats), tree.leaves(new))]
    assert all(changed) if train else not any(changed)


def test_gradients_reach_alphas_and_weights_through_torch_func():
    cfg = tiny()
    weights, alphas, stats = cfg.init(make_gen(0), dtype=F64)
    x, y = _x(cfg), torch.tensor([0, 1, 2, 0])

    def loss(w, a):
        return F.cross_entropy(cfg.apply(w, a, stats, x, train=True)[0], y)

    gw, ga = torch.func.grad(loss, argnums=(0, 1))(weights, alphas)
    for key, g in ga.items():
        assert torch.isfinite(g).all() and g.abs().sum() > 0, key
    assert gw["blocks"]["b1"]["sep"]["dw"].abs().sum() > 0


def _trained_supernet(cfg, seed=0):
    """Supernet pytrees in float64 with non-trivial BN affine parameters and running statistics."""
    weights, alphas, stats = cfg.init(make_gen(seed), dtype=F64)
    gen = make_gen(seed + 1)
    weights = tree.map(lambda t: t + 0.1 * torch.randn(t.shape, generator=gen, dtype=F64), weights)
    for step in range(3):
        _, stats = cfg.apply(weights, alphas, stats, 2.0 * _x(cfg, n=8, seed=10 + step) + 0.5, train=True)
    return weights, stats


GENOTYPES = [
    pytest.param(ChainGenotype((("conv_k5_d2", 4), (IDENTITY, 4), ("sep_k3_d1", 3))), id="conv-identity-sep"),
    pytest.param(ChainGenotype((("sep_k3_d2", 2), ("conv_k3_d1", 4), ("conv_k5_d2", 6))), id="sep-conv-conv-strided"),
    pytest.param(ChainGenotype((("conv_k3_d1", 2), ("sep_k5_d2", 2), ("sep_k5_d1", 6))), id="narrow-sep-strided"),
]


@pytest.mark.parametrize("genotype", GENOTYPES)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_onehot_supernet_equals_the_network(genotype, train):
    cfg = tiny()
    weights, stats = _trained_supernet(cfg)
    net = cfg.network(genotype, gen=make_gen(5)).double()
    net.load_supernet(weights, stats)
    net.train(train)
    x = _x(cfg, n=6, seed=3)
    logits, new_stats = cfg.apply(weights, onehot_alphas(cfg, genotype), stats, x, train=train)
    torch.testing.assert_close(net(x), logits, **tol(F64))
    if train:  # the network's BN statistics moved exactly as the supernet's (on its channels)
        for b, (op, width) in enumerate(genotype.blocks):
            if op != IDENTITY:
                bn = net.blocks[b][-2]
                ref = new_stats["blocks"][f"b{b}"][op.split("_")[0]]["bn"]
                torch.testing.assert_close(bn.running_mean, ref["running_mean"][:width], **tol(F64))


def test_load_supernet_rejects_another_space():
    weights, stats = _trained_supernet(tiny())
    other = tiny(widths=(6, 6, 6))
    net = other.network(ChainGenotype((("conv_k3_d1", 6), (IDENTITY, 6), ("conv_k3_d1", 6))))
    with pytest.raises(ValueError, match="do not fit"):
        net.load_supernet(weights, stats)


def test_network_rejects_bad_input_and_non_members():
    cfg = tiny()
    net = cfg.network(ChainGenotype((("conv_k3_d1", 4), (IDENTITY, 4), ("conv_k3_d1", 6))))
    with pytest.raises(ValueError, match=r"expects \(N, 2, T, 1\)"):
        net(torch.randn(2, 2, 16, 3))
    with pytest.raises(ValueError, match="block 2"):
        cfg.network(ChainGenotype((("conv_k3_d1", 4), (IDENTITY, 4), ("conv_k3_d1", 5))))


def test_network_init_is_reproducible_from_gen():
    cfg = ChainSpaceConfig()
    g = cfg.fcn_genotype(8)
    a, b = cfg.network(g, gen=make_gen(1)), cfg.network(g, gen=make_gen(1))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_a_fresh_network_trains():
    cfg = tiny()
    torch.manual_seed(0)
    net = cfg.network(ChainGenotype((("conv_k5_d1", 4), ("sep_k3_d2", 4), ("conv_k3_d1", 6))), gen=make_gen(0))
    x, y = _x(cfg, n=12, dtype=torch.float32), torch.arange(12) % 3
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_apply_compiles_in_one_graph_with_the_same_gradients():
    cfg = tiny()
    weights, alphas, stats = cfg.init(make_gen(0))
    x = _x(cfg, dtype=torch.float32)

    def alpha_grad(w, a, s, x):
        return torch.func.grad(lambda a: cfg.apply(w, a, s, x, train=True)[0].square().mean())(a)

    compiled = torch.compile(alpha_grad, backend="aot_eager", fullgraph=True)  # fullgraph: no graph breaks
    got, want = compiled(weights, alphas, stats, x), alpha_grad(weights, alphas, stats, x)
    for key in want:
        torch.testing.assert_close(got[key], want[key], **tol(torch.float32))
