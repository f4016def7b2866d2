"""The whole search step under ``torch.compile`` (inductor) vs eager, side by side on one thread.

    python bench/compiled_step.py [--space small_1d] [--methods fo exact_k1] [--rounds 5] [--out bench/COMPILED.md]

For each method, an eager and a compiled step start from the same state and batches; the first
compiled call (the compile, with inductor's on-disk caches disabled unless ``--warm-cache``) is timed
on its own, both are checked to agree after that step (alphas and weights within float32
tolerance), then the two run in alternation for ``--rounds`` rounds (consecutive steps of their
own searches) and the minimum and median per step are reported. The compile counter says how many
graphs dynamo built: one per method when the whole step is one graph, and no more after warm-up.

``small_1d`` is the CLI's default search network (C=8, 5 cells, batch 32); ``default_1d`` is the
benchmark's larger default (C=16, 8 cells, batch 64), whose inductor compile took longer than 25
minutes on a 2-core VM.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import workloads as W  # noqa: E402

from fnas import tree  # noqa: E402

METHODS = {"fo": "step_fnas_fo", "exact_k1": "step_fnas_exact_k1"}


def _max_rel(a, b) -> float:
    worst = 0.0
    for x, y in zip(tree.leaves(a), tree.leaves(b)):
        scale = float(y.abs().max()) or 1.0
        worst = max(worst, float((x - y).abs().max()) / scale)
    return worst


def measure(method: str, space: str, rounds: int, warm_cache: bool) -> dict:
    import torch._dynamo
    import torch._inductor.config

    name = METHODS[method]
    torch._dynamo.reset()
    eager = W.build_step(name, space=space)
    compiled = W.build_step(name + "_compiled", space=space)
    t_eager_first = W.time_once(eager.run)
    with torch._inductor.config.patch(force_disable_caches=not warm_cache):
        t_compile = W.time_once(compiled.run)
    graphs_after_first = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    state_e, state_c = eager.context[0], compiled.context[0]
    agree = {
        "alphas": _max_rel(state_c.alphas, state_e.alphas),
        "weights": _max_rel(state_c.weights, state_e.weights),
    }
    t_e, t_c = [], []
    for _ in range(rounds):
        t_e.append(W.time_once(eager.run))
        t_c.append(W.time_once(compiled.run))
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    return {
        "method": method, "space": space, "eager_first_s": t_eager_first, "compile_s": t_compile,
        "eager_min": min(t_e), "eager_median": statistics.median(t_e),
        "compiled_min": min(t_c), "compiled_median": statistics.median(t_c),
        "graphs_first": graphs_after_first, "graphs_end": graphs, "agree": agree,
    }  # fmt: skip


def render(rows: list[dict], args, elapsed: float, matmul: float) -> str:
    lines = [
        "# The whole search step, compiled (inductor) vs eager",
        "",
        f"Made by `python bench/compiled_step.py {' '.join(args.argv)}`".rstrip()
        + f" in {elapsed / 60:.1f} min; one torch thread; torch {torch.__version__}; 1-thread matmul "
        f"{matmul:.1f} GFLOP/s in the same run. Inductor's on-disk caches "
        f"{'allowed' if args.warm_cache else 'disabled'} (a cold compile).",
        "",
        "| space | method | eager step (min / median) | compiled step (min / median) | speed-up (min / median) "
        "| compile (first call) | graphs | max rel. diff after step 1 (alphas / weights) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['space']} | {r['method']} | {r['eager_min']:.3f} / {r['eager_median']:.3f} s | "
            f"{r['compiled_min']:.3f} / {r['compiled_median']:.3f} s | **{r['eager_min'] / r['compiled_min']:.2f}x** / "
            f"{r['eager_median'] / r['compiled_median']:.2f}x | {r['compile_s']:.0f} s | {r['graphs_first']} -> "
            f"{r['graphs_end']} | {r['agree']['alphas']:.1e} / {r['agree']['weights']:.1e} |"
        )
    lines += [
        "",
        "Graphs: dynamo's unique-graph counter after the first compiled call and at the end; equal numbers mean "
        "no recompilation over the timed steps.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default="small_1d", choices=sorted(W.SPACES))
    ap.add_argument("--methods", nargs="+", default=["fo", "exact_k1"], choices=sorted(METHODS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warm-cache", action="store_true", help="let inductor load cached kernels")
    ap.add_argument("--out", type=Path, default=HERE / "COMPILED.md")
    args = ap.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    W.use_one_thread()
    t0 = time.perf_counter()
    matmul = W.matmul_gflops()
    rows = []
    for method in args.methods:
        row = measure(method, args.space, args.rounds, args.warm_cache)
        print(row, flush=True)
        rows.append(row)
    text = render(rows, args, time.perf_counter() - t0, matmul)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
