"""Tests for fnas.train_cnn_search: the seed's ``search_and_get_model(args)`` entry point."""

from __future__ import annotations

import argparse
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fnas.spaces.cell import genotype as genotypes
from fnas.spaces.cell.genotype import validate_genotype
from fnas.spaces.cell.network import NetworkCnn
from fnas.app.seed_api import config_from_args, search_and_get_model

pytestmark = pytest.mark.usefixtures("single_thread")

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback of gpu=0")


def _loader(n: int, seed: int, *, T: int = 8, channels: int = 1, three_d: bool = False) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, T, generator=g)
    if not three_d:
        x = x.unsqueeze(-1)  # the seed's (N, C, T, 1)
    y = torch.arange(n) % 3
    return DataLoader(TensorDataset(x, y), batch_size=4)


def seed_args(**changes) -> argparse.Namespace:
    """Every field of the seed README's argument table, at tiny sizes."""
    fields = dict(
        gpu=0,
        nas_init_channels=4,
        num_classes=3,
        nas_layers=3,
        in_channels=1,
        with_input_batchnorm=True,
        nas_nodes_per_layer=2,
        nas_multiplier=2,
        nas_stem_multiplier=1,
        lr=0.025,
        momentum=0.9,
        weight_decay=3e-4,
        nas_budget=1,
        nas_optimization_mode="Memory",
        grad_clip=5,
        unrolled=False,
        train_loader=_loader(8, 0),
        valid_loader=_loader(8, 1),
        mode="cnn",
        arch_learning_rate=3e-4,
        arch_weight_decay=1e-3,
        progress=False,  # optional field: no progress bars in tests
    )
    fields.update(changes)
    return argparse.Namespace(**fields)


@no_cuda
@pytest.mark.parametrize("unrolled", [pytest.param(False, id="first-order"), pytest.param(True, id="unrolled")])
def test_seed_namespace_returns_a_network_and_warns_about_cuda(unrolled):
    args = seed_args(unrolled=unrolled)
    with pytest.warns(UserWarning, match=r"args\.gpu=0 but CUDA is not available"):
        model = search_and_get_model(args)
    assert isinstance(model, NetworkCnn)
    validate_genotype(model.genotype, nodes=2, multiplier=2)
    assert model.search_result.genotype == model.genotype
    assert int(model.search_result.state.step) == 2  # nas_budget=1 epoch of 2 batches
    assert all(p.device.type == "cpu" for p in model.parameters())
    x, _ = next(iter(args.train_loader))
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (4, 3)


@pytest.mark.parametrize("gpu", [pytest.param(None, id="None"), pytest.param(-1, id="-1")])
def test_cpu_request_does_not_warn(gpu):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = search_and_get_model(seed_args(gpu=gpu))
    assert isinstance(model, NetworkCnn)


@pytest.mark.parametrize(
    "missing",
    [
        pytest.param(("nas_layers",), id="nas_layers"),
        pytest.param(("momentum", "arch_weight_decay"), id="two-fields"),
        pytest.param(("valid_loader",), id="valid_loader"),
    ],
)
def test_missing_fields_are_listed(missing):
    args = seed_args()
    for name in missing:
        delattr(args, name)
    with pytest.raises(ValueError, match="missing required fields") as err:
        search_and_get_model(args)
    for name in missing:
        assert repr(name) in str(err.value)


def test_missing_train_loader():
    args = seed_args()
    del args.train_loader
    with pytest.raises(ValueError, match=r"args\.train_loader is required"):
        search_and_get_model(args)


def test_three_d_batches_explain_the_layout():
    args = seed_args(train_loader=_loader(8, 0, three_d=True), valid_loader=_loader(8, 1, three_d=True))
    with pytest.raises(ValueError, match=r"\(N, C, T, 1\).*got \(4, 1, 8\).*unsqueeze\(-1\)"):
        search_and_get_model(args)


@pytest.mark.parametrize(
    "changes, match",
    [
        pytest.param(dict(mode="rnn"), r"args\.mode must be 'cnn'", id="mode"),
        pytest.param(dict(nas_budget=0), r"nas_budget .* must be a positive int", id="budget"),
        pytest.param(dict(gpu="cuda"), r"args\.gpu must be a CUDA device index", id="gpu-string"),
        pytest.param(dict(in_channels=2), r"has 1 channels .* expects 2; set in_channels=1", id="channels"),
        pytest.param(dict(nas_multiplier=3), r"multiplier \(3\) must be <= nodes \(2\)", id="multiplier"),
    ],
)
def test_invalid_arguments(changes, match):
    with pytest.raises(ValueError, match=match):
        search_and_get_model(seed_args(**{"gpu": None, **changes}))  # gpu=None: no CUDA warning here


def test_config_from_args_maps_the_seed_fields():
    cfg = config_from_args(seed_args(unrolled=True), (8, 1))
    space = cfg.space
    assert (space.C, space.num_classes, space.layers, space.in_channels) == (4, 3, 3, 1)
    assert (space.nodes, space.multiplier, space.stem_multiplier, space.input_shape) == (2, 2, 1, (8, 1))
    assert space.primitives == tuple(genotypes.PRIMITIVES_CNN)
    assert cfg.hypergrad == "exact"
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.grad_clip) == (0.025, 0.9, 3e-4, 5)
    assert (cfg.arch_lr, cfg.arch_weight_decay) == (3e-4, 1e-3)
    assert config_from_args(seed_args(), (8, 1)).hypergrad == "first_order"
