"""The whole search step under ``torch.compile`` (inductor) vs eager, side by side on one thread.

    python bench/compiled_step.py [--space small_1d] [--methods fo exact_k1] [--rounds 5]
                                  [--cache fresh|off] [--backend inductor] [--profile]
                                  [--out bench/COMPILED.md]

For each method, an eager and a compiled step start from the same state and batches. The first
compiled call (the cold compile) is timed on its own; both are checked to agree after that step
(alphas and weights within float32 tolerance); then the two, and the seed-style baseline's step of
the same network (``bench/seed_baseline.py``: its first-order step, and its finite-difference
unrolled step beside fnas' exact one), run in alternation for ``--rounds`` rounds (consecutive
steps of their own searches) and the minimum and median per step are reported. "Agree" is judged
against a yardstick measured in the same run: the eager step on the same batches with their rows
permuted (three orders), the same step mathematically with other float32 round-off. It is only a
yardstick: the exact hypergradient is piecewise smooth, and whether round-off crosses a kink (a
sign flip that Adam's first step turns into a full learning rate) is a matter of chance that a few
orders may not sample; ``bench/compiled_hypergrad.py`` measures that distribution. The compile
counter says how many graphs dynamo built: one per method when the whole step is one graph, and
no more after warm-up.

Caches: ``--cache fresh`` (the default) runs everything against a new, empty inductor cache
directory, so the first compile is what a user's first run pays (header precompilation included),
and then times the first call in a *second process* sharing that directory: what every later run of
the same network pays (dynamo still traces; inductor loads the compiled graph from its cache).
``--cache off`` disables inductor's caches instead (no warm-start figure).

Spaces: ``tiny_1d`` (C=4, 3 cells of 2 nodes, batch 32) compiles in minutes and is there to see the
whole pipeline work; ``small_1d`` is the CLI's default search network (C=8, 5 cells, batch 32);
``default_1d`` is the benchmark's larger default (C=16, 8 cells, batch 64). Measured here
(bench/COMPILED.md), cold compiles on one core: 12 (first order) and 32 (exact) minutes on
``small_1d``, 21-25 and 46 on ``default_1d``; warm starts take 1-3 minutes. ``darts_2d`` (3x32x32,
C=8, 5 cells, the 8 DARTS ops) has no baseline column: the seed baseline is kx1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import workloads as W  # noqa: E402

from fnas.core import tree  # noqa: E402

METHODS = {"fo": "step_fnas_fo", "exact_k1": "step_fnas_exact_k1"}
# the seed-style baseline's step of the same network (bench/seed_baseline.py): its unrolled step
# approximates the hypergradient with finite differences where fnas computes it exactly
BASELINES = {"fo": "step_baseline_fo", "exact_k1": "step_baseline_fd"}
REORDERS = 3  # row orders of the eager yardstick (the largest difference is reported)
_FRESH_ENV = "FNAS_BENCH_FRESH_CACHE"  # set in the child that owns the fresh cache directory


def _max_rel(a, b) -> float:
    worst = 0.0
    for x, y in zip(tree.leaves(a), tree.leaves(b)):
        scale = float(y.abs().max()) or 1.0
        worst = max(worst, float((x - y).abs().max()) / scale)
    return worst


def _cache_hits() -> int:
    return int(torch._dynamo.utils.counters["inductor"]["fxgraph_cache_hit"])


def warm_start(method: str, space: str, backend: str = "inductor") -> dict:
    """Time the first compiled call in this (new) process: a later run's start, caches filled."""
    compiled = W.build_step(METHODS[method] + "_compiled", space=space, compile_backend=backend)
    seconds = W.time_once(compiled.run)
    return {"warm_compile_s": seconds, "fxgraph_cache_hits": _cache_hits()}


# oneDNN's convolutions, forward and backward, by their self time (the rest of a step is what fusion can touch)
CONV_OPS = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::convolution", "aten::_convolution")


def profile_step(work, top: int = 8) -> dict:
    """Self CPU time of one (warm) step by kind: oneDNN convolutions, inductor's generated kernels
    (named ``graph_*`` when ``cpp.enable_kernel_profile`` is on) and the rest, plus the top ops."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        work.run()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    ms = lambda keep: sum(e.self_cpu_time_total for e in events if keep(e.key)) / 1e3  # noqa: E731
    return {
        "total_ms": ms(lambda k: True),
        "conv_ms": ms(lambda k: k in CONV_OPS),
        "generated_ms": ms(lambda k: k.startswith("graph_")),
        "top": [(e.key[:70], e.count, e.self_cpu_time_total / 1e3) for e in events[:top]],
    }


def measure(method: str, space: str, rounds: int, cache: str, backend: str = "inductor", profile: bool = False) -> dict:
    import torch._dynamo
    import torch._inductor.config

    name = METHODS[method]
    torch._dynamo.reset()
    eager = W.build_step(name, space=space)
    compiled = W.build_step(name + "_compiled", space=space, compile_backend=backend)
    t_eager_first = W.time_once(eager.run)
    with torch._inductor.config.patch(force_disable_caches=cache == "off"):
        t_compile = W.time_once(compiled.run)
    graphs_after_first = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    state_e, state_c = eager.context[0], compiled.context[0]
    agree = {
        "alphas": _max_rel(state_c.alphas, state_e.alphas),
        "weights": _max_rel(state_c.weights, state_e.weights),
        "reordered_alphas": 0.0,
        "reordered_weights": 0.0,
    }
    # the yardstick: eager on the same batches in other row orders (the same step mathematically)
    for seed in range(1, REORDERS + 1):
        reordered = W.build_step(name, space=space, reorder=seed)
        reordered.run()
        state_r = reordered.context[0]
        agree["reordered_alphas"] = max(agree["reordered_alphas"], _max_rel(state_r.alphas, state_e.alphas))
        agree["reordered_weights"] = max(agree["reordered_weights"], _max_rel(state_r.weights, state_e.weights))
    baseline = W.build_step(BASELINES[method], space=space) if W.SPACES[space].is_1d else None  # kx1 only
    if baseline is not None:
        baseline.run()  # warm-up
    t_e, t_c, t_b = [], [], []
    for _ in range(rounds):
        t_e.append(W.time_once(eager.run))
        t_c.append(W.time_once(compiled.run))
        if baseline is not None:
            t_b.append(W.time_once(baseline.run))
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    row = {
        "method": method, "space": space, "eager_first_s": t_eager_first, "compile_s": t_compile,
        "eager_min": min(t_e), "eager_median": statistics.median(t_e),
        "compiled_min": min(t_c), "compiled_median": statistics.median(t_c),
        "baseline_min": min(t_b) if t_b else None, "baseline_median": statistics.median(t_b) if t_b else None,
        "graphs_first": graphs_after_first, "graphs_end": graphs, "agree": agree,
    }  # fmt: skip
    if profile:
        row["profile"] = {"eager": profile_step(eager), "compiled": profile_step(compiled)}
    if cache == "fresh":
        probe = [sys.executable, str(Path(__file__).resolve()), "--warm-start", method, "--space", space,
                 "--backend", backend] + (["--profile"] if profile else [])
        out = subprocess.run(probe, env=os.environ.copy(), capture_output=True, text=True, check=True).stdout
        row.update(json.loads(out.strip().splitlines()[-1]))
    return row


def render(rows: list[dict], args, elapsed: float, matmul: float) -> str:
    caches = {
        "fresh": "a new, empty inductor cache directory (a cold first compile; later runs start warm)",
        "off": "inductor's caches disabled (a cold compile)",
    }[args.cache]
    lines = [
        f"# The whole search step, compiled ({args.backend}) vs eager",
        "",
        f"Made by `python bench/compiled_step.py {' '.join(args.argv)}`".rstrip()
        + f" in {elapsed / 60:.1f} min; one torch thread; torch {torch.__version__}; 1-thread matmul "
        f"{matmul:.1f} GFLOP/s in the same run; {caches}.",
        "",
        "| space | method | eager step (min / median) | compiled step (min / median) | speed-up (min / median) "
        "| seed baseline step (min) | compiled vs baseline "
        "| cold compile (first call) | warm start (later run) | graphs "
        "| compiled vs eager after step 1 (max rel. diff, alphas / weights) "
        f"| eager on reordered batches vs eager (largest of {REORDERS} orders) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        warm = f"{r['warm_compile_s']:.0f} s" if "warm_compile_s" in r else "n/a"
        if r["baseline_min"] is None:  # a 2D space: the seed baseline is kx1 only
            base = vs_base = "n/a"
        else:
            base = f"{r['baseline_min']:.3f} s ({BASELINES[r['method']]})"
            vs_base = f"{r['baseline_min'] / r['compiled_min']:.2f}x"
        lines.append(
            f"| {r['space']} | {r['method']} | {r['eager_min']:.3f} / {r['eager_median']:.3f} s | "
            f"{r['compiled_min']:.3f} / {r['compiled_median']:.3f} s | **{r['eager_min'] / r['compiled_min']:.2f}x** / "
            f"{r['eager_median'] / r['compiled_median']:.2f}x | {base} | {vs_base} | {r['compile_s']:.0f} s | "
            f"{warm} | {r['graphs_first']} -> {r['graphs_end']} | {r['agree']['alphas']:.1e} / "
            f"{r['agree']['weights']:.1e} | {r['agree']['reordered_alphas']:.1e} / "
            f"{r['agree']['reordered_weights']:.1e} |"
        )
    lines += [
        "",
        "Graphs: dynamo's unique-graph counter after the first compiled call and at the end; equal numbers mean "
        "no recompilation over the timed steps. Warm start: the first compiled call in a second process that "
        "shares the cache directory (dynamo traces again, inductor's compiled graph comes from the cache). "
        "Agreement: the last column is what float32 round-off alone does to the same eager step (its batches' "
        "rows permuted, which changes nothing mathematically); compiled vs eager is judged against it.",
        "",
    ]
    profiled = [r for r in rows if "profile" in r]
    if profiled:
        lines += [
            "## Where the time goes (torch.profiler, one warm step after the timed rounds, self CPU time)",
            "",
            "| space | method | step | profiled | oneDNN convolutions | inductor's generated kernels | the rest |",
            "|---|---|---|---:|---:|---:|---:|",
        ]
        for r in profiled:
            for kind, p in r["profile"].items():
                rest = p["total_ms"] - p["conv_ms"] - p["generated_ms"]
                share = lambda ms: f"{ms:,.0f} ms ({100 * ms / p['total_ms']:.0f}%)"  # noqa: E731
                lines.append(
                    f"| {r['space']} | {r['method']} | {kind} | {p['total_ms']:,.0f} ms | {share(p['conv_ms'])} "
                    f"| {share(p['generated_ms'])} | {share(rest)} |"
                )
        for r in profiled:
            for kind, p in r["profile"].items():
                lines += ["", f"Top ops, {r['space']} {r['method']} {kind} (self ms, calls):", ""]
                lines += [f"- `{name}`: {self_ms:,.1f} ms, {calls} calls" for name, calls, self_ms in p["top"]]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default="small_1d", choices=sorted(W.SPACES))
    ap.add_argument("--methods", nargs="+", default=["fo", "exact_k1"], choices=sorted(METHODS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cache", choices=("fresh", "off"), default="fresh",
                    help="fresh: an empty cache directory, then a warm start in a second process; off: no caches")
    ap.add_argument("--backend", default="inductor",
                    help="torch.compile backend (aot_eager: a quick check of this script)")
    ap.add_argument("--out", type=Path, default=HERE / "COMPILED.md")
    ap.add_argument("--profile", action="store_true",
                    help="also profile one warm eager and one compiled step (inductor's kernels named in the profile)")
    ap.add_argument("--warm-start", choices=sorted(METHODS), help=argparse.SUPPRESS)  # the second process
    args = ap.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    W.use_one_thread()
    if args.profile:  # part of inductor's cache key: the warm-start process sets it too
        import torch._inductor.config

        torch._inductor.config.cpp.enable_kernel_profile = True
    if args.warm_start:
        print(json.dumps(warm_start(args.warm_start, args.space, args.backend)))
        return
    if args.cache == "fresh" and os.environ.get(_FRESH_ENV) is None:
        # inductor reads its cache directory at import: rerun this script in a child that owns a new one
        with tempfile.TemporaryDirectory(prefix="fnas-inductor-") as cache_dir:
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir, _FRESH_ENV: "1"}
            code = subprocess.call([sys.executable, str(Path(__file__).resolve()), *args.argv], env=env)
        sys.exit(code)
    t0 = time.perf_counter()
    matmul = W.matmul_gflops()
    rows = []
    for method in args.methods:
        row = measure(method, args.space, args.rounds, args.cache, args.backend, args.profile)
        print(row, flush=True)
        rows.append(row)
    text = render(rows, args, time.perf_counter() - t0, matmul)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
