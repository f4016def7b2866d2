"""Tests for fnas.search: the pure search step, its halves, the checkpoint dicts, batch checks, the loop."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fnas.core import tree
from fnas.spaces.cell.genotype import genotype_to_dict, Genotype_CNN, validate_genotype
from fnas.spaces.cell.network import NetworkCnn
from fnas.search import (
    SearchState,
    arch_step,
    check_batch,
    current_lr,
    init_search,
    run_search,
    search_step,
    state_from_dict,
    state_to_dict,
    weight_step,
)

from conftest import make_batch, make_gen, tiny_search, tiny_space

pytestmark = pytest.mark.usefixtures("single_thread")

HYPERGRADS = [pytest.param(h, id=h) for h in ("first_order", "exact", "finite_difference")]


def _batches(cfg, seed: int = 0):
    return make_batch(cfg.space, n=6, seed=seed), make_batch(cfg.space, n=6, seed=seed + 100)


def _changed(a, b) -> bool:
    return not tree.all_equal(a, b)


@pytest.mark.parametrize("hypergrad", HYPERGRADS)
def test_search_step_is_pure_deterministic_and_moves_both_trees(hypergrad):
    cfg = tiny_search(hypergrad=hypergrad)
    state = init_search(cfg, make_gen(0))
    train, valid = _batches(cfg)
    before = tree.clone((state, train, valid))
    new, metrics = search_step(state, train, valid, cfg=cfg)
    again, metrics2 = search_step(state, train, valid, cfg=cfg)
    assert tree.all_equal((state, train, valid), before), "search_step mutated its inputs"
    assert tree.all_equal(new, again) and tree.all_equal(metrics, metrics2), "search_step is not deterministic"
    assert isinstance(new, SearchState)
    assert _changed(new.alphas, state.alphas) and _changed(new.weights, state.weights)
    assert _changed(new.stats, state.stats) and _changed(new.w_opt, state.w_opt) and _changed(new.a_opt, state.a_opt)
    assert new.step.ndim == 0 and int(new.step) == 1 and new.step.dtype == torch.int64
    assert set(metrics) >= {"train_loss", "train_acc", "valid_loss", "valid_acc", "lr", "grad_norm", "alpha_grad_norm"}
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in metrics.values())
    for key in ("train_loss", "valid_loss"):  # 3 classes at init: cross-entropy near log(3)
        assert 0.3 * math.log(3) < float(metrics[key]) < 3 * math.log(3), key
    for key in ("train_acc", "valid_acc"):
        correct = float(metrics[key]) * 6  # a fraction of the 6 samples
        assert 0.0 <= float(metrics[key]) <= 1.0 and abs(correct - round(correct)) < 1e-5, key
    assert float(metrics["lr"]) == pytest.approx(cfg.lr)
    assert float(metrics["grad_norm"]) > 0 and float(metrics["alpha_grad_norm"]) > 0


def test_lr_follows_the_cosine_schedule_over_steps():
    cfg = tiny_search(total_steps=4, lr=0.1, lr_min=0.0)
    state = init_search(cfg, make_gen(0))
    train, valid = _batches(cfg)
    lrs = []
    for _ in range(3):
        state, metrics = search_step(state, train, valid, cfg=cfg)
        lrs.append(float(metrics["lr"]))
    assert lrs == pytest.approx([0.1 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(3)], rel=1e-6)
    assert int(state.step) == 3
    assert float(current_lr(torch.tensor(4), cfg)) == pytest.approx(0.0, abs=1e-12)


def test_weight_step_alone_leaves_alphas_unchanged():
    cfg = tiny_search()
    state = init_search(cfg, make_gen(0))
    train, _ = _batches(cfg)
    new, metrics = weight_step(state, train, cfg=cfg)
    assert tree.all_equal(new.alphas, state.alphas) and tree.all_equal(new.a_opt, state.a_opt)
    assert _changed(new.weights, state.weights) and _changed(new.stats, state.stats)
    assert int(new.step) == 1
    assert "valid_loss" not in metrics and "train_loss" in metrics


def test_arch_step_alone_leaves_weights_and_stats_unchanged():
    cfg = tiny_search()
    state = init_search(cfg, make_gen(0))
    train, valid = _batches(cfg)
    new, metrics = arch_step(state, train, valid, cfg=cfg)
    assert _changed(new.alphas, state.alphas)
    assert tree.all_equal((new.weights, new.stats, new.w_opt, new.step), (state.weights, state.stats, state.w_opt,
                                                                          state.step))
    assert "valid_loss" in metrics and "train_loss" not in metrics


def test_state_dict_round_trip_through_torch_save():
    cfg = tiny_search()
    state = init_search(cfg, make_gen(0))
    train, valid = _batches(cfg)
    state, _ = search_step(state, train, valid, cfg=cfg)  # non-trivial optimiser states
    buf = io.BytesIO()
    torch.save(state_to_dict(state), buf)
    buf.seek(0)
    loaded = state_from_dict(torch.load(buf, weights_only=True))
    assert isinstance(loaded, SearchState)
    assert tree.all_equal(loaded, state)
    # Resuming from the loaded state continues exactly.
    a, _ = search_step(state, train, valid, cfg=cfg)
    b, _ = search_step(loaded, train, valid, cfg=cfg)
    assert tree.all_equal(a, b)


def test_state_from_dict_rejects_other_dicts():
    with pytest.raises(ValueError, match="Not an fnas search state"):
        state_from_dict({"weights": {}})


# --- batch checks ----------------------------------------------------------------------------------


def _bad(kind: str):
    space = tiny_space()
    x, y = make_batch(space, n=4)
    return {
        "rank": (x.squeeze(-1), y),
        "channels": (torch.randn(4, 3, 8, 1), y),
        "spatial": (torch.randn(4, 2, 9, 1), y),
        "spatial-2d": (torch.randn(4, 2, 8, 8), y),
        "label-high": (x, torch.tensor([0, 1, 2, 3])),
        "label-negative": (x, torch.tensor([0, -1, 2, 1])),
        "float-labels": (x, y.float()),
        "label-length": (x, y[:3]),
        "int-x": (x.long(), y),
        "not-a-pair": (x,),
    }[kind]


BAD = [
    pytest.param("rank", r"time series must be \(N, C, T, 1\).*unsqueeze\(-1\)", id="wrong-rank"),
    pytest.param("channels", r"has 3 channels .* expects 2; set in_channels=3", id="wrong-channels"),
    pytest.param("spatial", r"spatial shape \(9, 1\) differs from the expected input_shape=\(8, 1\)", id="wrong-length"),
    pytest.param("spatial-2d", r"spatial shape \(8, 8\)", id="2d-for-kx1"),
    pytest.param("label-high", r"labels must lie in 0\.\.2 \(num_classes=3\), got 0\.\.3", id="label-too-large"),
    pytest.param("label-negative", r"labels must lie in 0\.\.2", id="negative-label"),
    pytest.param("float-labels", r"1-D integer label tensor", id="float-labels"),
    pytest.param("label-length", r"of length N=4", id="label-count"),
    pytest.param("int-x", r"not floating point", id="integer-x"),
    pytest.param("not-a-pair", r"\(x, y\) pairs", id="not-a-pair"),
]


@pytest.mark.parametrize("kind, match", BAD)
def test_check_batch_errors(kind, match):
    with pytest.raises(ValueError, match=match):
        check_batch(_bad(kind), tiny_search(), what="training")


class CountingLoader:
    """A re-iterable loader that counts how many batches were drawn from it."""

    def __init__(self, batches):
        self.batches, self.drawn = batches, 0

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for b in self.batches:
            self.drawn += 1
            yield b


@pytest.mark.parametrize("which", [pytest.param("train", id="bad-train"), pytest.param("valid", id="bad-valid")])
def test_run_search_checks_batches_before_training(which):
    cfg = tiny_search()
    good = [make_batch(cfg.space, seed=s) for s in range(3)]
    bad = [_bad("label-high")] * 3
    train = CountingLoader(bad if which == "train" else good)
    valid = CountingLoader(bad if which == "valid" else good)
    epochs_seen = []
    with pytest.raises(ValueError, match="labels must lie in"):
        run_search(cfg, train, valid, epochs=1, gen=make_gen(0), progress=False,
                   on_epoch=lambda *a: epochs_seen.append(a))
    assert epochs_seen == [] and train.drawn <= 1 and valid.drawn <= 1


@pytest.mark.parametrize(
    "kwargs, loader, match",
    [
        pytest.param(dict(epochs=0), None, r"epochs must be a positive int", id="zero-epochs"),
        pytest.param(dict(epochs=1), [], r"training loader is empty", id="empty-loader"),
    ],
)
def test_run_search_argument_errors(kwargs, loader, match):
    cfg = tiny_search()
    batches = [make_batch(cfg.space)] if loader is None else loader
    with pytest.raises(ValueError, match=match):
        run_search(cfg, batches, [make_batch(cfg.space)], gen=make_gen(0), progress=False, **kwargs)


def test_run_search_reports_non_finite_loss():
    cfg = tiny_search()
    x, y = make_batch(cfg.space)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"Non-finite values at step 0 \(epoch 0, batch 0\)"):
        run_search(cfg, [(x, y)], [make_batch(cfg.space)], epochs=1, gen=make_gen(0), progress=False)


# --- the loop --------------------------------------------------------------------------------------


def _loader(cfg, n: int, seed: int) -> DataLoader:
    g = make_gen(seed)
    x = torch.randn(n, cfg.space.in_channels, *cfg.space.input_shape, generator=g)
    y = torch.arange(n) % cfg.space.num_classes
    x = x + y.float()[:, None, None, None]  # learnable: class shifts the mean
    return DataLoader(TensorDataset(x, y), batch_size=4, shuffle=False)


def test_warmup_keeps_alphas_fixed():
    cfg = tiny_search(warmup_steps=2)  # 2 batches per epoch: the first epoch is warmup
    state = init_search(cfg, make_gen(0))
    initial = tree.clone(state.alphas)
    result = run_search(cfg, _loader(cfg, 8, 0), _loader(cfg, 8, 1), epochs=2, gen=make_gen(0), progress=False,
                        state=state)
    first, second = result.alpha_history
    for kind in ("normal", "reduce"):
        assert torch.equal(first[kind], torch.softmax(initial[kind], -1)), "alphas moved during warmup"
        assert not torch.equal(second[kind], first[kind]), "alphas did not move after warmup"
    assert "valid_loss" not in result.history[0] and "valid_loss" in result.history[1]


def test_run_search_end_to_end():
    cfg = tiny_search()
    epochs_seen = []
    # selection="alphas" (DARTS' argmax, not the default): the epoch records hold the argmax genotype
    result = run_search(cfg, _loader(cfg, 8, 0), _loader(cfg, 4, 1), epochs=2, gen=make_gen(0), progress=False,
                        on_epoch=lambda epoch, state, record: epochs_seen.append(epoch), selection="alphas")
    assert isinstance(result.genotype, Genotype_CNN)
    validate_genotype(result.genotype, nodes=cfg.space.nodes, multiplier=cfg.space.multiplier)
    assert len(result.alpha_history) == 2 and len(result.history) == 2 and epochs_seen == [0, 1]
    for probs in result.alpha_history:
        for kind in ("normal", "reduce"):
            assert probs[kind].shape == (cfg.space.num_edges, len(cfg.space.primitives))
            torch.testing.assert_close(probs[kind].sum(-1), torch.ones(cfg.space.num_edges), rtol=1e-6, atol=1e-6)
    assert int(result.state.step) == 4
    assert result.history[-1]["genotype"] == genotype_to_dict(result.genotype)  # JSON-ready in records
    assert all(math.isfinite(r["train_loss"]) for r in result.history)
    assert isinstance(result.model, NetworkCnn) and result.model.genotype == result.genotype
    x, _ = make_batch(cfg.space)
    result.model.eval()
    with torch.no_grad():
        assert result.model(x).shape == (4, cfg.space.num_classes)


def test_epoch_averages_count_only_steps_that_report_the_metric():
    cfg = tiny_search(warmup_steps=3, lr=0.0, lr_min=0.0)  # epoch 1: one warmup step, one full step
    seen = []
    run_search(cfg, _loader(cfg, 8, 0), _loader(cfg, 8, 1), epochs=2, gen=make_gen(0), progress=False,
               on_epoch=lambda e, s, r: seen.append(r))
    assert 0.0 <= seen[1]["valid_acc"] <= 1.0
    # Frozen weights keep the loss near log(3); a halved average falls below the bound.
    assert seen[1]["valid_loss"] > 0.75 * math.log(3)


def test_run_search_never_returns_an_over_budget_genotype():
    """With the penalty switched off (weight 0) the argmax misses a tight budget; the search then
    falls back to the strongest genotype within it, and says so."""
    from fnas.cost import genotype_cost, min_cost

    space = tiny_space()
    budget = min_cost(space, "params") + 1
    cfg = tiny_search(max_params=budget, penalty_weight=0.0)
    # make the expensive ops win the argmax: the test only needs alphas that favour them
    state = init_search(cfg, make_gen(0))
    favour = torch.tensor([5.0 if "conv" in p else 0.0 for p in space.primitives])
    state = state._replace(alphas={k: a + favour for k, a in state.alphas.items()})
    with pytest.warns(UserWarning, match="missed its budget"):
        result = run_search(cfg, _loader(cfg, 8, 0), _loader(cfg, 8, 1), epochs=1, gen=make_gen(0),
                            progress=False, state=state, selection="alphas")  # the argmax, not the default
    assert genotype_cost(result.genotype, space).params <= budget
    assert result.budget_misses == []
