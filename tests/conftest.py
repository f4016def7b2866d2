"""Shared tiny fixtures: small spaces, batches, tolerances, and clean-up for registry / OPS edits."""

from __future__ import annotations

import pytest
import torch

from fnas.spaces.primitives import modules as O
from fnas.spaces import primitives as P
from fnas.search.config import SearchConfig
from fnas.spaces.cell.config import SpaceConfig

# Explicit dtype-dependent tolerances for reference checks.
TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float64: dict(rtol=1e-10, atol=1e-11),
}


def tol(dtype: torch.dtype) -> dict:
    """``assert_close`` tolerances for ``dtype``."""
    return TOL[dtype]


def make_gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_space(**changes) -> SpaceConfig:
    """C=4, 3 cells (cells 1 and 2 reduce), 2 nodes, kx1 input of length 8."""
    kwargs = dict(
        C=4, num_classes=3, layers=3, in_channels=2, input_shape=(8, 1), nodes=2, multiplier=2, stem_multiplier=1
    )
    kwargs.update(changes)
    return SpaceConfig(**kwargs)


def tiny_space_2d(**changes) -> SpaceConfig:
    """The 2D (DARTS) counterpart of :func:`tiny_space`: 3 input channels, 6x6 images."""
    kwargs = dict(in_channels=3, input_shape=(6, 6), primitives=P.DARTS_2D)
    kwargs.update(changes)
    return tiny_space(**kwargs)


def tiny_search(**changes) -> SearchConfig:
    space = changes.pop("space", None) or tiny_space()
    kwargs = dict(space=space, arch_lr=0.05, total_steps=10)
    kwargs.update(changes)
    return SearchConfig(**kwargs)


def make_batch(space: SpaceConfig, n: int = 4, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A random ``(x, y)`` batch that fits ``space``; every class appears when ``n >= num_classes``."""
    g = make_gen(seed)
    x = torch.randn(n, space.in_channels, *space.input_shape, generator=g, dtype=dtype)
    y = torch.arange(n) % space.num_classes
    return x, y


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a module of tiny-tensor tests.

    Tensors of a few KB gain nothing from a second thread, and when the two cores are shared with
    other processes OpenMP's barriers make each kernel call ~100x slower (measured: a 4x8x12 max-pool
    8 ms with 2 threads under load, 0.02 ms with 1).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def temp_primitives():
    """``add(primitive)`` registers a primitive for one test; it is removed again afterwards."""
    added: list[str] = []

    def add(primitive: P.Primitive, **kwargs) -> P.Primitive:
        P.register(primitive, **kwargs)
        added.append(primitive.name)
        return primitive

    yield add
    for name in added:
        P.unregister(name)


@pytest.fixture
def seed_ops():
    """``fnas.spaces.primitives.modules.OPS`` for one test: entries added (the seed's way) are removed afterwards."""
    before = dict(O.OPS)
    yield O.OPS
    for name in set(O.OPS) - set(before):
        del O.OPS[name]
    O.OPS.update(before)


# Tests that run whole jobs (the CLI end to end, bench scripts) or several processes (torchrun,
# gloo) carry a marker, so a quick local run can leave them out:
#     pytest -m "not slow and not e2e and not multiprocess"
# Plain `pytest` (and .ci/run) runs them, as before.
_E2E_DIRS = ("cli", "bench")
_MULTIPROCESS_FILES = ("test_distributed.py",)


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = item.path
        if path.name in _MULTIPROCESS_FILES:
            item.add_marker(pytest.mark.multiprocess)
        if path.parent.name in _E2E_DIRS:
            item.add_marker(pytest.mark.e2e)
