"""bench/compiled_hypergrad.py with aot_eager: the compiled exact hypergradient equals the eager one,
and both are measured against the float64 reference over permuted batches."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

pytestmark = pytest.mark.usefixtures("single_thread")  # conftest.py


def test_aot_eager_hypergradient_equals_eager():
    import compiled_hypergrad

    result = compiled_hypergrad.main(["--space", "tiny_1d", "--backend", "aot_eager", "--permutations", "2"])
    assert result["components"] == 2 * 3 * 7  # 2 cell types, 3 edges (2 nodes), 7 primitives
    assert result["rel_l2"] < 1e-5
    assert result["sign_changes"] == 0
    # aot_eager runs eager's kernels: the same numbers on every batch order
    assert result["compiled_perm_vs_f64"] == pytest.approx(result["eager_perm_vs_f64"], rel=1e-3)
    # a permuted batch is the same problem: float64 agrees with itself to round-off ...
    assert result["f64_perm_vs_f64"] < 1e-12
    # ... and float32 is close to float64 on this tiny network, whatever the order
    assert max(result["eager_perm_vs_f64"]) < 1e-4
    assert len(result["eager_perm_vs_f64"]) == 2


def test_rejects_zero_permutations():
    import compiled_hypergrad

    with pytest.raises(SystemExit):
        compiled_hypergrad.main(["--space", "tiny_1d", "--permutations", "0"])


def test_kinks_small_perturbations_move_the_hypergradient_linearly():
    import compiled_hypergrad

    moves = compiled_hypergrad.main(["--space", "tiny_1d", "--kinks"])["kinks"]
    assert sorted(moves) == [1e-8, 1e-7, 1e-6, 1e-5]
    assert all(len(v) == 3 for v in moves.values())
    # inside one smooth piece the float64 hypergradient moves in proportion to the perturbation
    for small, large in ((1e-8, 1e-7), (1e-7, 1e-6)):
        for a, b in zip(moves[small], moves[large]):
            assert 8 < b / a < 12
