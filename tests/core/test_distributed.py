"""Data-parallel search (``torch.distributed``, gloo on CPU): two processes equal one on the global batch.

The two-rank checks run once per module in a pair of worker processes (this file's ``_worker``,
started with ``subprocess``); the single-process references run in the test process on the same
global batches. Float32 results agree to rounding (the reductions run in a different order);
the two ranks agree bitwise.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import make_gen, tiny_search, tiny_space
from fnas.core import collectives as D
from fnas.core import layers as L
from fnas.core import tree
from fnas.spaces.cell.genotype import load_genotype
from fnas.search import load_checkpoint, run_search, search_step, supernet_loss
from fnas.search.loop import select_genotype, selection_batches
from fnas.search.selection import Perturbation
from fnas.search.state import init_search

dist = pytest.importorskip("torch.distributed")
if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with the gloo backend is not available", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("single_thread")

TESTS = Path(__file__).resolve().parent
TIMEOUT = 300  # seconds for a whole multi-process job; generous for a loaded 2-core machine
F32 = dict(rtol=1e-4, atol=1e-5)  # two ranks vs one process: float32, different reduction order

# Every architecture-gradient path: first order (with a weight-only warm-up step), exact with the
# forward-over-reverse HVP (K=1), exact through two virtual steps (nested reverse grads), DARTS'
# finite difference, and PC-DARTS edge betas with beta-decay and a resource penalty.
CASES = {
    "first_order": dict(hypergrad="first_order", warmup_steps=1),
    "exact": dict(hypergrad="exact"),
    "exact_unroll2": dict(hypergrad="exact", unroll_steps=2),
    "finite_difference": dict(hypergrad="finite_difference"),
    "pc_darts_beta_penalty": dict(space=tiny_space(partial_channels=2), beta_weight=1.0, penalty_mode="Memory"),
}
BATCH = 8  # global batch: 4 samples per rank
STEPS = 3


# --- shared by the workers and the references --------------------------------------------------


class _Interrupted(Exception):
    pass


class _StopAt:
    """A loader that raises when batch ``n`` is requested (a crash in the middle of a search)."""

    def __init__(self, loader, n):
        self.loader, self.n, self.generator = loader, n, loader.generator

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            if self.n == 0:
                raise _Interrupted
            self.n -= 1
            yield batch


def loaders(batch_size: int = BATCH, shuffle_seed: int = 1):
    g = make_gen(7)
    space = tiny_space()
    x = torch.randn(2 * STEPS * BATCH, space.in_channels, *space.input_shape, generator=g)
    y = torch.randint(0, space.num_classes, (2 * STEPS * BATCH,), generator=g)
    n = STEPS * BATCH
    data = torch.utils.data.TensorDataset
    train = torch.utils.data.DataLoader(data(x[:n], y[:n]), batch_size=batch_size, shuffle=True, drop_last=True,
                                        generator=make_gen(shuffle_seed))
    valid = torch.utils.data.DataLoader(data(x[n:], y[n:]), batch_size=batch_size, shuffle=True, drop_last=True,
                                        generator=make_gen(2))
    return train, valid


def search(case: str, *, batch_size: int = BATCH, shuffle_seed: int = 1, stop_at: int | None = None, **kwargs):
    train, valid = loaders(batch_size, shuffle_seed)
    if stop_at is not None:
        train = _StopAt(train, stop_at + 1)  # +1: run_search draws one training batch to check it
    return run_search(tiny_search(**CASES[case]), train, valid, epochs=1, gen=make_gen(0), progress=False, **kwargs)


def summary(result) -> dict:
    s = result.state
    return {"alphas": s.alphas, "weights": s.weights, "stats": s.stats, "step": s.step, "genotype": result.genotype,
            "history": [{k: v for k, v in r.items() if k != "genotype"} for r in result.history]}


def selection_results(searched: dict, sync=None) -> dict:
    """Perturbation scores (every op, and screened) and the genotype of a searched state; ``sync`` splits them."""
    cfg = tiny_search(**CASES["first_order"])
    state = state_of(searched)
    batches = selection_batches(loaders()[1], 16, "cpu")
    out = {}
    for exhaustive in (True, False):
        p = Perturbation(state.weights, state.alphas, state.stats, batches, cfg=cfg, sync=sync)
        if exhaustive:
            p.measure([c for group in p.groups for c in group])
        else:
            p.settle()
        out[exhaustive] = {"scores": p.scores(), "evaluations": p.evaluations}
    out["genotype"] = select_genotype(state, cfg, loaders()[1], "perturbation", 16, "cpu", sync=sync)[0]
    return out


def state_of(searched: dict):
    return init_search(tiny_search(**CASES["first_order"]), make_gen(0))._replace(
        weights=searched["weights"], alphas=searched["alphas"], stats=searched["stats"])


def toy_data():
    """float64 (8, 3, 5, 1) channels_last inputs, per-sample weights and three parameter vectors."""
    g = make_gen(3)
    x = (2 * torch.randn(8, 3, 5, 1, dtype=torch.float64, generator=g) + 1).contiguous(memory_format=L.CHANNELS_LAST)
    c = torch.arange(1.0, 9.0, dtype=torch.float64)
    w, a, v = (torch.randn(3, dtype=torch.float64, generator=g) for _ in range(3))
    return x, c, w, a, v


def toy_derivatives(x, c, w, a, v, sync=None) -> dict:
    """First and second derivatives of a BatchNorm'd loss, by every torch.func composition the search uses.

    The loss is the mean over the samples of ``x`` (the global batch, or a rank's shard of it in
    data-parallel mode, ``sync`` given, where gradients are synced and BN statistics are global).
    """
    from torch.func import grad, jvp

    mean0, var0 = torch.zeros(3, dtype=x.dtype), torch.ones(3, dtype=x.dtype)

    def loss(w, a):
        if sync is not None:
            w, a = sync.sync_grads(w), sync.sync_grads(a)
        y, _, _ = L.batch_norm(torch.tanh(x * a[None, :, None, None]), mean0, var0, w, None, train=True, sync=sync)
        return (torch.sin(y) ** 2 * c[:, None, None, None]).mean()

    _, new_mean, new_var = L.batch_norm(torch.tanh(x * a[None, :, None, None]), mean0, var0, w, None, train=True,
                                        sync=sync)
    return {
        "grad_a": grad(loss, argnums=1)(w, a),
        "grad_w": grad(loss)(w, a),
        "hvp_forward_over_reverse": jvp(lambda w_: grad(loss, argnums=1)(w_, a), (w,), (v,))[1],
        "hvp_reverse_over_reverse": grad(lambda a_: torch.dot(grad(loss)(w, a_), v))(a),
        "grad_of_grad_norm": grad(lambda w_: grad(loss, argnums=1)(w_, a).pow(2).sum())(w),
        "running_mean": new_mean,
        "running_var": new_var,
    }


def _worker(rank: int, world: int, init: str, out: str) -> None:
    """One rank of the two-process job: every check's result goes to ``out/rank{rank}.pt``."""
    import datetime

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=TIMEOUT))
    results: dict = {}
    try:
        x, c, w, a, v = toy_data()
        m = x.shape[0] // world
        results["toy"] = toy_derivatives(x[rank * m : (rank + 1) * m], c[rank * m : (rank + 1) * m], w, a, v,
                                         sync=D.Sync())
        for case in CASES:
            results[case] = summary(search(case))  # data parallel by itself: a group of 2 ranks is initialised
        results["selection"] = selection_results(results["first_order"], sync=D.Sync())
        results["perturbation"] = summary(search("first_order", selection="perturbation", selection_samples=16))
        try:  # each rank is told its own checkpoint path: only rank 0's may appear
            search("first_order", stop_at=2, checkpoint=Path(out) / f"checkpoint{rank}.pt", checkpoint_every=1)
        except _Interrupted:
            pass
        dist.barrier()  # rank 0 has written the checkpoint of step 2
        results["resumed"] = summary(search("first_order", resume=Path(out) / "checkpoint0.pt"))
        results["checkpoints"] = sorted(p.name for p in Path(out).glob("checkpoint*.pt"))
        try:
            search("first_order", batch_size=9)
        except ValueError as err:
            results["indivisible"] = str(err)
        try:
            search("first_order", shuffle_seed=1 + rank)  # a per-rank seed: the ranks see different batches
        except ValueError as err:
            results["different_data"] = str(err)
    except BaseException:
        results["error"] = traceback.format_exc()
        raise
    finally:
        torch.save(results, Path(out) / f"rank{rank}.pt")
        dist.destroy_process_group()


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def group1():
    """A one-rank gloo process group in the test process (torn down afterwards)."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _launch(cmd: list[str], cwd: Path, n: int) -> list[tuple[int, str]]:
    """Run ``n`` commands (``cmd`` with ``{rank}`` filled in) at once; returns (exit code, output) each."""
    path = os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")])  # the workers import this file
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    procs, logs = [], []
    for r in range(n):
        log = open(cwd / f"log{r}.txt", "w+")
        logs.append(log)
        # a session of its own: a hung job is killed with every process it started (torchrun's workers)
        procs.append(subprocess.Popen([a.format(rank=r) for a in cmd], cwd=cwd, env=env, stdout=log,
                                      stderr=subprocess.STDOUT, text=True, start_new_session=True))
    try:
        for p in procs:
            p.wait(timeout=TIMEOUT)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    results = []
    for p, log in zip(procs, logs):
        log.seek(0)
        results.append((p.returncode, log.read()))
        log.close()
    return results


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Both ranks' results of the two-process job (``_worker``)."""
    out = tmp_path_factory.mktemp("dp2")
    init = f"file://{out / 'store'}"
    code = "import sys, test_distributed as t; t._worker(int(sys.argv[1]), 2, sys.argv[2], sys.argv[3])"
    runs = _launch([sys.executable, "-c", code, "{rank}", init, str(out)], out, 2)
    for code_, log in runs:
        assert code_ == 0, log[-4000:]
    return [dict(torch.load(out / f"rank{r}.pt", weights_only=False), out=out) for r in range(2)]


@pytest.fixture(scope="module")
def references():
    """Single-process results of every case, on the same global batches."""
    torch.set_num_threads(1)
    return {case: summary(search(case)) for case in CASES}


def _assert_close_trees(a, b, **tol):
    la, lb = tree.leaves(a), tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        torch.testing.assert_close(x, y, **tol)


# --- one process ---------------------------------------------------------------------------------


@pytest.mark.parametrize("affine", [True, False])
def test_sync_batch_norm_on_one_rank_equals_f_batch_norm(group1, affine):
    g = make_gen(0)
    x = (3 * torch.randn(6, 4, 7, 1, dtype=torch.float64, generator=g) + 2).contiguous(memory_format=L.CHANNELS_LAST)
    mean, var = torch.randn(4, dtype=torch.float64, generator=g), torch.rand(4, dtype=torch.float64, generator=g) + 0.5
    weight, bias = (torch.randn(4, dtype=torch.float64, generator=g) for _ in range(2))
    if not affine:
        weight = bias = None
    r = torch.randn(x.shape, dtype=torch.float64, generator=g)

    def plain(x, weight, bias):
        m, v = mean.clone(), var.clone()
        y = F.batch_norm(x, m, v, weight, bias, True, L.BN_MOMENTUM, L.BN_EPS)
        return (y * r).sum(), (y, m, v)

    def synced(x, weight, bias):
        y, m, v = L.batch_norm(x, mean, var, weight, bias, train=True, sync=D.Sync())
        return (y * r).sum(), (y, m, v)

    argnums = (0, 1, 2) if affine else 0
    want_g, want = torch.func.grad(plain, argnums=argnums, has_aux=True)(x, weight, bias)
    got_g, got = torch.func.grad(synced, argnums=argnums, has_aux=True)(x, weight, bias)
    tol = dict(rtol=1e-10, atol=1e-11)
    _assert_close_trees(got, want, **tol)  # output, new running mean, new running var (unbiased)
    _assert_close_trees(got_g, want_g, **tol)
    assert got[0].is_contiguous(memory_format=L.CHANNELS_LAST)


def test_data_parallel_search_on_one_rank_equals_the_plain_search(group1, references):
    got = summary(search("exact", sync=D.Sync()))
    want = references["exact"]
    for key in ("alphas", "weights", "stats"):
        _assert_close_trees(got[key], want[key], rtol=1e-5, atol=1e-6)
    assert got["genotype"] == want["genotype"]
    with pytest.raises(ValueError, match="compile=True is not supported in data-parallel mode"):
        search("first_order", sync=D.Sync(), compile=True)


def test_data_parallel_mode_needs_a_process_group_and_is_off_by_default():
    assert D.default_sync() is None  # no process group: run_search searches in one process
    with pytest.raises(ValueError, match="needs an initialised torch.distributed process group"):
        D.Sync()
    # no sync unless one is passed: the step, the loss and BatchNorm default to a single process
    for fn in (search_step, supernet_loss, L.batch_norm, L.apply_bn):
        assert inspect.signature(fn).parameters["sync"].default is None, fn.__name__


# --- two processes -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_equal_one_process_on_the_global_batch(two_ranks, references, case):
    want = references[case]
    for rank, results in enumerate(two_ranks):
        assert "error" not in results, results.get("error")
        got = results[case]
        for key in ("alphas", "weights", "stats"):
            _assert_close_trees(got[key], want[key], **F32)
        assert int(got["step"]) == int(want["step"]) == STEPS
        assert got["genotype"] == want["genotype"]
        for g, w in zip(got["history"], want["history"]):  # metrics of the global batch, on every rank
            assert g.keys() == w.keys()
            for k in w:
                assert g[k] == pytest.approx(w[k], rel=1e-4, abs=1e-6), (rank, k)
    # the ranks hold the same state bit for bit
    for key in ("alphas", "weights", "stats"):
        assert tree.all_equal(two_ranks[0][case][key], two_ranks[1][case][key])


def test_two_ranks_split_the_selection_and_get_one_process_scores_bit_for_bit(two_ranks):
    # the same searched state in one process: every score equal, the masked evaluations split over the ranks
    want = selection_results(two_ranks[0]["first_order"])
    for exhaustive in (True, False):
        for results in two_ranks:
            assert "error" not in results, results.get("error")
            got = results["selection"][exhaustive]
            assert tree.all_equal(got["scores"], want[exhaustive]["scores"]), exhaustive
        shares = [results["selection"][exhaustive]["evaluations"] for results in two_ranks]
        # every masked evaluation on one rank only (the screen's two batches: one per rank, counted on each)
        assert sum(shares) == want[exhaustive]["evaluations"] + (0 if exhaustive else 1)
        assert max(shares) < want[exhaustive]["evaluations"]
    assert two_ranks[0]["selection"]["genotype"] == two_ranks[1]["selection"]["genotype"] == want["genotype"]
    # a data-parallel search with perturbation selection: one genotype on every rank, the state's pick
    picked = [results["perturbation"]["genotype"] for results in two_ranks]
    assert picked[0] == picked[1] == selection_results(two_ranks[0]["perturbation"])["genotype"]


def test_two_ranks_sync_derivatives_of_every_order(two_ranks):
    want = toy_derivatives(*toy_data())
    assert want["grad_a"].abs().max() > 1e-3 and want["hvp_forward_over_reverse"].abs().max() > 1e-3
    for results in two_ranks:
        for key, value in want.items():
            torch.testing.assert_close(results["toy"][key], value, rtol=1e-10, atol=1e-12, msg=key)
    # forward-over-reverse and reverse-over-reverse mixed second derivatives agree with each other
    torch.testing.assert_close(want["hvp_forward_over_reverse"], want["hvp_reverse_over_reverse"])


def test_two_ranks_resume_from_rank_0s_checkpoint(two_ranks):
    for results in two_ranks:
        resumed, whole = results["resumed"], results["first_order"]
        for key in ("alphas", "weights", "stats"):
            assert tree.all_equal(resumed[key], whole[key]), key
        assert resumed["genotype"] == whole["genotype"]
    assert two_ranks[0]["checkpoints"] == two_ranks[1]["checkpoints"] == ["checkpoint0.pt"]  # rank 0 writes
    # the resumed ranks started from step 2, where the interrupted search stopped
    assert int(load_checkpoint(two_ranks[0]["out"] / "checkpoint0.pt")["state"]["step"]) == 2


def test_two_ranks_reject_a_batch_not_divisible_by_the_world_size_and_different_data(two_ranks):
    for results in two_ranks:
        msg = results["indivisible"]
        assert "batch of 9 samples does not split evenly over the 2 data-parallel processes" in msg
        assert "divisible by 2 (e.g. 8 or 10)" in msg
        assert "The ranks see different first training batches" in results["different_data"]


def test_cli_rejects_a_batch_size_not_divisible_by_the_torchrun_world_size(tmp_path, monkeypatch, capsys):
    from fnas.cli import main

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    out = tmp_path / "run"
    assert main(["search", "--data", str(_npz(tmp_path / "data.npz")), "--batch-size", "10", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--batch-size 10 (the global batch) does not split evenly over the 4 processes" in err
    assert "use a multiple of 4, e.g. 8 or 12" in err
    assert not out.exists()


def test_cli_rejects_compile_under_torchrun(tmp_path, monkeypatch, capsys):
    from fnas.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    out = tmp_path / "run"
    assert main(["search", "--data", str(_npz(tmp_path / "data.npz")), "--compile", "--out", str(out)]) == 2
    assert "--compile is not supported in a torchrun job" in capsys.readouterr().err
    assert not out.exists()


# --- the CLI under torchrun ----------------------------------------------------------------------


def _npz(path: Path) -> Path:
    rng = np.random.default_rng(0)
    y = np.arange(90) % 3
    t = np.arange(16)
    x = np.sin(2 * np.pi * (y[:, None, None] + 1) * t / 16 + rng.uniform(0, 2 * np.pi, (90, 2, 1)))
    np.savez(path, X=(x + 0.3 * rng.standard_normal(x.shape)).astype(np.float32), y=y)
    return path


def test_torchrun_cli_search_matches_one_process_and_only_rank_0_writes(tmp_path):
    from fnas.cli import main

    data = _npz(tmp_path / "data.npz")
    opts = ["search", "--data", str(data), "--space", "cell", "--C", "4", "--layers", "3", "--nodes", "2",
            "--multiplier", "2", "--stem-multiplier", "1", "--batch-size", "8", "--epochs", "2", "--warmup-epochs", "1",
            "--train-epochs", "1", "--quiet"]
    single = tmp_path / "single"
    assert main([*opts, "--out", str(single)]) == 0

    job = tmp_path / "job"
    job.mkdir()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "fnas"]
    [(code, out)] = _launch([*torchrun, *opts], job, 1)  # no --out: rank 0 names the folder runs/data-<time>
    assert code == 0, out[-4000:]
    assert out.count("fnas search: done") == 1 and "data parallel: 2 processes (gloo)" in out
    assert sorted(p.name for p in job.iterdir()) == ["log0.txt", "runs"]
    [run] = list((job / "runs").iterdir())
    assert sorted(p.name for p in run.rglob("*")) == sorted(p.name for p in single.rglob("*"))

    assert load_genotype(run / "genotype.json") == load_genotype(single / "genotype.json")
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2 and config["cli"]["batch_size"] == 8  # the global batch
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    want = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in records] == [r["phase"] for r in want] == ["search", "search", "train"]
    for r, w in zip(records[:2], want[:2]):
        assert r["train_loss"] == pytest.approx(w["train_loss"], rel=1e-4)
    got_a, want_a = (load_checkpoint(f / "checkpoint.pt")["state"]["alphas"] for f in (run, single))
    _assert_close_trees(got_a, want_a, **F32)
