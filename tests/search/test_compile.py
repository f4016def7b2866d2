"""torch.compile of the whole search step (it contains the torch.func transforms) and vmap over searches."""

from __future__ import annotations

import functools
import os

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from fnas.core import tree
from fnas.search.config import SearchConfig
from fnas.spaces.cell.config import SpaceConfig
from fnas.search.compile import (
    SPEEDUP,
    CompileEstimate,
    choose_compile,
    compile_cache_dir,
    decide_compile,
    estimate_compile,
    is_warm,
    mark_warm,
    step_cache_key,
    use_compile_cache,
)
from fnas.spaces.chain import ChainSpaceConfig
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


# --- whether compiling pays off ---------------------------------------------------------------------

CHAIN = ChainSpaceConfig(in_channels=2, num_classes=3, input_shape=(16, 1), widths=(8, 8), kernels=(3, 5),
                         dilations=(1,))
EST = CompileEstimate(eager_step_s=0.5, cold_compile_s=600.0, warm_start_s=60.0, speedup=2.0)


def test_decide_compile_weighs_the_steps_saving_against_the_compile():
    # saving = steps * 0.5 s * (1 - 1/2) = steps / 4
    long = decide_compile(steps=4000, estimate=EST, warm=False)  # saves 1000 s > 600 s
    short = decide_compile(steps=2000, estimate=EST, warm=False)  # saves 500 s < 600 s
    assert long.compile and long.reason.startswith("on: 4000 steps") and "first compile" in long.reason
    assert not short.compile and short.reason.startswith("off: 2000 steps") and "less than the ~10 min" in short.reason
    warm = decide_compile(steps=2000, estimate=EST, warm=True)  # 500 s > the 60 s warm start
    assert warm.compile and "warm start" in warm.reason
    assert not decide_compile(steps=100, estimate=EST, warm=True).compile  # 25 s < 60 s: even warm, too short
    assert not decide_compile(steps=0, estimate=EST, warm=False).compile


@pytest.mark.parametrize("space", [TINY, CHAIN], ids=["cell", "chain"])
def test_estimate_compile_counts_the_step_and_models_both_methods(space):
    train, valid = _batches()
    fo = estimate_compile(SearchConfig(space=space, hypergrad="first_order"), train, valid)
    exact = estimate_compile(SearchConfig(space=space, hypergrad="exact"), train, valid)
    assert fo.eager_step_s > 0 and fo.cold_compile_s > fo.warm_start_s > 0
    assert exact.cold_compile_s > fo.cold_compile_s  # the nested grad traces more ops
    assert exact.speedup > fo.speedup > 1
    kind = "chain" if space is CHAIN else "cell"  # each space kind has its own measured figures
    assert (fo.speedup, exact.speedup) == (SPEEDUP[kind]["first_order"], SPEEDUP[kind]["exact"])


@pytest.mark.parametrize("space", [TINY, CHAIN], ids=["cell", "chain"])
def test_choose_compile_flags_torchrun_device_and_the_auto_choice(space, tmp_path):
    cfg = SearchConfig(space=space)
    train, valid = _batches()
    cpu = torch.device("cpu")
    assert choose_compile(True, cfg, train, valid, steps=1, device=cpu) == (True, "on (--compile)")
    assert choose_compile(False, cfg, train, valid, steps=10**9, device=cpu) == (False, "off (--no-compile)")
    assert not choose_compile(None, cfg, train, valid, steps=10**9, device=cpu, world=2).compile
    other = choose_compile(None, cfg, train, valid, steps=10**9, device=torch.device("cuda"), cache_dir=tmp_path)
    assert not other.compile and "--compile" in other.reason
    long = choose_compile(None, cfg, train, valid, steps=10**9, device=cpu, cache_dir=tmp_path)
    short = choose_compile(None, cfg, train, valid, steps=1, device=cpu, cache_dir=tmp_path)
    assert long.compile and "first compile" in long.reason
    assert not short.compile and short.reason.startswith("off: 1 steps")


def test_a_step_compiled_before_is_found_warm_and_only_that_step(tmp_path):
    cfg = SearchConfig(space=TINY)
    train, valid = _batches()
    key = step_cache_key(cfg, train, valid)
    assert key == step_cache_key(cfg, *_batches(1))  # values do not matter, shapes and config do
    other_cfg = step_cache_key(SearchConfig(space=TINY, lr=0.01), train, valid)
    other_shape = step_cache_key(cfg, (train[0][:4], train[1][:4]), valid)
    assert len({key, other_cfg, other_shape}) == 3
    assert not is_warm(tmp_path, key)
    mark_warm(tmp_path, key)
    assert is_warm(tmp_path, key) and not is_warm(tmp_path, other_cfg)
    # a search so short that only a warm start pays off turns on once the step is in the cache
    cpu = torch.device("cpu")
    steps = 0
    while not choose_compile(None, cfg, train, valid, steps=steps, device=cpu, cache_dir=tmp_path).compile:
        steps = 2 * steps + 1000
    decision = choose_compile(None, cfg, train, valid, steps=steps, device=cpu, cache_dir=tmp_path)
    assert "warm start" in decision.reason
    assert not choose_compile(None, cfg, train, valid, steps=steps, device=cpu, cache_dir=tmp_path / "empty").compile


def test_compile_cache_dir_and_use_compile_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache_dir() == tmp_path / "xdg" / "fnas" / "torch-compile"
    with use_compile_cache(tmp_path / "c"):
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str((tmp_path / "c").resolve())
        assert compile_cache_dir() == (tmp_path / "c").resolve()
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))  # the user's own setting wins
    assert compile_cache_dir() == tmp_path / "mine"
    with use_compile_cache(tmp_path / "c"):
        pass
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")
