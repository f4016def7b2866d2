"""A divergence never reaches a checkpoint, and resuming from the last good one with a lower lr works."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fnas.search import SearchConfig, init_search, load_checkpoint, run_search
from fnas.search.checkpoint import save_checkpoint
from fnas.search.state import insane_leaves, state_from_dict
from fnas.spaces.cell.config import SpaceConfig

SPACE = SpaceConfig(C=4, num_classes=3, layers=3, in_channels=2, input_shape=(16, 1), nodes=2, multiplier=2,
                    stem_multiplier=1)


def _loaders():
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(48, 2, 16, 1, generator=g), torch.randint(0, 3, (48,), generator=g)
    train = DataLoader(TensorDataset(x[:24], y[:24]), batch_size=6, shuffle=True, generator=torch.Generator().manual_seed(1))
    valid = DataLoader(TensorDataset(x[24:], y[24:]), batch_size=6, shuffle=True, generator=torch.Generator().manual_seed(2))
    return train, valid


def test_a_real_divergence_stops_before_the_checkpoint_and_resumes_with_a_lower_lr(tmp_path, single_thread):
    ckpt = tmp_path / "checkpoint.pt"
    train, valid = _loaders()
    cfg = SearchConfig(space=SPACE, lr=1e6, lr_min=0.0, grad_clip=1e9, warmup_steps=0)
    with pytest.raises(FloatingPointError, match="diverged at step") as err:
        run_search(cfg, train, valid, epochs=6, gen=torch.Generator().manual_seed(0), progress=False,
                   checkpoint=ckpt, checkpoint_every=1, selection="alphas")
    assert "--lr" in str(err.value) and "raise grad_clip" not in str(err.value)
    saved = load_checkpoint(ckpt)
    state = init_search(cfg, torch.Generator().manual_seed(0))  # the layout to read the saved state into
    assert insane_leaves(state_from_dict(saved["state"])) == []  # only sane states are ever written
    assert not insane_leaves(state)
    train, valid = _loaders()
    result = run_search(cfg.replace(lr=0.01), train, valid, epochs=6, gen=torch.Generator().manual_seed(0),
                        progress=False, checkpoint=ckpt, resume=ckpt, selection="alphas")
    assert len(result.history) == 6 and not insane_leaves(result.state)


def test_insane_leaves_names_non_finite_and_exploded_values():
    state = init_search(SearchConfig(space=SPACE), torch.Generator().manual_seed(0))
    assert insane_leaves(state) == []
    stats = {**state.stats}
    stats["stem"] = {"bn": {"running_mean": state.stats["stem"]["bn"]["running_mean"],
                            "running_var": torch.full_like(state.stats["stem"]["bn"]["running_var"], float("inf"))}}
    weights = {**state.weights, "head": {**state.weights["head"], "weight": state.weights["head"]["weight"] * 1e9}}
    bad = state._replace(stats=stats, weights=weights)
    assert sorted(insane_leaves(bad)) == ["stats.stem.bn.running_var", "weights.head.weight"]


def test_a_diverged_state_is_never_written(tmp_path):
    state = init_search(SearchConfig(space=SPACE), torch.Generator().manual_seed(0))
    nan = state._replace(alphas={k: torch.full_like(v, float("nan")) for k, v in state.alphas.items()})
    with pytest.raises(FloatingPointError, match="Refusing to checkpoint"):
        save_checkpoint(tmp_path / "c.pt", nan, cfg_record={}, epoch=0, batch=0, train_pos=None, valid_pos=None,
                        gen=torch.Generator(), log={})
    assert not (tmp_path / "c.pt").exists()
