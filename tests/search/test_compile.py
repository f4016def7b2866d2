"""torch.compile of the whole search step (it contains the torch.func transforms) and vmap over searches."""

from __future__ import annotations

import functools

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from fnas.core import tree
from fnas.search.config import SearchConfig
from fnas.spaces.cell.config import SpaceConfig
from fnas.search import (
    compile_search_step,
    init_search,
    run_search,
    search_step,
    stack_states,
    unstack_state,
    vmapped_search_step,
)

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


def _relayout(state):
    """The same state with some leaves in other memory layouts: every ``(C, C', 1, 1)`` kernel with
    channels_last strides (equivalent memory, other strides; inductor returns such kernels' new
    values and momenta this way) and every ``(C, C', k, 1)`` kernel truly channels_last."""

    def move(t):
        if t.ndim == 4:
            return t.contiguous(memory_format=torch.channels_last)
        return t

    return state._replace(weights=tree.map(move, state.weights),
                          w_opt=type(state.w_opt)(tree.map(move, state.w_opt.momentum)))


def test_compiled_step_returns_the_state_in_the_layouts_it_was_given():
    torch._dynamo.reset()
    cfg = SearchConfig(space=TINY, hypergrad="first_order")
    state = _relayout(init_search(cfg, torch.Generator().manual_seed(0)))
    moved = [t for t in tree.leaves(state) if t.ndim == 4]
    assert moved and all(t.is_contiguous(memory_format=torch.channels_last) for t in moved)
    counter = CompileCounterWithBackend("aot_eager")
    step = compile_search_step(cfg, backend=counter)
    s1, _ = step(state, *_batches())
    for new, old in zip(tree.leaves(s1), tree.leaves(state)):
        assert new.shape == old.shape and new.stride() == old.stride()
    s2, _ = step(s1, *_batches(1))
    assert counter.frame_count == 1, "the second step recompiled"
    e1, _ = search_step(state, *_batches(), cfg=cfg)
    e2, _ = search_step(e1, *_batches(1), cfg=cfg)
    assert _max_diff(s2, e2) < 1e-4


def test_unaliased_copies_a_tensor_that_sits_at_several_leaves():
    from fnas.search.compile import unaliased

    cfg = SearchConfig(space=TINY)
    state = init_search(cfg, torch.Generator().manual_seed(0))
    shared = torch.arange(4.0)
    stats = {"a": {"m": shared}, "b": {"m": shared}, "c": {"m": torch.zeros(4)}}
    out = unaliased(state._replace(stats=stats))
    assert out.stats["a"]["m"] is shared  # the first stays as it is
    assert out.stats["b"]["m"] is not shared and torch.equal(out.stats["b"]["m"], shared)
    assert out.stats["c"]["m"] is stats["c"]["m"]
    ids = [id(t) for t in tree.leaves(out)]
    assert len(ids) == len(set(ids))


def test_run_search_compiled_equals_eager():
    torch._dynamo.reset()
    cfg = SearchConfig(space=TINY, hypergrad="first_order", warmup_steps=1)
    train = [_batches(seed)[0] for seed in range(3)]
    valid = [_batches(seed)[1] for seed in range(3)]  # other tensors: aliased inputs would recompile
    results = {
        mode: run_search(cfg, train, valid, epochs=2, gen=torch.Generator().manual_seed(0), progress=False,
                         compile=mode)
        for mode in (False, "aot_eager")
    }
    eager, compiled = results[False], results["aot_eager"]
    assert _max_diff(compiled.state.alphas, eager.state.alphas) < 1e-4
    assert _max_diff(compiled.state.weights, eager.state.weights) < 1e-4
    assert compiled.genotype == eager.genotype
    assert int(compiled.state.step) == int(eager.state.step) == 6


def test_run_search_rejects_a_bad_compile_argument():
    cfg = SearchConfig(space=TINY)
    with pytest.raises(ValueError, match="compile must be a bool or a torch.compile backend name"):
        run_search(cfg, [_batches()[0]], [_batches()[1]], epochs=1, gen=torch.Generator(), compile=1)


@pytest.mark.slow
def test_search_step_compiles_with_inductor_once():
    """Inductor picks its own strides for some outputs; the compiled step must still not recompile."""
    torch._dynamo.reset()
    cfg = SearchConfig(space=TINY, hypergrad="first_order")
    state = init_search(cfg, torch.Generator().manual_seed(0))
    train, valid = _batches()
    counter = CompileCounterWithBackend("inductor")
    step = compile_search_step(cfg, backend=counter)
    s1, _ = step(state, train, valid)
    e1, _ = search_step(state, train, valid, cfg=cfg)
    assert counter.frame_count == 1
    assert _max_diff(s1, e1) < 1e-4
    s2, _ = step(s1, *_batches(1))
    e2, _ = search_step(e1, *_batches(1), cfg=cfg)
    assert counter.frame_count == 1, "the second step recompiled"
    assert _max_diff(s2, e2) < 1e-4


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
