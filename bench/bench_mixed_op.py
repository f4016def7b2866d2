"""Mixed op, forward + backward of the 4 edges leaving state 0 of a DEFAULT_1D normal cell.

Naive seed NCHW ``MixedOp`` modules vs fnas per-edge ``apply_mixed_op`` vs ``apply_edges_fused``
(eager, and under ``torch.compile`` with ``FNAS_BENCH_COMPILE=1``: inductor takes ~40 s here).
"""

from __future__ import annotations

import os
import time

import pytest

import workloads as W

COMPILE = os.environ.get("FNAS_BENCH_COMPILE", "") not in ("", "0")
ROUNDS = 20


@pytest.mark.parametrize(
    "name",
    ["mixed_op_naive_nchw", "mixed_op_fnas_plain", "mixed_op_fnas_fused"],
    ids=["naive_nchw", "fnas_plain", "fnas_fused"],
)
def test_mixed_op(benchmark, name):
    benchmark.group = "mixed-op default_1d (64,16,128,1) x4 edges fwd+bwd"
    work = W.build(name)
    benchmark.pedantic(work.run, rounds=ROUNDS, warmup_rounds=1)


@pytest.mark.skipif(not COMPILE, reason="set FNAS_BENCH_COMPILE=1 (inductor compile takes ~40 s)")
def test_mixed_op_fused_compiled(benchmark):
    import torch._dynamo.utils

    benchmark.group = "mixed-op default_1d (64,16,128,1) x4 edges fwd+bwd"
    work = W.build("mixed_op_fnas_fused_compiled")
    torch._dynamo.utils.counters.clear()
    t0 = time.perf_counter()
    work.run()  # compiles forward and backward
    benchmark.extra_info["compile_s"] = time.perf_counter() - t0
    benchmark.pedantic(work.run, rounds=ROUNDS, warmup_rounds=1)
    benchmark.extra_info["unique_graphs"] = torch._dynamo.utils.counters["stats"]["unique_graphs"]
