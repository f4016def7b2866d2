"""``fnas search`` SIGKILLed at seeded moments, many inside the atomic checkpoint write, then ``--resume``d:
the result is bitwise equal to an uninterrupted run and no temporary file is left behind.

The child runs the real CLI under a hook that SIGKILLs it at the K-th write of ``checkpoint.pt``: half-way
through writing the temporary file, with the temporary complete but not yet renamed, or just after the
rename (the moment between two checkpoints).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fnas.core import tree
from fnas.search.loop import load_checkpoint
from fnas.spaces.cell.genotype import load_genotype

from test_bad_input_fuzz import run_fnas, tally  # noqa: F401 - tally is a fixture

pytestmark = [pytest.mark.multiprocess, pytest.mark.usefixtures("single_thread")]

# 48 samples, 3 classes: a train split of 28 -> 3 steps of 8 per epoch, 3 epochs
OPTS = ["--space", "cell", "--C", "4", "--layers", "3", "--nodes", "2", "--multiplier", "2", "--stem-multiplier", "1",
        "--batch-size", "8", "--epochs", "3", "--warmup-epochs", "1", "--train-epochs", "0", "--checkpoint-every", "1",
        "--quiet"]
PHASES = ("half-written", "written-not-renamed", "renamed")
KILLS = 10
WRITES = 10  # checkpoint.pt writes in an uninterrupted run of OPTS (checked below)

HOOK = textwrap.dedent(
    """
    # Runs `fnas ARGV` and SIGKILLs itself at the FNAS_KILL=K:PHASE moment of the K-th checkpoint.pt write.
    import builtins, os, signal, sys
    import fnas.core.io as fio
    from fnas.cli import main

    K, PHASE = os.environ["FNAS_KILL"].split(":")
    K, writes = int(K), [0]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    class HalfFile:
        def __init__(self, fh):
            self.fh = fh
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            return self.fh.__exit__(*exc)
        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            self.fh.flush()
            os.fsync(self.fh.fileno())
            die()
        def __getattr__(self, name):
            return getattr(self.fh, name)

    def hooked_open(path, mode="r", *args, **kw):
        fh = builtins.open(path, mode, *args, **kw)
        if ".checkpoint.pt.tmp" in str(path) and "w" in mode:
            writes[0] += 1
            if writes[0] == K and PHASE == "half-written":
                return HalfFile(fh)
        return fh

    class HookedOs:
        def __getattr__(self, name):
            return getattr(os, name)
        def replace(self, src, dst):
            hit = writes[0] == K and str(dst).endswith("checkpoint.pt")
            if hit and PHASE == "written-not-renamed":
                die()
            os.replace(src, dst)
            if hit and PHASE == "renamed":
                die()

    fio.open, fio.os = hooked_open, HookedOs()
    code = main(sys.argv[1:])
    print(f"checkpoint writes: {writes[0]}", file=sys.stderr)
    sys.exit(code)
    """
)


def _moments(n: int, writes: int, seed: int = 20260516) -> list[tuple[int, str]]:
    """``n`` distinct seeded (write number, phase) pairs; the first and the last write always among them."""
    rng = random.Random(seed)
    every = [(k, p) for k in range(1, writes + 1) for p in PHASES]
    must = [(1, "half-written"), (writes, "written-not-renamed")]
    rest = [m for m in every if m not in must]
    return sorted(must + rng.sample(rest, n - len(must)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The data, the hook script, and the uninterrupted reference run."""
    folder = tmp_path_factory.mktemp("kills")
    rng = np.random.default_rng(3)
    y = np.arange(48) % 3
    t = np.arange(16)
    x = np.sin(2 * np.pi * (y[:, None, None] + 1) * t / 16 + rng.uniform(0, 6, (48, 2, 1)))
    data = folder / "d.npz"
    np.savez(data, X=(x + 0.3 * rng.standard_normal(x.shape)).astype(np.float32), y=y)
    hook = folder / "kill_hook.py"
    hook.write_text(HOOK)
    whole = folder / "whole"
    code, err = run_fnas("search", "--data", data, "--out", whole, *OPTS)
    assert code == 0, err
    return data, hook, whole


def test_moments_cover_the_run(setup, tmp_path):
    """The moments assume WRITES checkpoint writes in an uninterrupted run of OPTS: count them."""
    data, hook, *_ = setup
    proc = subprocess.run([sys.executable, str(hook), "search", "--data", str(data), "--out", str(tmp_path / "run"),
                           *OPTS], env=dict(os.environ, OMP_NUM_THREADS="1", FNAS_KILL="0:none"),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert f"checkpoint writes: {WRITES}" in proc.stderr


@pytest.mark.parametrize("k, phase", _moments(KILLS, WRITES),
                         ids=[f"write{k}-{p}" for k, p in _moments(KILLS, WRITES)])
def test_killed_at_a_seeded_moment_then_resumed_is_bitwise_equal(setup, tmp_path, tally, k, phase):
    data, hook, whole = setup
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", FNAS_KILL=f"{k}:{phase}")
    proc = subprocess.run([sys.executable, str(hook), "search", "--data", str(data), "--out", str(run), *OPTS],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    temporaries = list(run.glob(".checkpoint.pt.tmp*"))
    assert bool(temporaries) == (phase != "renamed")  # the kill really fell inside the write
    assert not (run / "genotype.json").exists()
    if (run / "checkpoint.pt").is_file():  # whatever is on disk is a whole checkpoint (load_checkpoint checks)
        load_checkpoint(run / "checkpoint.pt")
    else:
        assert k == 1 and phase != "renamed"

    code, err = run_fnas("search", "--resume", run, "--quiet")
    assert code == 0, err
    a, b = load_checkpoint(whole / "checkpoint.pt"), load_checkpoint(run / "checkpoint.pt")
    for part in ("alphas", "weights", "stats"):
        assert tree.all_equal(a["state"][part], b["state"][part]), part
    assert load_genotype(whole / "genotype.json") == load_genotype(run / "genotype.json")
    assert not list(run.glob(".*.tmp*"))  # the killed writer's temporary was cleaned up
    epochs = {json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["phase"] == "search"}
    assert epochs == {0, 1, 2}
    tally["SIGKILLs resumed bitwise equal"] += 1
    tally[f"SIGKILLs resumed bitwise equal, {phase}"] += 1
