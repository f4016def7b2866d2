"""The quality study's own parts (bench/quality.py): the hand-designed baseline's costs and width,
the 1-NN reference, the summary and verdict logic. The study itself is a benchmark, not a test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import quality as Q  # noqa: E402

from fnas.data import Dataset, Split  # noqa: E402


@pytest.mark.parametrize("c_in, classes, length, width", [(6, 7, 128, 5), (1, 5, 140, 12)])
def test_fcn_cost_is_exact(c_in, classes, length, width):
    torch.manual_seed(0)
    model = Q.FCN(c_in, classes, width).eval()
    cost = Q.fcn_cost(model, c_in, length, classes)
    assert cost["params"] == sum(p.numel() for p in model.parameters())
    x = torch.randn(1, c_in, length, 1)
    with FlopCounterMode(display=False) as counter:
        model(x)
    assert cost["macs"] == counter.get_total_flops() // 2
    assert model(x).shape == (1, classes)
    # the peak is the widest layer's input + output: 2w in, w out (or w in, 2w out)
    assert cost["sram"] == 3 * width * length


@pytest.mark.parametrize("budget", [5_000, 20_000])
def test_fcn_width_is_the_largest_within_budget(budget):
    w = Q.fcn_width(6, 7, budget)
    count = lambda width: sum(p.numel() for p in Q.FCN(6, 7, width).parameters())  # noqa: E731
    assert count(w) <= budget < count(w + 1)


def _split(x, y):
    return Split(x, y)


def test_one_nn_euclidean_on_a_hand_made_set():
    train_x = torch.tensor([[0.0, 0.0], [10.0, 10.0]]).reshape(2, 1, 2, 1)
    valid_x = torch.tensor([[0.0, 1.0]]).reshape(1, 1, 2, 1)
    test_x = torch.tensor([[1.0, 0.0], [9.0, 9.0], [0.0, 2.0]]).reshape(3, 1, 2, 1)
    ds = Dataset(
        name="toy",
        train=_split(train_x, torch.tensor([0, 1])),
        valid=_split(valid_x, torch.tensor([1])),  # the nearest to (0, 2): valid counts as train
        test=_split(test_x, torch.tensor([0, 1, 1])),
        num_classes=2, in_channels=1, input_shape=(2, 1), class_names=("a", "b"),
    )
    assert Q.one_nn_euclidean(ds) == 1.0


def _result(dataset, budget, seed, accs):
    rows = {name: {"test_acc": a, "params": 100, "macs": 10, "sram": 5, "search_cpu_s": 1.0, "train_cpu_s": 2.0,
                   "wall_s": 3.0} for name, a in zip(Q.CONTENDERS, accs)}
    return {"dataset": dataset, "budget": budget, "seed": seed, "rows": rows}


def test_summary_and_verdicts():
    results = [_result("watch", 5_000, s, (0.9, 0.8, 0.85, 0.7 + s / 100)) for s in range(3)]
    results += [_result("watch", 20_000, s, (0.8, 0.8, 0.9, 0.7)) for s in range(3)]
    table = Q.summarise(results)
    assert table[("watch", 5_000, "hand-designed FCN")]["test_acc"] == pytest.approx([0.70, 0.71, 0.72])
    assert Q._stats([0.70, 0.71, 0.72]) == pytest.approx((0.71, 0.01))
    lines = Q.verdicts(table, ["watch"])
    assert "5,000 params: fnas first order (90.0%) beats" in lines[0]
    assert "20,000 params" in lines[1] and "does not beat the best other contender, random search (90.0%)" in lines[1]
    text = Q.render_table(table, "watch")
    assert "**90.0** ± 0.0%" in text and text.count("\n| 5,000 |") == 4
