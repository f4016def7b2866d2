"""Accuracy vs parameters on the watch IMU data: one search per parameter budget, the found network
trained from scratch, held-out test accuracy (the points of a Pareto front); writes bench/PARETO.md.

    python bench/pareto.py [--budgets 15000 25000 40000] [--search-epochs 5] [--train-epochs 30]

Every row uses the same recipe, the CLI's defaults except the epochs: search network C=8, 5 cells,
4 nodes, the seed's kx1 primitives; search on the train subjects (alphas on the validation
subjects), batch 64, first-order DARTS, arch_lr 3e-3, 2 weight-only warm-up epochs, the resource
penalty's defaults (weight 1, margin 0.1); then the derived genotype's NetworkCnn is trained from
scratch on train + validation subjects (``fnas.app.train.train_model``, SGD lr 0.05, cosine, label
smoothing 0.1) and tested once on the held-out test subjects (9 and 10). A last row searches with
no budget, for reference (``--no-reference`` skips it). One seed, one thread.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

from fnas import cost as K
from fnas.search.config import SearchConfig
from fnas.spaces.cell.config import SpaceConfig
from fnas.data import load_watch, make_loader
from fnas.spaces.cell.genotype import derive_genotype
from fnas.spaces.cell.network import NetworkCnn
from fnas.search.loop import run_search
from fnas.app.train import TrainConfig, evaluate, train_model

HERE = Path(__file__).resolve().parent
STEERED = (
    "The penalty alone met every budget: the plain argmax of the searched alphas is the derived genotype,\n"
    "and the budget-aware derivation (`fnas.cost.derive_within_budget`) had nothing to change."
)
SAFEGUARD = (
    "Rows marked (safeguard): the searched argmax missed the budget and `fnas.cost.derive_within_budget`\n"
    "picked the strongest genotype within it."
)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch thread(s); Python "
        f"{platform.python_version()}, torch {torch.__version__}"
    )


def point(ds, space: SpaceConfig, budget: int | None, args) -> dict:
    """Search under ``budget`` (params; None: no budget), train the result, test it."""
    gen_data = torch.Generator().manual_seed(args.seed)
    train_loader = make_loader(ds.train, args.batch_size, shuffle=True, gen=gen_data, drop_last=True)
    valid_loader = make_loader(ds.valid, args.batch_size, shuffle=True, gen=gen_data, drop_last=True)
    cfg = SearchConfig(
        space=space, arch_lr=3e-3, warmup_steps=args.warmup_epochs * len(train_loader), max_params=budget
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a miss is reported in the table, not as a warning
        result = run_search(
            cfg, train_loader, valid_loader, epochs=args.search_epochs,
            gen=torch.Generator().manual_seed(args.seed), progress=False,
        )  # fmt: skip
    t_search = time.perf_counter() - t0
    plain = derive_genotype(result.state.alphas, space)  # what the penalty alone steered the argmax to
    genotype = result.genotype
    safeguard = False
    if budget is not None and K.genotype_cost(genotype, space).params > budget:
        genotype, safeguard = K.derive_within_budget(result.state.alphas, cfg), True
    exact = K.genotype_cost(genotype, space)

    t0 = time.perf_counter()
    model = NetworkCnn(
        space.C, space.num_classes, space.layers, genotype, space.in_channels, space.with_input_batchnorm,
        space.nodes, space.multiplier, space.stem_multiplier, gen=torch.Generator().manual_seed(args.seed),
        kx1=space.is_1d,
    )  # fmt: skip
    final_loader = make_loader(ds.train_valid(), args.batch_size, shuffle=True, gen=torch.Generator().manual_seed(1))
    train_model(model, final_loader, cfg=TrainConfig(epochs=args.train_epochs, lr=0.05), progress=False)
    _, test_acc = evaluate(model, make_loader(ds.test, 256, shuffle=False))
    t_train = time.perf_counter() - t0
    row = dict(
        budget=budget, params=exact.params, macs=exact.macs, sram=exact.peak_sram_bytes_int8, test_acc=test_acc,
        plain_params=K.genotype_cost(plain, space).params, safeguard=safeguard, t_search=t_search, t_train=t_train,
        genotype=genotype,
    )  # fmt: skip
    print(
        f"budget {budget}: params {exact.params:,} macs {exact.macs:,} sram {exact.peak_sram_bytes_int8:,} "
        f"test acc {test_acc:.3f} (search {t_search:.0f} s, train {t_train:.0f} s)",
        flush=True,
    )
    return row


def _budget(budget: int | None) -> str:
    return "none" if budget is None else f"{budget:,}"


def table(rows: list[dict], space: SpaceConfig) -> str:
    lines = [
        "| params budget | exact params | used | MACs | peak SRAM (int8) | test accuracy | search | train |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        budget = _budget(r["budget"])
        used = "" if r["budget"] is None else f"{100 * r['params'] / r['budget']:.0f}%"
        mark = " (safeguard)" if r["safeguard"] else ""
        lines.append(
            f"| {budget} | {r['params']:,}{mark} | {used} | {r['macs']:,} | {r['sram']:,} B | "
            f"{100 * r['test_acc']:.1f}% | {r['t_search']:.0f} s | {r['t_train']:.0f} s |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[15_000, 25_000, 40_000])
    parser.add_argument("--search-epochs", type=int, default=5)
    parser.add_argument("--warmup-epochs", type=int, default=2)
    parser.add_argument("--train-epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-reference", action="store_true", help="skip the search without a budget")
    parser.add_argument("--out", type=Path, default=HERE / "PARETO.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny networks; on this shared 2-core machine a second thread only slows them

    t_all = time.perf_counter()
    ds = load_watch()
    space = SpaceConfig(
        C=8, num_classes=ds.num_classes, layers=5, in_channels=ds.in_channels, input_shape=ds.input_shape
    )
    for budget in args.budgets:
        K.check_budget(space, max_params=budget)  # fail before hours of work
    budgets = sorted(args.budgets) + ([] if args.no_reference else [None])
    rows = [point(ds, space, budget, args) for budget in budgets]
    total = time.perf_counter() - t_all

    command = "python bench/pareto.py " + " ".join(sys.argv[1:] if argv is None else argv)
    genotypes = "\n".join(
        f"- {_budget(r['budget'])}: normal `{[tuple(x) for x in r['genotype'].normal]}`, "
        f"reduce `{[tuple(x) for x in r['genotype'].reduce]}`"
        for r in rows
    )
    accs, params = [100 * r["test_acc"] for r in rows], [r["params"] for r in rows]
    spread = (
        f"Across the rows, test accuracy spans {min(accs):.1f}-{max(accs):.1f}% while the exact parameter count "
        f"spans {min(params):,}-{max(params):,} ({max(params) / min(params):.1f}x)."
    )
    reference = [r for r in rows if r["budget"] is None]
    if reference:
        binding = [b for b in args.budgets if b < reference[0]["params"]]
        spread += (
            f" The search without a budget derived {reference[0]['params']:,} parameters, so "
            f"{len(binding)} of the {len(args.budgets)} budgets bind."
        )
    steered = all(r["plain_params"] <= r["budget"] for r in rows if r["budget"] is not None)
    text = f"""# Accuracy vs parameters on the watch IMU data

Made by `{command.strip()}` in {total / 60:.1f} minutes on {machine()}.

Each row: a search under a parameter budget (`max_params`), the derived network trained from scratch
and tested once on the held-out subjects (9 and 10, {ds.test.num_samples} windows). Exact costs of the
trained network at batch 1 (`fnas.cost.genotype_cost`); peak SRAM is the int8 activation peak of a
node-by-node schedule. Space: C={space.C}, {space.layers} cells, {space.nodes} nodes, the seed's kx1
primitives (min {K.min_cost(space, "params"):,} / max {K.max_cost(space, "params"):,} params,
min {K.min_cost(space, "macs"):,} / max {K.max_cost(space, "macs"):,} MACs).

{table(rows, space)}

Recipe (the same for every row): search {args.search_epochs} epochs ({args.warmup_epochs} of them
weight-only warm-up), batch {args.batch_size}, first-order DARTS, arch_lr 3e-3, penalty defaults
(weight 1, margin 0.1); train {args.train_epochs} epochs on train + validation subjects, SGD lr 0.05,
cosine, label smoothing 0.1; seed {args.seed}; one torch thread. "search" and "train" are wall times.
{STEERED if steered else SAFEGUARD}
One seed per point: differences of a point or two in accuracy are within seed noise ({ds.test.num_samples} test
windows). {spread}

Genotypes:

{genotypes}
"""
    args.out.write_text(text)
    print(f"wrote {args.out} ({total / 60:.1f} min)")


if __name__ == "__main__":
    main()
