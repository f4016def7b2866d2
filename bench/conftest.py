"""Benchmarks run on one thread, and ``pytest bench`` collects the ``bench_*.py`` files.

pytest's default ``python_files`` (``test_*.py``) does not match ``bench_*.py``; the hook below
collects them without changing the project's pytest configuration (plain ``pytest`` still runs
``tests/`` only).
"""

from __future__ import annotations

import fnmatch
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workloads  # noqa: E402

workloads.use_one_thread()


def pytest_collect_file(parent, file_path):
    if file_path.suffix != ".py" or not fnmatch.fnmatch(file_path.name, "bench_*.py"):
        return None
    if any(fnmatch.fnmatch(file_path.name, pat) for pat in parent.config.getini("python_files")):
        return None  # already collected by pytest itself
    if parent.session.isinitpath(file_path):
        return None  # named on the command line: pytest collects it itself
    return pytest.Module.from_parent(parent, path=file_path)
