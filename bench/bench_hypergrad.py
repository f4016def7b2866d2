"""The architecture gradient alone: first order vs DARTS finite difference vs exact (K = 1, 2, 3).

Same state (after one real weight step, so momentum buffers are nonzero) and batches for every
method; SMALL_1D is cheap, DEFAULT_1D is the real size.
"""

from __future__ import annotations

import pytest

import workloads as W

CASES = [("first_order", 1), ("finite_difference", 1), ("exact", 1), ("exact", 2), ("exact", 3)]
IDS = ["first_order", "finite_difference", "exact_k1", "exact_k2", "exact_k3"]


@pytest.mark.parametrize(("method", "k"), CASES, ids=IDS)
@pytest.mark.parametrize("space", ["small_1d", "default_1d"])
def test_hypergrad(benchmark, space, method, k):
    benchmark.group = f"hypergrad alone, {space}"
    work = W.build_hypergrad(method, k, space=space)
    rounds = 3 if space == "small_1d" else {1: 2, 2: 1, 3: 1}[k]
    benchmark.pedantic(work.run, rounds=rounds, warmup_rounds=1)
