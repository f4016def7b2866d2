"""bench/compiled_step.py end to end with the quick aot_eager backend (inductor's compile takes minutes)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

pytestmark = pytest.mark.usefixtures("single_thread")  # conftest.py


def test_compiled_step_script_writes_its_table(tmp_path):
    import compiled_step

    out = tmp_path / "COMPILED.md"
    compiled_step.main(["--space", "tiny_1d", "--methods", "fo", "--rounds", "2", "--cache", "off",
                        "--backend", "aot_eager", "--out", str(out)])
    text = out.read_text()
    assert text.startswith("# The whole search step, compiled (aot_eager) vs eager")
    rows = [line for line in text.splitlines() if line.startswith("| tiny_1d | fo |")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert "step_baseline_fo" in cells[5]
    assert cells[8] == "n/a"  # no warm start without caches
    assert cells[9] == "1 -> 1"  # one graph, no recompile over the timed steps
    alphas, weights = (float(v) for v in cells[10].split(" / "))
    assert alphas < 1e-4 and weights < 1e-3  # compiled and eager agree after one step
    for cell in (cells[4], cells[6]):  # speed-ups are positive ratios
        assert float(re.search(r"([0-9.]+)x", cell).group(1)) > 0
