"""Checkpoints and resume: a search killed with SIGKILL and resumed ends bitwise equal to an uninterrupted one,
and its wall time adds up over both processes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from fnas.core import tree
from fnas.search.config import SearchConfig
from fnas.spaces.cell.config import SpaceConfig
from fnas.search.loop import load_checkpoint, run_search

# The search script shared by the killed child and the in-process reference run.
SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from fnas.search.config import SearchConfig
    from fnas.spaces.cell.config import SpaceConfig
    from fnas.search.loop import run_search

    torch.set_num_threads(1)
    CFG = SearchConfig(space=SpaceConfig(C=4, num_classes=3, layers=3, in_channels=2, input_shape=(16, 1),
                                         nodes=2, multiplier=2, stem_multiplier=1), hypergrad="exact", warmup_steps=2)

    def loaders():
        g = torch.Generator().manual_seed(123)
        x = torch.randn(40, 2, 16, 1, generator=g)
        y = torch.randint(0, 3, (40,), generator=g)
        train = DataLoader(TensorDataset(x[:24], y[:24]), batch_size=6, shuffle=True,
                           generator=torch.Generator().manual_seed(1))
        valid = DataLoader(TensorDataset(x[24:], y[24:]), batch_size=6, shuffle=True,
                           generator=torch.Generator().manual_seed(2))
        return train, valid

    class KillAfter:
        # a training loader that SIGKILLs its own process when batch number `n` is requested
        def __init__(self, loader, n):
            self.loader, self.n, self.generator = loader, n, loader.generator
        def __len__(self):
            return len(self.loader)
        def __iter__(self):
            for batch in self.loader:
                if self.n == 0:
                    os.kill(os.getpid(), signal.SIGKILL)
                self.n -= 1
                yield batch

    def search(checkpoint=None, resume=None, kill_at=None):
        train, valid = loaders()
        if kill_at is not None:
            train = KillAfter(train, kill_at + 1)  # +1: run_search draws one training batch to check it
        return run_search(CFG, train, valid, epochs=3, gen=torch.Generator().manual_seed(0), progress=False,
                          checkpoint=checkpoint, checkpoint_every=1, resume=resume)

    if __name__ == "__main__":
        search(checkpoint=sys.argv[1], kill_at=int(sys.argv[2]))
    """
)


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    path = tmp_path_factory.mktemp("resume") / "search_script.py"
    path.write_text(SCRIPT)
    sys.path.insert(0, str(path.parent))
    import search_script

    yield path, search_script
    sys.path.remove(str(path.parent))


@pytest.fixture(scope="module")
def uninterrupted(script):
    torch.set_num_threads(1)
    return script[1].search()


# steps 0..11 run in 3 epochs of 4 batches; kill inside an epoch, at an epoch boundary, and at random
KILL_AT = sorted({1, 4, 9, random.Random(20261128).randrange(1, 12)})


@pytest.mark.parametrize("kill_at", KILL_AT, ids=[f"kill-at-step-{k}" for k in KILL_AT])
def test_sigkill_then_resume_is_bitwise_equal(script, uninterrupted, tmp_path, kill_at):
    path, module = script
    ckpt = tmp_path / "checkpoint.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(path), str(ckpt), str(kill_at)], env=env, capture_output=True,
                          text=True, timeout=600)
    first_wall = time.perf_counter() - t0
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    saved = load_checkpoint(ckpt)
    assert int(saved["state"]["step"]) == kill_at  # the last finished step was checkpointed
    first = saved["elapsed_seconds"]  # the killed search's time up to its last checkpoint
    assert 0 < first < first_wall

    resumed = module.search(checkpoint=ckpt, resume=ckpt)
    # the time adds up over the two processes: the checkpoint carries it, the result reports both parts
    assert resumed.resumed_seconds == first and resumed.seconds > 0
    final = load_checkpoint(ckpt)["elapsed_seconds"]
    assert final > first and resumed.seconds + resumed.resumed_seconds >= final
    assert tree.all_equal(resumed.state.alphas, uninterrupted.state.alphas)
    assert tree.all_equal(resumed.state.weights, uninterrupted.state.weights)
    assert tree.all_equal(resumed.state.stats, uninterrupted.state.stats)
    assert resumed.genotype == uninterrupted.genotype
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in uninterrupted.history]


def test_resume_rejects_foreign_truncated_and_mismatched_checkpoints(script, tmp_path):
    module = script[1]
    ckpt = tmp_path / "ok.pt"
    module.search(checkpoint=ckpt)
    data = ckpt.read_bytes()

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or not an fnas checkpoint"):
        module.search(resume=truncated)

    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match="not an fnas search checkpoint"):
        module.search(resume=foreign)

    other = SearchConfig(space=SpaceConfig(C=6, num_classes=3, layers=3, in_channels=2, input_shape=(16, 1),
                                           nodes=2, multiplier=2, stem_multiplier=1), hypergrad="exact")
    train, valid = module.loaders()
    with pytest.raises(ValueError, match=r"different search space or schedule \(fields \['space'\]"):
        run_search(other, train, valid, epochs=3, gen=torch.Generator().manual_seed(0), progress=False,
                   resume=ckpt)


def test_non_finite_step_leaves_the_last_checkpoint_resumable(script, tmp_path):
    module = script[1]
    ckpt = tmp_path / "checkpoint.pt"
    train, valid = module.loaders()
    bad_cfg = module.CFG.replace(lr=1e30, lr_min=0.0, grad_clip=1e30, warmup_steps=0)
    with pytest.raises(FloatingPointError, match=r"Non-finite values at step \d+"):
        run_search(bad_cfg, train, valid, epochs=3, gen=torch.Generator().manual_seed(0), progress=False,
                   checkpoint=ckpt, checkpoint_every=1)
    saved = load_checkpoint(ckpt)  # intact: written before the failing step
    assert all(torch.isfinite(t).all() for t in tree.leaves(saved["state"]["weights"]))
    # and resumable with a sane learning rate (optimiser settings may change on resume)
    train, valid = module.loaders()
    result = run_search(bad_cfg.replace(lr=0.025, grad_clip=5.0), train, valid, epochs=3,
                        gen=torch.Generator().manual_seed(0), progress=False, resume=ckpt)
    assert int(result.state.step) == 12
    assert all(torch.isfinite(t).all() for t in tree.leaves(result.state.weights))
