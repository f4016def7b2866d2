"""bench/compiled_hypergrad.py with aot_eager: the compiled exact hypergradient equals the eager one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

pytestmark = pytest.mark.usefixtures("single_thread")  # conftest.py


def test_aot_eager_hypergradient_equals_eager():
    import compiled_hypergrad

    result = compiled_hypergrad.main(["--space", "tiny_1d", "--backend", "aot_eager"])
    assert result["components"] == 2 * 3 * 7  # 2 cell types, 3 edges (2 nodes), 7 primitives
    assert result["rel_l2"] < 1e-5
    assert result["sign_changes"] == 0
