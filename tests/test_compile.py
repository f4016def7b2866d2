"""torch.compile of the whole search step (it contains the torch.func transforms) and vmap over searches."""

from __future__ import annotations

import functools

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from fnas import tree
from fnas.config import SearchConfig, SpaceConfig
from fnas.search import init_search, search_step, stack_states, unstack_state, vmapped_search_step

TINY = SpaceConfig(C=4, num_classes=3, layers=3, in_channels=2, input_shape=(16, 1), nodes=2, multiplier=2,
                   stem_multiplier=1)


pytestmark = pytest.mark.usefixtures("single_thread")  # conftest.py


def _batches(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 2, 16, 1, generator=g)
    y = torch.randint(0, 3, (8,), generator=g)
    return (x, y), (x.flip(0), y.flip(0))


def _max_diff(a, b) -> float:
    return max(float((u.double() - v.double()).abs().max()) for u, v in zip(tree.leaves(a), tree.leaves(b)))


@pytest.mark.parametrize("hypergrad", ["first_order", "exact"])
def test_search_step_compiles_whole_without_breaks_or_recompiles(hypergrad):
    torch._dynamo.reset()
    cfg = SearchConfig(space=TINY, hypergrad=hypergrad)
    state = init_search(cfg, torch.Generator().manual_seed(0))
    train, valid = _batches()
    counter = CompileCounterWithBackend("aot_eager")
    step = torch.compile(functools.partial(search_step, cfg=cfg), backend=counter)

    s1, m1 = step(state, train, valid)
    # one frame: the transforms were traced inside the graph, with no graph break and no eager fallback
    assert counter.frame_count == 1
    assert counter.op_count > 100
    s2, _ = step(s1, *_batches(1))
    s3, _ = step(s2, *_batches(2))
    assert counter.frame_count == 1, "a later step recompiled"

    e1, em1 = search_step(state, train, valid, cfg=cfg)
    e2, _ = search_step(e1, *_batches(1), cfg=cfg)
    assert _max_diff(s1, e1) < 1e-5
    assert _max_diff(s2, e2) < 1e-4
    assert abs(float(m1["train_loss"]) - float(em1["train_loss"])) < 1e-5


@pytest.mark.slow
def test_search_step_compiles_with_inductor():
    torch._dynamo.reset()
    cfg = SearchConfig(space=TINY, hypergrad="first_order")
    state = init_search(cfg, torch.Generator().manual_seed(0))
    train, valid = _batches()
    counter = CompileCounterWithBackend("inductor")
    step = torch.compile(functools.partial(search_step, cfg=cfg), backend=counter)
    s1, _ = step(state, train, valid)
    e1, _ = search_step(state, train, valid, cfg=cfg)
    assert counter.frame_count == 1
    assert _max_diff(s1, e1) < 1e-4


@pytest.mark.parametrize("shared_data", [True, False], ids=["shared-data", "own-data"])
def test_vmap_over_searches_equals_separate_runs(shared_data):
    cfg = SearchConfig(space=TINY, hypergrad="first_order")
    states = [init_search(cfg, torch.Generator().manual_seed(seed)) for seed in range(3)]
    batches = [_batches(seed) for seed in range(3)]
    step = vmapped_search_step(cfg, shared_data=shared_data)
    stacked = stack_states(states)
    if shared_data:
        train, valid = batches[0]
    else:
        train = tuple(torch.stack(t) for t in zip(*[b[0] for b in batches]))
        valid = tuple(torch.stack(t) for t in zip(*[b[1] for b in batches]))
    for _ in range(2):
        stacked, metrics = step(stacked, train, valid)
        refs = []
        for seed, st in enumerate(states):
            data = batches[0] if shared_data else batches[seed]
            refs.append(search_step(st, *data, cfg=cfg))
        states = [r[0] for r in refs]
    for seed, st in enumerate(states):
        assert _max_diff(unstack_state(stacked, seed), st) < 1e-5
    assert metrics["train_loss"].shape == (3,)
    # the searches really differ (different seeds)
    assert not torch.equal(unstack_state(stacked, 0).alphas["normal"], unstack_state(stacked, 1).alphas["normal"])
