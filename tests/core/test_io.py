"""Crash-safe files: atomic writes leave no temporaries behind, and stale ones from killed writers go."""

from __future__ import annotations

import os
import subprocess
import sys

from fnas.core.io import atomic_write_bytes, remove_stale_temporaries


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "checkpoint.pt"
    atomic_write_bytes(path, b"old")
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_stale_temporaries_of_dead_writers_are_removed_on_the_next_write(tmp_path):
    path = tmp_path / "checkpoint.pt"
    stale = tmp_path / f".checkpoint.pt.tmp{_dead_pid()}"
    stale.write_bytes(b"x" * 1000)
    mine = tmp_path / f".checkpoint.pt.tmp{os.getppid()}"  # a live process's (the parent shell): kept
    mine.write_bytes(b"y")
    other = tmp_path / ".metrics.jsonl.tmp1"  # another file's: not ours to judge
    other.write_bytes(b"z")
    atomic_write_bytes(path, b"data")
    assert not stale.exists() and mine.exists() and other.exists()
    assert path.read_bytes() == b"data"
    assert remove_stale_temporaries(path) == []
