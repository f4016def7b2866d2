"""The exact hypergradient alone, compiled vs eager, both measured against a float64 reference.

    python bench/compiled_hypergrad.py [--space small_1d] [--backend inductor] [--permutations 8]
    python bench/compiled_hypergrad.py --kinks [--space small_1d] [--primitives none,avg_pool_3x1,...]

Both compute ``hypergrad.exact`` (K=1, nested reverse mode, the form a compiled step takes) on
the benchmark's problem for ``--space`` (``workloads.hypergrad_problem``, at the initial state).
The reference is the same computation in float64, eagerly. How far a float32 result may
legitimately be from it is measured, not assumed: the train and valid batches are permuted
(``--permutations`` times). That changes nothing mathematically (the loss is a batch mean and
BatchNorm's statistics do not depend on the order) but changes float32 round-off. The eager
results over those permutations give the float32 spread of this quantity on this network; the
compiled function, called on the same permutations, should fall inside it. A float64 run on one
permutation checks that the permutation itself changes nothing beyond round-off.

``--kinks`` instead measures why the float32 spread can be large, without compiling anything: it
perturbs the float64 inputs by a relative ``delta`` (1e-8 to 1e-5) and prints how far the float64
hypergradient moves. A smooth function moves in proportion to ``delta``; a piecewise-smooth one
(ReLU and max-pool switch pieces when an input crosses zero or a tie) jumps once ``delta`` is large
enough to move some input across a boundary, and float32 round-off is such a perturbation.

The script prints the compile time, relative L2 distances (compiled vs eager, each vs float64)
and sign changes (Adam's first step is about ``lr * sign(g)`` per component, so a sign change
moves an alpha by a full learning rate).

Measured here (torch 2.13 CPU, one thread; README, Benchmarks), ``small_1d``, 8 orders:

- eager float32 is 1.9e-4 to 1.5e-2 off float64 (median 3.5e-3), with 2-3 of 140 signs changed in
  2 of the 8 orders; inductor is 1.9e-3 to 1.6e-2 off (median 1.5e-2), signs changed in 7 of 8;
  float64 on a reordered batch agrees with itself to 7.5e-15;
- ``--kinks``: the float64 hypergradient moves by 2-3x ``delta`` at 1e-8 and 1e-7, and jumps by
  6e-4 to 1.6e-2 at 1e-6.

On ``tiny_1d`` the jumps start at 1e-5 and inductor agrees with eager to 2e-6. ``aot_eager``
agrees exactly (tested).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import workloads as W  # noqa: E402

from fnas.core import hypergrad  # noqa: E402
from fnas.core import tree  # noqa: E402
from fnas.core.optim import SGDState  # noqa: E402
from fnas.search import current_lr, supernet_loss, weight_optimizer  # noqa: E402


def _flat(g) -> torch.Tensor:
    return torch.cat([t.flatten().double() for t in tree.leaves(g)])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _signs(a: torch.Tensor, b: torch.Tensor) -> int:
    return int((torch.sign(a) != torch.sign(b)).sum())


def kinks(problem, hg_inputs, hg, deltas=(1e-8, 1e-7, 1e-6, 1e-5), seeds=3) -> dict[float, list[float]]:
    """Relative move of the float64 hypergradient when both batches' inputs are scaled by
    ``1 + delta * N(0, 1)`` elementwise, for each ``delta`` and ``seeds`` noise draws."""
    reference = _flat(hg(*hg_inputs(problem)))
    out = {}
    for delta in deltas:
        out[delta] = []
        for seed in range(seeds):
            gen = torch.Generator().manual_seed(seed)

            def noisy(batch):
                x, y = batch
                return x * (1 + delta * torch.randn(x.shape, generator=gen, dtype=x.dtype)), y

            moved = dataclasses.replace(problem, train=noisy(problem.train), valid=noisy(problem.valid))
            out[delta].append(_rel(_flat(hg(*hg_inputs(moved))), reference))
        moves = ", ".join(f"{r:.1e}" for r in out[delta])
        print(f"delta {delta:.0e}: float64 hypergradient moves by {moves}", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default="small_1d", choices=sorted(W.SPACES))
    ap.add_argument("--backend", default="inductor")
    ap.add_argument("--permutations", type=int, default=8, help="batch orders that measure the float32 spread")
    ap.add_argument("--kinks", action="store_true", help="only the float64 input-perturbation test (no compile)")
    ap.add_argument("--primitives", type=lambda v: tuple(v.split(",")), default=None,
                    help="comma-separated primitive set replacing the space's (e.g. to see which ones make kinks)")
    args = ap.parse_args(argv)
    if args.permutations < 1:
        ap.error("--permutations must be >= 1")
    W.use_one_thread()
    problem = W.hypergrad_problem(args.space, warmup_steps=0, primitives=args.primitives)
    problem64 = problem.to(torch.float64)
    cfg = problem.cfg
    kw = dict(xi=current_lr(problem.state.step, cfg), optimizer=weight_optimizer(cfg))

    def hg(weights, alphas, momentum, stats, train, valid):
        # the statistics are an input here (not closed over as in problem.loss_fn), like in a compiled step
        def loss_fn(w, a, b):
            return supernet_loss(w, a, stats, b, cfg=cfg)

        return hypergrad.exact(loss_fn, weights, alphas, SGDState(momentum), train, valid, hvp="reverse", **kw)[0]

    def inputs(p, perm=None):
        s = p.state
        train, valid = p.train, p.valid
        if perm is not None:
            train, valid = tuple(t[perm[0]] for t in train), tuple(t[perm[1]] for t in valid)
        return (s.weights, s.alphas, s.w_opt.momentum, s.stats, train, valid)

    if args.kinks:
        return {"space": args.space, "primitives": problem.cfg.space.primitives, "kinks": kinks(problem64, inputs, hg)}
    reference = _flat(hg(*inputs(problem64)))
    eager = _flat(hg(*inputs(problem)))
    compiled_hg = torch.compile(hg, backend=args.backend)
    t0 = time.perf_counter()
    compiled = _flat(compiled_hg(*inputs(problem)))
    seconds = time.perf_counter() - t0

    gen = torch.Generator().manual_seed(0)
    perms = [
        tuple(torch.randperm(b[0].shape[0], generator=gen) for b in (problem.train, problem.valid))
        for _ in range(args.permutations)
    ]
    eager_perm = [_flat(hg(*inputs(problem, p))) for p in perms]
    compiled_perm = [_flat(compiled_hg(*inputs(problem, p))) for p in perms]
    result = {
        "space": args.space, "backend": args.backend, "compile_s": seconds, "components": eager.numel(),
        "rel_l2": _rel(compiled, eager), "sign_changes": _signs(compiled, eager),
        "eager_vs_f64": _rel(eager, reference), "compiled_vs_f64": _rel(compiled, reference),
        "eager_perm_vs_f64": [_rel(x, reference) for x in eager_perm],
        "compiled_perm_vs_f64": [_rel(x, reference) for x in compiled_perm],
        "eager_perm_sign_changes": [_signs(x, reference) for x in eager_perm],
        "compiled_perm_sign_changes": [_signs(x, reference) for x in compiled_perm],
        "f64_perm_vs_f64": _rel(_flat(hg(*inputs(problem64, perms[0]))), reference),
    }  # fmt: skip
    print(result)
    for who in ("eager", "compiled"):
        errs, signs = result[f"{who}_perm_vs_f64"], result[f"{who}_perm_sign_changes"]
        print(
            f"{who:>8} float32 vs float64 over {len(errs)} batch orders: min {min(errs):.1e}, "
            f"median {statistics.median(errs):.1e}, max {max(errs):.1e}; sign changes up to {max(signs)} "
            f"of {result['components']}"
        )
    print(
        f"compiled vs eager (original order) {result['rel_l2']:.1e} ({result['sign_changes']} signs); "
        f"float64 permuted vs float64 {result['f64_perm_vs_f64']:.1e}; compile {seconds:.0f} s"
    )
    return result


if __name__ == "__main__":
    main()
