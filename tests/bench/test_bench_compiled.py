"""bench/compiled_step.py end to end with the quick aot_eager backend (inductor's compile takes minutes)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

pytestmark = pytest.mark.usefixtures("single_thread")  # conftest.py


def test_compiled_step_script_writes_its_table(tmp_path):
    import compiled_step

    out = tmp_path / "COMPILED.md"
    compiled_step.main(["--space", "tiny_1d", "--methods", "fo", "--rounds", "2", "--cache", "off",
                        "--backend", "aot_eager", "--profile", "--out", str(out)])
    text = out.read_text()
    assert text.startswith("# The whole search step, compiled (aot_eager) vs eager")
    rows = [line for line in text.splitlines() if line.startswith("| tiny_1d | fo |") and "step_baseline_fo" in line]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert "step_baseline_fo" in cells[5]
    assert cells[8] == "n/a"  # no warm start without caches
    assert cells[9] == "1 -> 1"  # one graph, no recompile over the timed steps
    alphas, weights = (float(v) for v in cells[10].split(" / "))
    assert alphas < 1e-4 and weights < 1e-3  # compiled and eager agree after one step
    # the yardstick: eager on reordered rows is the same step, up to float32 round-off
    r_alphas, r_weights = (float(v) for v in cells[11].split(" / "))
    assert 0 <= r_alphas < 1e-4 and 0 < r_weights < 1e-3
    for cell in (cells[4], cells[6]):  # speed-ups are positive ratios
        assert float(re.search(r"([0-9.]+)x", cell).group(1)) > 0
    # --profile: one profiled eager and compiled step, split into convolutions / generated kernels / rest
    profile_rows = [line for line in text.splitlines() if line.startswith("| tiny_1d | fo | ")
                    and line.split("|")[3].strip() in ("eager", "compiled")]
    assert len(profile_rows) == 2
    for line in profile_rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        total, conv = (float(c.split(" ms")[0].replace(",", "")) for c in (cells[3], cells[4]))
        assert 0 < conv < total  # the convolutions are found, and are not all of the step
        assert cells[5].startswith("0 ms")  # aot_eager generates no kernels (inductor's would be named graph_*)
    assert text.count("Top ops, tiny_1d fo") == 2


def test_reordered_batches_are_the_same_step():
    import torch
    import workloads as W

    from fnas.core import tree

    plain, reordered = (W.build_step("step_fnas_fo", space="tiny_1d", reorder=r) for r in (None, 1))
    plain.run()
    reordered.run()
    a, b = plain.context[0], reordered.context[0]
    # the rows really moved ...
    x_plain = W.make_batch(W.SPACES["tiny_1d"], W.BATCH["tiny_1d"], seed=W.SEED + 2)[0]
    x_reordered = x_plain[W._row_order(W.BATCH["tiny_1d"], 1)]
    assert not torch.equal(x_plain, x_reordered)
    assert torch.equal(x_plain.sort(dim=0).values, x_reordered.sort(dim=0).values)
    # ... and the step is the same one to float32 round-off
    for x, y in zip(tree.leaves((a.alphas, a.weights)), tree.leaves((b.alphas, b.weights))):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_render_without_baseline_on_2d_spaces():
    import argparse

    import compiled_step

    row = {
        "method": "fo", "space": "darts_2d", "eager_min": 2.0, "eager_median": 2.1, "compiled_min": 1.0,
        "compiled_median": 1.1, "baseline_min": None, "baseline_median": None, "compile_s": 10.0,
        "graphs_first": 1, "graphs_end": 1,
        "agree": {"alphas": 1e-7, "weights": 1e-4, "reordered_alphas": 2e-7, "reordered_weights": 2e-4},
    }  # fmt: skip
    args = argparse.Namespace(cache="off", backend="inductor", argv=["--space", "darts_2d"])
    text = compiled_step.render([row], args, elapsed=60.0, matmul=150.0)
    line = next(x for x in text.splitlines() if x.startswith("| darts_2d | fo |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[4].startswith("**2.00x**")
    assert cells[5] == cells[6] == "n/a"  # the seed baseline is kx1 only
    assert cells[11] == "2.0e-07 / 2.0e-04"
