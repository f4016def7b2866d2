"""Side-by-side benchmark report: every workload of ``bench/workloads.py`` timed in ONE process on
one thread, with useful FLOPs, achieved GFLOP/s against the measured matmul rate, speed ratios,
peak-RSS increase per step type (fresh subprocess each), hypergradient accuracy and a profile.

    python bench/report.py [--quick] [--no-compile] [--out bench/RESULTS.md]

Timings interleave the workloads round by round (so a slow spell of this shared 2-core machine
hits all of them alike) and report the minimum and the median over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import workloads as W  # noqa: E402
from fnas.core import tree  # noqa: E402

# (workload, space) -> rounds in (full, quick) mode; a warm-up call precedes the rounds.
MIXED_ROUNDS = (30, 10)
STEP_PLAN = [
    ("step_baseline_fo", "default_1d", (4, 2)),
    ("step_fnas_fo", "default_1d", (4, 2)),
    ("step_fnas_fo_plain", "default_1d", (3, 1)),
    ("step_baseline_fd", "default_1d", (3, 2)),
    ("step_fnas_fd", "default_1d", (3, 2)),
    ("step_fnas_exact_k1", "default_1d", (3, 2)),
    ("step_fnas_exact_k2", "default_1d", (2, 1)),
    ("step_fnas_exact_k3", "default_1d", (1, 0)),  # 0: skipped in --quick
    ("step_fnas_fo", "darts_2d", (3, 1)),
]
MEMORY_STEPS = [
    "step_baseline_fo",
    "step_fnas_fo",
    "step_fnas_fo_plain",
    "step_baseline_fd",
    "step_fnas_fd",
    "step_fnas_exact_k1",
    "step_fnas_exact_k2",
    "step_fnas_exact_k3",
]
ACCURACY_SPACES = ("small_1d", "default_1d")
ACCURACY_BATCH = 32
FLOP_BATCH = 8  # step FLOPs are counted at this batch and scaled by N / FLOP_BATCH (exactly linear in N)


# --- measuring --------------------------------------------------------------------------------


def interleaved(works: dict, rounds: dict, log) -> dict:
    """Time each workload ``rounds[key]`` times after one warm-up, round-robin; seconds per call."""
    times = {key: [] for key in works}
    for key, work in works.items():
        t = W.time_once(work.run)
        log(f"  warm-up {key}: {t:.3f} s")
    for r in range(max(rounds.values())):
        for key, work in works.items():
            if r < rounds[key]:
                times[key].append(W.time_once(work.run))
        log(f"  round {r + 1}/{max(rounds.values())} done")
    return times


def peak_rss_child(name: str, space: str) -> None:
    """Run in a fresh interpreter: build, then 2 steps; print the ru_maxrss increase (KiB) as JSON."""
    W.use_one_thread()
    work = W.build_step(name, space=space)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(2):
        work.run()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hwm = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmHWM:", "VmRSS:")):
            hwm[line.split(":")[0]] = int(line.split()[1])
    print(json.dumps({"name": name, "space": space, "before_kib": before, "after_kib": after, **hwm}))


def peak_rss(name: str, space: str = "default_1d") -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peak-rss-child", name, "--space", space]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True, cwd=HERE.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])


def flat(g) -> torch.Tensor:
    return torch.cat([t.reshape(-1).double() for t in tree.leaves(g)])


def accuracy_rows(space: str, log) -> list[dict]:
    """Hypergradients of each method vs the float64 exact (K=1, plain cell) hypergradient."""
    problem = W.hypergrad_problem(space, batch=ACCURACY_BATCH, warmup_steps=3)
    ref64 = problem.to(torch.float64, fused=False)
    ref = flat(ref64.hypergrad("exact")[0])
    cases = [
        ("first_order", "float32", problem),
        ("finite_difference", "float32", problem),
        ("exact", "float32", problem),
        ("finite_difference", "float64 (plain cell)", ref64),
    ]
    rows = []
    for method, dtype, prob in cases:
        g = flat(prob.hypergrad(method)[0])
        rows.append(
            dict(
                space=space,
                method=method,
                dtype=dtype,
                rel=float((g - ref).norm() / ref.norm()),
                cos=float(torch.nn.functional.cosine_similarity(g, ref, dim=0)),
                norm=float(g.norm()),
            )
        )
        log(f"  {space} {method} {dtype}: rel {rows[-1]['rel']:.2e} cos {rows[-1]['cos']:.6f}")
    rows.append(dict(space=space, method="exact (reference)", dtype="float64 (plain cell)", rel=0.0, cos=1.0, norm=float(ref.norm())))
    return rows


def profile_top(work, n: int = 10) -> tuple[float, list[dict]]:
    """Top-``n`` ops of one (warm) call by self CPU time: ``(total_ms, rows)``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        work.run()
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    total_self = sum(e.self_cpu_time_total for e in events)
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:n]
    return wall * 1e3, [
        dict(
            name=e.key,
            calls=e.count,
            self_ms=e.self_cpu_time_total / 1e3,
            self_pct=100 * e.self_cpu_time_total / total_self,
            total_ms=e.cpu_time_total / 1e3,
        )
        for e in rows
    ]


def machine_line() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        flags = ", ".join(f for f in ("avx512f", "avx2", "amx_tile") if f" {f}" in info)
    except OSError:
        pass
    return (
        f"{model} ({os.cpu_count()} logical CPUs; {flags}), Python {platform.python_version()}, "
        f"torch {torch.__version__}, torch threads {torch.get_num_threads()} "
        f"(interop {torch.get_num_interop_threads()})"
    )


# --- report ----------------------------------------------------------------------------------


def ms(t: float) -> str:
    return f"{1e3 * t:,.1f}" if t < 10 else f"{1e3 * t:,.0f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats; no compiled variant, no K=3")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile (inductor) mixed op")
    ap.add_argument("--warm-compile-cache", action="store_true", help="let inductor load cached kernels")
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--peak-rss-child", help=argparse.SUPPRESS)
    ap.add_argument("--space", default="default_1d", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.peak_rss_child:
        peak_rss_child(args.peak_rss_child, args.space)
        return 0

    W.use_one_thread()
    mode = 1 if args.quick else 0
    do_compile = not (args.quick or args.no_compile)
    t_start = time.perf_counter()
    load_start = os.getloadavg()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.1f}s] {msg}", flush=True)

    log(machine_line())
    matmul = [W.matmul_gflops()]
    log(f"matmul 1024^2 fp32, 1 thread: {matmul[0]:.1f} GFLOP/s")

    # memory first: a child's ru_maxrss starts at its parent's peak (Linux keeps it across fork and
    # exec), so the children are spawned while this process is still small.
    log("peak RSS (fresh subprocess per step type)")
    memory = []
    for name in MEMORY_STEPS:
        if args.quick and name == "step_fnas_exact_k3":
            continue
        m = peak_rss(name)
        memory.append(m)
        log(f"  {name}: +{(m['after_kib'] - m['before_kib']) / 1024:.0f} MiB")

    # mixed ops ------------------------------------------------------------------------------
    log("mixed ops")
    mixed_names = [n for n in W.MIXED_OPS if n != "mixed_op_fnas_fused_compiled"]
    works = {(n, "default_1d"): W.build_mixed_op(n) for n in mixed_names}
    compile_info = None
    if do_compile:
        import torch._dynamo.utils

        import torch._inductor.config

        torch._dynamo.utils.counters.clear()
        work = W.build_mixed_op("mixed_op_fnas_fused_compiled")
        # a cold compile: inductor's on-disk caches would otherwise turn a rerun's compile into a load
        with torch._inductor.config.patch(force_disable_caches=not args.warm_compile_cache):
            compile_s = W.time_once(work.run)
        log(f"  compiled mixed op: first call (compile fwd+bwd) {compile_s:.1f} s")
        works[("mixed_op_fnas_fused_compiled", "default_1d")] = work
        compile_info = {"first_call_s": compile_s, "cache": "allowed" if args.warm_compile_cache else "disabled"}
    times = interleaved(works, {k: MIXED_ROUNDS[mode] for k in works}, log)
    if do_compile:
        compile_info["unique_graphs"] = torch._dynamo.utils.counters["stats"]["unique_graphs"]

    # steps ------------------------------------------------------------------------------------
    log("steps")
    plan = [(n, s, r[mode]) for n, s, r in STEP_PLAN if r[mode] > 0]
    step_works = {(n, s): W.build_step(n, space=s) for n, s, _ in plan}
    times.update(interleaved(step_works, {(n, s): r for n, s, r in plan}, log))
    works.update(step_works)

    # profile (warm workloads) ----------------------------------------------------------------------
    log("profiles")
    profiles = {}
    for key in (("step_fnas_fo", "default_1d"), ("step_fnas_exact_k1", "default_1d")):
        profiles[key] = profile_top(works[key])
    del step_works
    works = {k: v for k, v in works.items() if k[0].startswith("mixed_op_")}

    matmul.append(W.matmul_gflops())
    log(f"matmul again: {matmul[1]:.1f} GFLOP/s")

    # useful FLOPs: one call of the plain fnas twin ------------------------------------------------
    log("FLOPs")
    flops = {}
    for name, space in times:
        twin = W.step_twin(name) if name.startswith("step_") else "mixed_op_fnas_plain"
        if (twin, space) not in flops:
            if twin.startswith("step_"):
                scale = W.BATCH[space] / FLOP_BATCH
                flops[(twin, space)] = round(scale * W.count_flops(W.build_step(twin, space=space, batch=FLOP_BATCH).run))
            else:
                flops[(twin, space)] = W.count_flops(W.build_mixed_op(twin).run)
            log(f"  {twin} [{space}]: {flops[(twin, space)] / 1e9:.2f} GFLOP")
    flop_check = None
    if not args.quick:  # the batch scaling, checked once at full batch
        full = W.count_flops(W.build_step("step_fnas_fo_plain").run)
        flop_check = (full, flops[("step_fnas_fo_plain", "default_1d")])
        log(f"  check at batch 64: {full / 1e9:.3f} vs scaled {flop_check[1] / 1e9:.3f} GFLOP")

    # accuracy ---------------------------------------------------------------------------------
    log("hypergradient accuracy")
    accuracy = [row for space in ACCURACY_SPACES for row in accuracy_rows(space, log)]

    load_end = os.getloadavg()
    elapsed = time.perf_counter() - t_start
    text = render(args, times, works_labels(times), flops, flop_check, max(matmul), matmul, compile_info, accuracy,
                  memory, profiles, load_start, load_end, elapsed)
    Path(args.out).write_text(text)
    log(f"wrote {args.out} ({elapsed / 60:.1f} min)")
    return 0


def works_labels(times) -> dict:
    labels = {}
    for name, space in times:
        if name.startswith("mixed_op_"):
            labels[(name, space)] = W.MIXED_LABELS[name]
        else:
            labels[(name, space)] = W.STEP_LABELS[name] + ("" if space == "default_1d" else f" [{space}]")
    return labels


def render(args, times, labels, flops, flop_check, rate, matmul, compile_info, accuracy, memory, profiles, load_start, load_end,
           elapsed) -> str:
    t_min = {k: min(v) for k, v in times.items()}
    t_med = {k: statistics.median(v) for k, v in times.items()}
    L = []
    L.append("# fnas benchmark report\n")
    L.append(
        f"Generated by `python bench/report.py{' --quick' if args.quick else ''}"
        f"{' --no-compile' if args.no_compile else ''}` in {elapsed / 60:.1f} min.\n"
    )
    L.append(f"- Machine: {machine_line()}")
    L.append(f"- Load average (1/5/15 min) at start {load_start[0]:.2f}/{load_start[1]:.2f}/{load_start[2]:.2f}, "
             f"at end {load_end[0]:.2f}/{load_end[1]:.2f}/{load_end[2]:.2f} (other processes share the 2 cores).")
    L.append(
        f"- 1-thread matmul rate (1024x1024 fp32 `torch.mm`, best of 20, measured at start and after the "
        f"timings: {matmul[0]:.1f} / {matmul[1]:.1f}): **{rate:.1f} GFLOP/s** (the best is used below)."
    )
    L.append(
        "- All timings in one process, 1 thread, workloads interleaved round by round after one warm-up "
        "call each; time = **minimum** over N rounds (median beside it). Ratios use the minima "
        "(median-based ratio in brackets)."
    )
    L.append(
        "- Useful FLOPs: `torch.utils.flop_counter.FlopCounterMode` total (convolutions + matmuls, forward "
        "and backward; BatchNorm, pooling and elementwise work are not counted) of ONE call of the plain "
        "(`fused=False` / per-edge `apply_mixed_op`) fnas implementation of the same computation; the "
        "baseline's first-order step counts as the fnas plain first-order step, its unrolled step as the "
        "fnas plain finite-difference step. Step FLOPs are counted at batch "
        f"{FLOP_BATCH} and scaled to the real batch (convolution and matmul FLOPs are exactly linear in N)"
        + (f"; checked at batch 64 for the first-order step: {flop_check[0]:,} counted vs {flop_check[1]:,} scaled."
           if flop_check else ".")
        + "\n"
    )

    L.append("## Times and achieved rate\n")
    L.append("| workload | N | time ms (min) | median ms | useful GFLOP | GFLOP/s | % of matmul |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")
    for key in times:
        name, space = key
        twin = W.step_twin(name) if name.startswith("step_") else "mixed_op_fnas_plain"
        f = flops[(twin, space)]
        gf = f / t_min[key] / 1e9
        L.append(
            f"| {labels[key]} | {len(times[key])} | {ms(t_min[key])} | {ms(t_med[key])} | {f / 1e9:.3f} | "
            f"{gf:.1f} | {100 * gf / rate:.1f}% |"
        )
    if compile_info:
        L.append(
            f"\nCompiled mixed op: first call (inductor compile of forward + backward, plus one run; on-disk "
            f"compile caches {compile_info['cache']}) "
            f"**{compile_info['first_call_s']:.1f} s**, not included above; dynamo unique graphs: "
            f"{compile_info['unique_graphs']} (no recompilation over the timed calls)."
        )
    L.append("")

    L.append("## Ratios (speed-up = time of the second / time of the first; > 1 means the first is faster)\n")
    L.append("| comparison | speed-up (min) | [median] |")
    L.append("|---|---:|---:|")
    D = "default_1d"

    def ratio(label, fast, slow):
        if fast in t_min and slow in t_min:
            L.append(f"| {label} | **{t_min[slow] / t_min[fast]:.2f}x** | [{t_med[slow] / t_med[fast]:.2f}x] |")

    ratio("fnas first-order step vs baseline first-order step", ("step_fnas_fo", D), ("step_baseline_fo", D))
    ratio("fnas exact (K=1) step vs baseline unrolled (finite-difference) step", ("step_fnas_exact_k1", D),
          ("step_baseline_fd", D))
    ratio("fnas finite-difference step vs baseline finite-difference step", ("step_fnas_fd", D), ("step_baseline_fd", D))
    ratio("fnas exact (K=1) step vs fnas finite-difference step", ("step_fnas_exact_k1", D), ("step_fnas_fd", D))
    ratio("fnas first-order step, fused vs plain cell", ("step_fnas_fo", D), ("step_fnas_fo_plain", D))
    ratio("fused mixed op vs naive NCHW `MixedOp` loop", ("mixed_op_fnas_fused", D), ("mixed_op_naive_nchw", D))
    ratio("fused mixed op vs fnas per-edge `apply_mixed_op`", ("mixed_op_fnas_fused", D), ("mixed_op_fnas_plain", D))
    ratio("compiled fused mixed op vs eager fused", ("mixed_op_fnas_fused_compiled", D), ("mixed_op_fnas_fused", D))
    ratio("compiled fused mixed op vs naive NCHW loop", ("mixed_op_fnas_fused_compiled", D), ("mixed_op_naive_nchw", D))
    for k in (2, 3):
        if (f"step_fnas_exact_k{k}", D) in t_min:
            L.append(
                f"| cost of exact K={k} relative to K=1 (time ratio K={k} / K=1) | "
                f"{t_min[(f'step_fnas_exact_k{k}', D)] / t_min[('step_fnas_exact_k1', D)]:.2f} | "
                f"[{t_med[(f'step_fnas_exact_k{k}', D)] / t_med[('step_fnas_exact_k1', D)]:.2f}] |"
            )
    L.append("")

    L.append("## Peak memory per step type (default_1d, batch 64)\n")
    L.append(
        "Each in a fresh subprocess: `ru_maxrss` after 2 steps minus `ru_maxrss` right after building the "
        "state and batches = **peak RSS increase** (includes allocator caching and the autograd graph).\n"
    )
    L.append(
        "Cross-check: `VmHWM` (the child's own peak RSS, /proc/self/status) after the 2 steps. Linux carries a "
        "parent's `ru_maxrss` into its children, so the children are spawned first, from a small parent.\n"
    )
    L.append("| step | peak RSS increase MiB | ru_maxrss after build MiB | VmHWM after 2 steps MiB |")
    L.append("|---|---:|---:|---:|")
    for m in memory:
        L.append(f"| {W.STEP_LABELS[m['name']]} | {(m['after_kib'] - m['before_kib']) / 1024:,.0f} | "
                 f"{m['before_kib'] / 1024:,.0f} | {m.get('VmHWM', 0) / 1024:,.0f} |")
    L.append("")

    L.append("## Hypergradient accuracy\n")
    L.append(
        f"Same state for every method: `init_search` + 3 real weight steps (momentum buffers nonzero), "
        f"batch {ACCURACY_BATCH}, xi = the current lr. Reference: exact K=1 hypergradient in float64 "
        "(state and batches cast), computed with the plain (`fused=False`) cell. Float32 rows use the "
        "default fused cell. Errors over both alpha tables concatenated. The float64 finite-difference "
        "row isolates the approximation error from float32 round-off.\n"
    )
    L.append("| space | method | dtype | rel. L2 error | cosine similarity | norm |")
    L.append("|---|---|---|---:|---:|---:|")
    for r in accuracy:
        L.append(f"| {r['space']} | {r['method']} | {r['dtype']} | {r['rel']:.2e} | {r['cos']:.6f} | {r['norm']:.3e} |")
    L.append("")

    L.append("## Where the time goes (torch.profiler, one warm step, default_1d, top 10 by self CPU time)\n")
    for (name, space), (wall, rows) in profiles.items():
        L.append(f"**{W.STEP_LABELS[name]}** (profiled call {wall:,.0f} ms wall, with profiler overhead)\n")
        L.append("| op | calls | self CPU ms | self % | CPU total ms |")
        L.append("|---|---:|---:|---:|---:|")
        for r in rows:
            L.append(f"| `{r['name']}` | {r['calls']} | {r['self_ms']:,.1f} | {r['self_pct']:.1f}% | {r['total_ms']:,.1f} |")
        L.append("")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
