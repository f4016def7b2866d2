"""A search stopped before its first checkpoint leaves a folder that ``--resume`` continues, not a dead one."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from test_cli import TINY, fnas, series

from fnas.app import runs

pytestmark = pytest.mark.usefixtures("single_thread")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def killed_early(tmp_path):
    """A run folder as a kill before the first checkpoint leaves it: config.json and a stale temporary."""
    data = tmp_path / "d.npz"
    x, y = series(60, 2, 16, 3)
    np.savez(data, X=x, y=y)
    folder = tmp_path / "run"
    code, _, err = fnas("search", "--data", data, "--out", folder, "--train-epochs", "0", *TINY)
    assert code == 0, err
    for f in folder.iterdir():
        if f.name != runs.CONFIG:
            f.unlink() if f.is_file() else shutil.rmtree(f)
    (folder / f".{runs.CHECKPOINT}.tmp{_dead_pid()}").write_bytes(b"half a checkpoint")
    return folder


def test_resume_starts_a_search_killed_before_its_first_checkpoint_from_the_beginning(killed_early):
    code, out, err = fnas("search", "--resume", killed_early)
    assert code == 0, err
    assert "stopped before its first checkpoint" in out
    assert (killed_early / runs.GENOTYPE).is_file() and (killed_early / runs.CHECKPOINT).is_file()
    assert not list(killed_early.glob(".checkpoint.pt.tmp*"))  # the killed writer's temporary is gone


def test_out_on_such_a_folder_says_how_to_continue_it(killed_early):
    code, _, err = fnas("search", "--out", killed_early, *TINY)
    assert code == 2
    assert f"fnas search --resume {killed_early}" in err and "starts from the beginning" in err
