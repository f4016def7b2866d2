"""One search step at the default 1D config: seed-style stateful baseline vs fnas ``search_step``.

Groups compare like with like: first-order steps; second-order steps (baseline finite difference,
fnas finite difference, fnas exact K=1); fnas exact with K = 1, 2, 3 unrolled steps. A default step
takes 1-25 s on one thread, hence few rounds. A cheap SMALL_1D / DARTS_2D group runs too.

Compiled steps: the small_1d group runs by default. The default 1D and the 2D config compiled are
opt-in (``FNAS_BENCH_HEAVY_COMPILE=1 pytest bench -k heavy``): each inductor compile takes 20-45
minutes on one core of a 2-vCPU VM (measured: bench/COMPILED.md, which ``bench/compiled_step.py``
writes with the baseline and a profile beside them).
"""

from __future__ import annotations

import os

import pytest

import workloads as W

ROUNDS = {"step_fnas_exact_k2": 2, "step_fnas_exact_k3": 1}  # the rest: 3


def _bench(benchmark, name, group, space="default_1d"):
    benchmark.group = group
    work = W.build_step(name, space=space)
    benchmark.extra_info["label"] = work.label
    benchmark.pedantic(work.run, rounds=ROUNDS.get(name, 3), warmup_rounds=1)


@pytest.mark.parametrize("name", ["step_baseline_fo", "step_fnas_fo", "step_fnas_fo_plain"])
def test_step_first_order(benchmark, name):
    _bench(benchmark, name, "step first order, default_1d")


@pytest.mark.parametrize("name", ["step_baseline_fd", "step_fnas_fd", "step_fnas_exact_k1"])
def test_step_second_order(benchmark, name):
    _bench(benchmark, name, "step second order (K=1), default_1d")


@pytest.mark.parametrize("name", ["step_fnas_exact_k1", "step_fnas_exact_k2", "step_fnas_exact_k3"])
def test_step_unrolled(benchmark, name):
    _bench(benchmark, name, "step exact unrolled K, default_1d")


@pytest.mark.parametrize(
    "name", ["step_baseline_fo", "step_fnas_fo", "step_baseline_fd", "step_fnas_fd", "step_fnas_exact_k1"]
)
def test_step_small(benchmark, name):
    _bench(benchmark, name, "step small_1d (C=8, 5 cells, batch 32)", space="small_1d")


@pytest.mark.parametrize("name", ["step_fnas_fo", "step_fnas_exact_k1"])
def test_step_darts_2d(benchmark, name):
    _bench(benchmark, name, "step darts_2d (3x32x32, C=8, 5 cells, batch 32)", space="darts_2d")


@pytest.mark.parametrize("name", ["step_fnas_fo", "step_fnas_fo_compiled", "step_fnas_exact_k1", "step_fnas_exact_k1_compiled"])
def test_step_compiled(benchmark, name):
    # the warm-up round of a _compiled step is its inductor compile (minutes on 2 cores); the CLI's
    # default network (small_1d) keeps that affordable
    _bench(benchmark, name, "step eager vs compiled, small_1d (C=8, 5 cells, batch 32)", space="small_1d")


HEAVY = os.environ.get("FNAS_BENCH_HEAVY_COMPILE") == "1"


@pytest.mark.skipif(not HEAVY, reason="20-45 min inductor compiles; set FNAS_BENCH_HEAVY_COMPILE=1 to run")
@pytest.mark.parametrize("space", ["default_1d", "darts_2d"])
@pytest.mark.parametrize("name", ["step_fnas_fo", "step_fnas_fo_compiled", "step_fnas_exact_k1", "step_fnas_exact_k1_compiled"])
def test_step_compiled_heavy(benchmark, name, space):
    _bench(benchmark, name, f"step eager vs compiled, {space}", space=space)
