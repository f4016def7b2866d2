"""The ``fnas`` command: ``search`` an architecture, ``train`` it, ``show`` a run, ``export`` it to ONNX/int8.

Every subcommand documents itself (``fnas <command> --help``). Bad input (an unknown dataset, a
malformed ``.npz``, a folder that is not a run, an existing non-empty ``--out``, files that would be
overwritten) prints ``fnas <command>: error: ...`` on stderr and exits with code 2 before anything
is written.

A run folder (see :mod:`fnas.runs`) holds ``config.json``, ``genotype.json``, ``metrics.jsonl``,
``alphas.pt``, ``checkpoint.pt``, ``model.pt``, ``summary.json``, ``plots/*.png`` and, after
``fnas export``, ``model.onnx``, ``model_int8.onnx`` and ``export.json``. ``fnas train --out`` writes
the same layout without the search files, so ``show`` and ``export`` work on it too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import torch

from fnas.spaces import primitives as P
from fnas.search.defaults import DEFAULTS

PLOTS_DIR = "plots"
EXPORT_FILES = ("model.onnx", "model_int8.onnx", "export.json")
_FMT = argparse.ArgumentDefaultsHelpFormatter


# --- the parser ------------------------------------------------------------------------------


def _add_data(p: argparse.ArgumentParser, default: str | None, note: str = "") -> None:
    p.add_argument(
        "--data",
        default=default,
        help="'watch' (bundled smartwatch IMU), 'digits' (8x8 images), 'ucr:NAME' (pip install "
        "'fnas[ucr]'), or your own .npz: X (N, C, T) or (N, C, H, W) and integer labels y in 0..K-1 "
        "(split 60/20/20 by class), or all of X_train, y_train, X_valid, y_valid, X_test, y_test" + note,
    )


def _add_runtime(p: argparse.ArgumentParser, *, device: bool = True, quiet: bool = True) -> None:
    p.add_argument("--threads", type=int, default=DEFAULTS["threads"], help="torch CPU threads (0: torch's default)")
    if device:
        p.add_argument("--device", default=DEFAULTS["device"], help="'cpu', 'cuda' or 'cuda:N'")
    if quiet:
        p.add_argument("--quiet", action="store_true", help="no progress bars; one log line per epoch")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fnas",
        description="Differentiable architecture search for tiny CNNs (kx1 time series and 2D images). "
        "Typical flow: fnas search -> fnas show RUN -> fnas train RUN -> fnas export RUN.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{search,train,show,export}")
    d = DEFAULTS

    # search -----------------------------------------------------------------------------------
    s = sub.add_parser(
        "search",
        help="search an architecture, train it from scratch, report held-out accuracy",
        description=(
            "Search a cell architecture with DARTS on a dataset, train the found network from scratch "
            "on train+valid, evaluate it on the held-out test split, and write a run folder "
            "(config.json, genotype.json, metrics.jsonl, alphas.pt, checkpoint.pt, model.pt, "
            "summary.json, plots/). Under torchrun (e.g. `torchrun --nproc_per_node 4 -m fnas search "
            "--device cuda`) the search runs data-parallel: every process takes 1/WORLD_SIZE of each "
            "batch, and rank 0 writes the run folder and trains the found network."
        ),
        formatter_class=_FMT,
    )
    _add_data(s, d["data"])
    s.add_argument("--resume", type=Path, metavar="RUN",
                   help="continue a killed or crashed search from RUN/checkpoint.pt, with its saved options "
                   "(exactly: the result equals an uninterrupted run); options given here override them, e.g. "
                   "a lower --lr after a divergence")
    s.add_argument("--checkpoint-every", type=int, default=50, metavar="STEPS",
                   help="also checkpoint every STEPS steps (0: only at the end of every epoch)")
    s.add_argument("--config", type=Path,
                   help="replay a run: a run folder or its config.json (options given here override it)")
    s.add_argument("--out", type=Path, help="run folder to create (default: runs/<data>-<time>)")
    s.add_argument("--epochs", type=int, default=d["epochs"], help="search epochs")
    s.add_argument("--train-epochs", type=int, default=d["train_epochs"],
                   help="epochs to train the found network (0: search only; train later with `fnas train RUN`)")
    s.add_argument("--batch-size", type=int, default=d["batch_size"], help="batch size (search and training)")
    s.add_argument("--C", type=int, default=d["C"], help="initial channels")
    s.add_argument("--layers", type=int, default=d["layers"], help="cells; layers//3 and 2*layers//3 reduce")
    s.add_argument("--nodes", type=int, default=d["nodes"], help="intermediate nodes per cell")
    s.add_argument("--multiplier", type=int, default=d["multiplier"], help="nodes concatenated into a cell's output")
    s.add_argument("--stem-multiplier", type=int, default=d["stem_multiplier"], help="stem width = this * C")
    s.add_argument(
        "--primitives",
        default=d["primitives"],
        help=f"comma-separated primitives (default: the seed's kx1 set for time series, DARTS' 2D set for "
        f"images); known: {','.join(P.registered_names())}",
    )
    s.add_argument("--hypergrad", choices=["first_order", "exact", "finite_difference"], default=d["hypergrad"],
                   help="architecture gradient: first order, exact unrolled, or DARTS' finite difference")
    s.add_argument("--unroll-steps", type=int, default=d["unroll_steps"], help="virtual steps for --hypergrad exact")
    s.add_argument("--lr", type=float, default=d["lr"], help="weight learning rate during search (cosine)")
    s.add_argument("--lr-min", type=float, default=d["lr_min"], help="final weight learning rate of the cosine")
    s.add_argument("--momentum", type=float, default=d["momentum"], help="SGD momentum")
    s.add_argument("--weight-decay", type=float, default=d["weight_decay"], help="weight decay during search")
    s.add_argument("--grad-clip", type=float, default=d["grad_clip"], help="max global gradient norm")
    s.add_argument("--arch-lr", type=float, default=d["arch_lr"], help="Adam learning rate of the alphas")
    s.add_argument("--arch-weight-decay", type=float, default=d["arch_weight_decay"], help="alpha weight decay")
    s.add_argument("--warmup-epochs", type=int, default=d["warmup_epochs"], help="epochs of weight-only training first")
    s.add_argument("--train-lr", type=float, default=d["train_lr"], help="learning rate for training the found network")
    s.add_argument("--seed", type=int, default=d["seed"], help="random seed (init and batch order)")
    s.add_argument("--mode", dest="penalty_mode", default=None,
                   help="resource-aware search: 'Memory' (parameters), 'Compute' (MACs), 'SRAM' (peak "
                   "activations), or a combination like 'Memory+Compute'")
    s.add_argument("--penalty-weight", type=float, default=d["penalty_weight"], help="weight of the resource penalty")
    s.add_argument("--beta-weight", type=float, default=d["beta_weight"],
                   help="beta-DARTS regularisation weight (linear schedule from 0; 0: off)")
    s.add_argument("--partial-channels", type=int, default=d["partial_channels"], metavar="K",
                   help="PC-DARTS: mixed ops see 1/K of the channels (1: off)")
    s.add_argument("--selection", choices=["perturbation", "alphas"], default=d["selection"],
                   help="how the genotype is read off the supernet: per node the op whose removal raises the "
                   "validation loss most (perturbation, Wang et al. 2021), or the largest alpha (DARTS)")
    s.add_argument("--compile", action="store_true",
                   help="run the whole search step under torch.compile (inductor): about 2x faster steps on "
                   "CPU for the default network (2.9x for --hypergrad exact, equal to eager within float32's own "
                   "spread: see README), after a first compile of about 12 minutes (32 for exact) that later "
                   "runs load from inductor's cache in 1-2 minutes (bench/COMPILED.md); pays off for long "
                   "searches and repeated runs; not under torchrun")
    s.add_argument("--max-params", type=int, help="parameter budget (turns on the 'Memory' penalty)")
    s.add_argument("--max-macs", type=int, help="MAC budget (turns on the 'Compute' penalty)")
    s.add_argument("--max-sram", dest="max_sram_bytes", type=int,
                   help="peak activation budget in bytes at int8 (turns on the 'SRAM' penalty)")
    _add_runtime(s)

    # train ------------------------------------------------------------------------------------
    t = sub.add_parser(
        "train",
        help="train a run's (or a genotype file's) network from scratch, report held-out accuracy",
        description=(
            "Train the fixed network of a genotype from scratch with the standard recipe (SGD with "
            "Nesterov momentum, cosine learning rate, label smoothing 0.1, weight decay 5e-4) on "
            "train+valid, and report its accuracy on the held-out test split. SOURCE is a run folder "
            "(from `fnas search`, e.g. with --train-epochs 0), whose model.pt/summary.json it writes, "
            "or a genotype JSON file, for which it creates a new run folder (--out). A run that "
            "already holds a model.pt is never overwritten: pass --out to train again elsewhere "
            "(also to change the network size or the dataset)."
        ),
        formatter_class=_FMT,
    )
    t.add_argument("source", type=Path, metavar="RUN_OR_GENOTYPE.json", help="a run folder or a genotype JSON file")
    _add_data(t, None, note=" (default: the run's dataset; 'watch' for a genotype file)")
    t.add_argument("--out", type=Path, help="new run folder to write (default: the run folder itself; "
                   "runs/train-<name>-<time> for a genotype file)")
    t.add_argument("--epochs", type=int,
                   help=f"training epochs (default: the run's --train-epochs, else {d['train_epochs']})")
    t.add_argument("--batch-size", type=int, help=f"batch size (default: the run's, else {d['batch_size']})")
    t.add_argument("--lr", type=float,
                   help=f"initial learning rate (default: the run's --train-lr, else {d['train_lr']})")
    t.add_argument("--seed", type=int, help=f"random seed (default: the run's, else {d['seed']})")
    t.add_argument("--C", type=int, help=f"initial channels (default: the run's, else {d['C']})")
    t.add_argument("--layers", type=int, help=f"cells (default: the run's, else {d['layers']})")
    t.add_argument("--stem-multiplier", type=int,
                   help=f"stem width = this * C (default: the run's, else {d['stem_multiplier']})")
    _add_runtime(t)

    # show -------------------------------------------------------------------------------------
    sh = sub.add_parser(
        "show",
        help="print a run's genotype, exact cost, accuracy and plots",
        description=(
            "Print a run's genotype, its exact parameters / MACs / peak SRAM (int8 and float32, batch "
            "1), the held-out accuracy if it was trained, the export results if it was exported, and "
            "where its plots are (missing plots are drawn first)."
        ),
        formatter_class=_FMT,
    )
    sh.add_argument("run", type=Path, metavar="RUN", help="a run folder")
    sh.add_argument("--replot", action="store_true", help="redraw every plot, not only missing ones")

    # export -----------------------------------------------------------------------------------
    e = sub.add_parser(
        "export",
        help="export a trained run to ONNX (checked with onnxruntime) and to int8 (QDQ ONNX)",
        description=(
            "Export a trained run's network to ONNX (opset 18, dynamic batch) and check it against "
            "PyTorch with onnxruntime on the held-out test split (max abs difference of the logits); "
            "then quantise it to int8 with onnxruntime's static post-training quantisation (QDQ "
            "format, per-channel int8 weights, int8 activations) calibrated on the validation split "
            "(never the test split), and report both models' sizes and test accuracies. Writes "
            "model.onnx, model_int8.onnx and export.json. Needs `pip install 'fnas[export]'`."
        ),
        formatter_class=_FMT,
    )
    e.add_argument("run", type=Path, metavar="RUN", help="a trained run folder (holding model.pt)")
    _add_data(e, None, note=" (default: the run's dataset)")
    e.add_argument("--out", type=Path, help="folder for the exported files (default: the run folder)")
    e.add_argument("--opset", type=int, default=18, help="ONNX opset of the float model (>= 18)")
    e.add_argument("--calib-split", choices=["valid", "train"], default="valid",
                   help="split that calibrates the int8 activation ranges (the test split is never used)")
    e.add_argument("--calib-samples", type=int, default=d["calib_samples"],
                   help="at most this many calibration samples (a seeded random subset)")
    e.add_argument("--per-tensor", action="store_true", help="one int8 weight scale per tensor instead of per channel")
    e.add_argument("--seed", type=int, default=d["seed"], help="seed of the calibration subset")
    _add_runtime(e, device=False, quiet=False)
    return parser


def _given(argv: list[str]) -> set[str]:
    """Destinations of the options given explicitly in ``argv`` (abbreviations and aliases resolved)."""
    parser = _parser()
    for sub in parser._subparsers._group_actions[0].choices.values():  # noqa: SLF001
        for action in sub._actions:  # noqa: SLF001
            action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"command"}


def _config_args(args: argparse.Namespace, argv: list[str]) -> argparse.Namespace:
    """Apply a replayed config.json under the options given explicitly on the command line."""
    if args.config is None:
        return args
    path = args.config / "config.json" if args.config.is_dir() else args.config
    if not path.is_file():
        raise ValueError(f"--config {str(args.config)!r}: no config.json there")
    try:
        config = json.loads(path.read_text())
        saved = config["cli"]
        config["search"]  # noqa: B018 - only search runs can be replayed
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"--config {str(path)!r} is not the config.json of an `fnas search` run ({type(err).__name__}: {err})"
        ) from err
    given = _given(argv)
    for key, value in saved.items():
        if key not in given and hasattr(args, key) and key not in ("config", "out", "quiet"):
            setattr(args, key, value)
    return args


def _log(quiet: bool):
    def log(msg: str) -> None:
        print(msg, flush=True)

    return log


def _threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", 0):
        if args.threads < 0:
            raise ValueError(f"--threads must be >= 0, got {args.threads}")
        torch.set_num_threads(args.threads)


def _device(spec: str) -> torch.device:
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise ValueError(f"--device {spec!r} is not a device ({err}); use 'cpu', 'cuda' or 'cuda:N'") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {spec} but CUDA is not available; use --device cpu")
    return device


DIST_TIMEOUT_MINUTES = 30  # a rank that waits this long for the others fails instead of hanging


def _dist_env() -> tuple[int, int]:
    """``(rank, world_size)`` of a torchrun job from its environment; ``(0, 1)`` outside torchrun."""
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as err:
        raise ValueError(f"RANK / WORLD_SIZE must be integers (set by torchrun): {err}") from err


def _init_distributed(device: torch.device) -> torch.device:
    """Join the torchrun job's process group: gloo on CPU, NCCL on CUDA (one GPU per process).

    Returns:
        The device of this process: ``cuda:LOCAL_RANK`` for CUDA, else ``device``.
    """
    import datetime

    import torch.distributed as dist

    if not dist.is_available():
        raise ValueError("WORLD_SIZE > 1 (torchrun) but this torch build has no torch.distributed")
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices; start at most "
                             "that many processes per machine (--nproc_per_node)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=DIST_TIMEOUT_MINUTES))
    return device


def _positive(**values: Any) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")


def _check_out(out: Path, hint: str) -> None:
    """``out`` must be new or an empty folder; nothing in it is ever overwritten."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file, not a folder; {hint}")
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"run folder {str(out)!r} exists and is not empty; {hint}")


def _data_spec(spec: str) -> str:
    """An .npz path made absolute, so that a replayed config finds it from any folder."""
    spec = str(spec)
    if spec.strip().lower().endswith(".npz"):
        return str(Path(spec.strip()).expanduser().resolve())
    return spec


# --- run folders -----------------------------------------------------------------------------


class _Run(NamedTuple):
    path: Path
    config: dict
    space: Any  # SpaceConfig
    genotype: Any  # Genotype_CNN
    summary: dict | None

    @property
    def data(self) -> str:
        return str(self.config.get("cli", {}).get("data") or DEFAULTS["data"])

    @property
    def warmup_epochs(self) -> int:
        return int(self.config.get("cli", {}).get("warmup_epochs") or 0) if "search" in self.config else 0


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} {str(path)!r} is not valid JSON ({err}); restore it from a copy") from err


def _space_from_dict(data: Any, where: str):
    from fnas.spaces.cell.config import SpaceConfig

    if not isinstance(data, dict):
        raise ValueError(f"{where} has no search space ('search.space' or 'space'); was it written by fnas?")
    names = {f.name for f in dataclasses.fields(SpaceConfig)}
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names}
    try:
        return SpaceConfig(**kw)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: the saved search space is invalid ({err})") from err


def _open_run(path: Path) -> _Run:
    """Read a run folder's config, space, genotype and summary, or say why it is not a run."""
    from fnas.spaces.cell.genotype import load_genotype

    path = Path(path)
    if not path.exists():
        raise ValueError(f"run folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise ValueError(
            f"{str(path)!r} is a file; give the run folder (the one holding config.json and genotype.json)"
        )
    missing = [f for f in ("config.json", "genotype.json") if not (path / f).is_file()]
    if missing:
        raise ValueError(
            f"{str(path)!r} is not an fnas run folder: {' and '.join(missing)} missing (a run folder is "
            "what `fnas search` or `fnas train --out` writes)"
        )
    config = _read_json(path / "config.json", "run config")
    if not isinstance(config, dict):
        raise ValueError(f"{str(path / 'config.json')!r} is not an fnas run config")
    space_dict = (config.get("search") or {}).get("space") if isinstance(config.get("search"), dict) else None
    space = _space_from_dict(space_dict or config.get("space"), str(path / "config.json"))
    genotype = load_genotype(path / "genotype.json")
    summary = _read_json(path / "summary.json", "run summary") if (path / "summary.json").is_file() else None
    return _Run(path, config, space, genotype, summary if isinstance(summary, dict) else None)


def _read_metrics(path: Path) -> list[dict]:
    """``metrics.jsonl`` records; a torn last line (a crash mid-append) is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


def _build_model(space, genotype, gen: torch.Generator | None = None):
    from fnas.spaces.cell.network import NetworkCnn

    return NetworkCnn(
        space.C, space.num_classes, space.layers, genotype, space.in_channels, space.with_input_batchnorm,
        space.nodes, space.multiplier, space.stem_multiplier,
        gen=gen or torch.Generator().manual_seed(0), kx1=space.is_1d,
    )


def _load_model(run: _Run):
    from fnas.core.io import safe_torch_load

    path = run.path / "model.pt"
    if not path.is_file():
        raise ValueError(
            f"run {str(run.path)!r} has no trained model (model.pt); train it first with `fnas train {run.path}`"
        )
    model = _build_model(run.space, run.genotype)
    try:
        model.load_state_dict(safe_torch_load(path))
    except RuntimeError as err:
        raise ValueError(
            f"{str(path)!r} does not match the network of the run's config.json and genotype.json "
            f"({str(err).splitlines()[0]})"
        ) from err
    return model.eval()


def _check_fits(ds, space, where: str) -> None:
    """The dataset must have the shapes and classes the run's network was built for."""
    want = (space.in_channels, tuple(space.input_shape), space.num_classes)
    got = (ds.in_channels, tuple(ds.input_shape), ds.num_classes)
    if want != got:
        raise ValueError(
            f"{ds.name} has {got[0]} channels, input {got[1]} and {got[2]} classes, but {where}'s network "
            f"takes {want[0]} channels, input {want[1]} and {want[2]} classes; pass the run's dataset "
            "with --data"
        )


def _plots(run_dir: Path, *, genotype, space, records, alphas=None, test_acc=None, warmup_epochs=0,
           missing_only=False, redraw=()) -> list[Path]:
    from fnas.app.plots import write_plots

    return write_plots(
        run_dir / PLOTS_DIR, genotype=genotype, primitives=list(space.primitives), alpha_history=alphas,
        records=records, test_acc=test_acc, warmup_epochs=warmup_epochs, missing_only=missing_only,
        redraw=redraw,
    )


# --- formatting ------------------------------------------------------------------------------


def _cell_text(cell, concat) -> str:
    nodes = ", ".join(f"n{j} = {op}({'in' if i == 0 else f'n{i}'})" for j, (op, i) in enumerate(cell, start=1))
    return f"{nodes}; out = concat({', '.join(f'n{k}' for k in concat)})"


def _genotype_lines(genotype) -> list[str]:
    return [
        f"  normal  {_cell_text(genotype.normal, genotype.normal_concat)}",
        f"  reduce  {_cell_text(genotype.reduce, genotype.reduce_concat)}",
    ]


def _cost_text(cost) -> str:
    return (
        f"{cost.params:,} parameters, {cost.macs:,} MACs, peak SRAM {cost.peak_sram_bytes_int8:,} B int8 / "
        f"{cost.peak_sram_bytes_f32:,} B float32 (at {cost.peak_at}; batch 1)"
    )


def _plot_lines(paths: list[Path]) -> list[str]:
    from fnas.app.plots import PLOT_FILES

    return [f"  {p}  ({PLOT_FILES.get(p.name, '')})" for p in paths]


def _cost_summary(cost) -> dict:
    return {
        "params": int(cost.params),
        "macs": int(cost.macs),
        "peak_sram_bytes_int8": int(cost.peak_sram_bytes_int8),
        "peak_sram_bytes_f32": int(cost.peak_sram_bytes_f32),
    }


# --- fnas search -----------------------------------------------------------------------------


def cmd_search(args: argparse.Namespace, argv: list[str]) -> int:
    from fnas import data as D
    from fnas.search.config import SearchConfig
    from fnas.spaces.cell.config import SpaceConfig
    from fnas.cost import check_budget, genotype_cost
    from fnas.spaces.cell.genotype import genotype_to_dict, save_genotype
    from fnas.core.io import append_jsonl, atomic_torch_save, atomic_write_json
    from fnas.search.loop import run_search
    from fnas.app.train import TrainConfig, evaluate, train_model

    resume_dir = args.resume
    if resume_dir is not None:
        # a crashed or killed run continues from its checkpoint with its own saved options
        if not (resume_dir / "config.json").is_file() or not (resume_dir / "checkpoint.pt").is_file():
            raise ValueError(f"--resume {str(resume_dir)!r} is not a search run folder (no config.json and "
                             "checkpoint.pt there)")
        if (resume_dir / "genotype.json").is_file():
            raise ValueError(f"--resume {str(resume_dir)!r}: that search already finished (genotype.json "
                             "exists); use `fnas train` or `fnas show` on it")
        args.config = resume_dir
    args = _config_args(args, argv)
    rank, world = _dist_env()
    lead = rank == 0  # the only process that prints and writes the run folder
    log = _log(args.quiet) if lead else (lambda msg: None)
    _positive(epochs=args.epochs, batch_size=args.batch_size)
    if world > 1 and args.batch_size % world:
        lower, upper = (args.batch_size // world) * world, (args.batch_size // world + 1) * world
        raise ValueError(f"--batch-size {args.batch_size} (the global batch) does not split evenly over the {world} "
                         f"processes of this torchrun job; use a multiple of {world}, e.g. {lower or upper} or {upper}")
    if world > 1 and args.compile:
        raise ValueError("--compile is not supported in a torchrun job (the step's collectives would be traced); "
                         "drop --compile, or run the compiled search as a single process")
    if args.checkpoint_every < 0:
        raise ValueError(f"--checkpoint-every must be >= 0 (0: end of every epoch only), got {args.checkpoint_every}")
    if args.train_epochs < 0:
        raise ValueError(f"--train-epochs must be >= 0 (0: search only), got {args.train_epochs}")
    _threads(args)
    device = _device(args.device)
    if args.out is not None and resume_dir is None and lead:
        _check_out(args.out, "pass another --out")

    t0 = time.time()
    ds = D.load_dataset(args.data)
    args.data = _data_spec(args.data)
    log(ds.summary())
    if args.primitives:
        primitives = tuple(p.strip() for p in args.primitives.split(",") if p.strip())
    else:
        primitives = P.SEED_KX1 if ds.input_shape[1] == 1 else P.DARTS_2D
    space = SpaceConfig(
        C=args.C,
        num_classes=ds.num_classes,
        layers=args.layers,
        in_channels=ds.in_channels,
        input_shape=ds.input_shape,
        nodes=args.nodes,
        multiplier=args.multiplier,
        stem_multiplier=args.stem_multiplier,
        primitives=primitives,
        partial_channels=args.partial_channels,
    )
    gen_data = torch.Generator().manual_seed(args.seed)
    for split, name in ((ds.train, "train"), (ds.valid, "valid")):
        if split.num_samples < args.batch_size:
            raise ValueError(
                f"the {name} split has {split.num_samples} samples, fewer than --batch-size "
                f"{args.batch_size}; lower --batch-size (the search drops incomplete batches)"
            )
    train_loader = D.make_loader(ds.train, args.batch_size, shuffle=True, gen=gen_data, drop_last=True)
    valid_loader = D.make_loader(ds.valid, args.batch_size, shuffle=True, gen=gen_data, drop_last=True)
    cfg = SearchConfig(
        space=space,
        lr=args.lr,
        lr_min=args.lr_min,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        arch_lr=args.arch_lr,
        arch_weight_decay=args.arch_weight_decay,
        hypergrad=args.hypergrad,
        unroll_steps=args.unroll_steps,
        warmup_steps=args.warmup_epochs * len(train_loader),
        penalty_mode=args.penalty_mode,
        penalty_weight=args.penalty_weight,
        max_params=args.max_params,
        max_macs=args.max_macs,
        max_sram_bytes=args.max_sram_bytes,
        beta_weight=args.beta_weight,
    )
    if cfg.penalty_metrics:  # an unreachable budget fails before the run folder exists
        check_budget(cfg, cfg.max_params, cfg.max_macs, cfg.max_sram_bytes)
    train_cfg = TrainConfig(epochs=args.train_epochs, lr=args.train_lr) if args.train_epochs else None

    if world > 1:  # after every check: a bad option fails on every rank before any of them waits
        device = _init_distributed(device)
    if resume_dir is not None:
        out = resume_dir
        log(f"resuming {out} from its checkpoint")
    else:
        out = args.out or Path("runs") / f"{Path(str(args.data)).stem.replace(':', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
    if resume_dir is None and lead:
        _check_out(out, "pass another --out")
        out.mkdir(parents=True, exist_ok=True)
        cli_args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                    if k not in ("command", "resume")}
        config = {
            "command": "search", "cli": cli_args, "search": dataclasses.asdict(cfg),
            "train": dataclasses.asdict(train_cfg) if train_cfg else None, "dataset": ds.summary(),
        }
        if world > 1:
            config["world_size"] = world
        atomic_write_json(out / "config.json", config)
        log(f"run folder: {out}")
    if world > 1:
        log(f"data parallel: {world} processes ({'NCCL' if device.type == 'cuda' else 'gloo'}), "
            f"{args.batch_size // world} of each batch of {args.batch_size} per process")

    def on_epoch(epoch, state, record):
        rec = dict(record, genotype=genotype_to_dict(record["genotype"]))
        append_jsonl(out / "metrics.jsonl", {"phase": "search", **rec})
        if args.quiet:
            costs = "".join(f", expected {k[len('expected_'):]} {v:,.0f}" for k, v in rec.items()
                            if k.startswith("expected_"))
            valid = f"{rec['valid_acc']:.3f}" if "valid_acc" in rec else "- (warm-up)"
            log(f"search epoch {epoch + 1}/{args.epochs}: train loss {rec['train_loss']:.3f} acc "
                f"{rec['train_acc']:.3f}, valid acc {valid}{costs}")

    gen = torch.Generator().manual_seed(args.seed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # budget misses are reported below, not as a warning
            # under torchrun: data parallel over the process group; only rank 0 writes and calls on_epoch
            result = run_search(cfg, train_loader, valid_loader, epochs=args.epochs, gen=gen, device=device,
                                progress=not args.quiet, on_epoch=on_epoch, checkpoint=out / "checkpoint.pt",
                                checkpoint_every=args.checkpoint_every,
                                resume=out / "checkpoint.pt" if resume_dir is not None else None,
                                selection=args.selection, compile=args.compile)
    finally:
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    if not lead:
        return 0  # every rank found the same genotype; rank 0 writes it and trains the network alone
    t_search = time.time() - t0
    save_genotype(result.genotype, out / "genotype.json")
    atomic_torch_save(out / "alphas.pt", result.alpha_history)
    cost = genotype_cost(result.genotype, space)
    summary: dict[str, Any] = {
        "data": ds.summary(),
        "genotype": genotype_to_dict(result.genotype),
        **_cost_summary(cost),
        "budget_misses": result.budget_misses,
        "search_seconds": round(t_search, 1),
    }

    if train_cfg is not None:
        model = result.model
        final_loader = D.make_loader(ds.train_valid(), args.batch_size, shuffle=True, gen=gen_data)
        test_loader = D.make_loader(ds.test, 256, shuffle=False)

        def on_train_epoch(epoch, record):
            append_jsonl(out / "metrics.jsonl", {"phase": "train", **record})
            if args.quiet:
                log(f"train epoch {epoch + 1}/{train_cfg.epochs}: loss {record['train_loss']:.3f} "
                    f"acc {record['train_acc']:.3f}")

        train_model(model, final_loader, cfg=train_cfg, device=device, progress=not args.quiet,
                    on_epoch=on_train_epoch)
        test_loss, test_acc = evaluate(model, test_loader, device=device)
        atomic_torch_save(out / "model.pt", model.cpu().state_dict())
        summary.update(test_acc=test_acc, test_loss=test_loss, test_samples=ds.test.num_samples,
                       train=dataclasses.asdict(train_cfg))
    summary["total_seconds"] = round(time.time() - t0, 1)
    atomic_write_json(out / "summary.json", summary)
    plots = _plots(out, genotype=result.genotype, space=space, records=_read_metrics(out / "metrics.jsonl"),
                   alphas=result.alpha_history, test_acc=summary.get("test_acc"),
                   warmup_epochs=args.warmup_epochs)

    last = result.history[-1] if result.history else {}
    lines = ["", f"fnas search: done in {summary['total_seconds']:.0f} s (search {t_search:.0f} s)",
             f"data      {ds.summary()}", "genotype", *_genotype_lines(result.genotype),
             f"cost      {_cost_text(cost)}"]
    if cfg.penalty_metrics:
        budgets = ", ".join(f"{m} <= {int(b):,}" for m, b in cfg.budgets.items() if b is not None)
        if budgets:
            lines.append(f"budget    {budgets}: " + ("; ".join(f"OVER: {m}" for m in result.budget_misses) or "met"))
        else:
            lines.append(f"penalty   {' + '.join(cfg.penalty_metrics)} (no budget: the penalty lowers the cost)")
    if "valid_acc" in last:
        lines.append(f"search    last epoch: supernet valid accuracy {last['valid_acc']:.3f}")
    if train_cfg is not None:
        lines.append(f"accuracy  {summary['test_acc']:.4f} on the held-out test split ({ds.test.num_samples} "
                     f"samples), after {train_cfg.epochs} training epochs")
    else:
        lines.append(f"accuracy  not trained yet (--train-epochs 0): run `fnas train {out}`")
    lines += [f"run       {out}/", "plots", *_plot_lines(plots),
              f"next      fnas show {out}  |  fnas export {out}" if train_cfg else f"next      fnas train {out}"]
    log("\n".join(lines))
    return 0


# --- fnas train ------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace, argv: list[str]) -> int:
    from fnas import data as D
    from fnas.spaces.cell.config import SpaceConfig
    from fnas.cost import genotype_cost
    from fnas.spaces.cell.genotype import genotype_to_dict, load_genotype, save_genotype
    from fnas.core.io import append_jsonl, atomic_torch_save, atomic_write_json
    from fnas.app.train import TrainConfig, evaluate, train_model

    log = _log(args.quiet)
    _positive(epochs=args.epochs, batch_size=args.batch_size, C=args.C, layers=args.layers,
              stem_multiplier=args.stem_multiplier)
    _threads(args)
    device = _device(args.device)
    source: Path = args.source
    if not source.exists():
        raise ValueError(f"{str(source)!r} does not exist; give a run folder or a genotype JSON file")
    run = _open_run(source) if source.is_dir() else None
    if run is None:
        _read_json(source, "genotype file")  # a clear message for a file that is not JSON at all
    genotype = run.genotype if run else load_genotype(source)
    saved = run.config.get("cli", {}) if run else {}

    def pick(name: str, run_key: str | None = None):
        value = getattr(args, name)
        if value is not None:
            return value
        if run is not None:
            if name in ("C", "layers", "stem_multiplier"):
                return getattr(run.space, name)
            value = saved.get(run_key or name)
            if value:
                return value
        return DEFAULTS[run_key or name]

    epochs, lr = pick("epochs", "train_epochs"), pick("lr", "train_lr")
    batch_size, seed = pick("batch_size"), pick("seed")
    sizes = {k: pick(k) for k in ("C", "layers", "stem_multiplier")}
    data_spec = args.data or (run.data if run else DEFAULTS["data"])
    train_cfg = TrainConfig(epochs=int(epochs), lr=float(lr))

    # where the results go: in place (a search-only run) or a new folder; never over a model
    in_place = run is not None and args.out is None
    if in_place:
        if (run.path / "model.pt").exists():
            acc = (run.summary or {}).get("test_acc")
            raise ValueError(
                f"run {str(run.path)!r} already holds a trained model.pt"
                + (f" (test accuracy {acc:.4f})" if isinstance(acc, float) else "")
                + "; pass --out NEW_FOLDER to train again without overwriting it"
            )
        changed = [f"--{k.replace('_', '-')}" for k, v in sizes.items() if v != getattr(run.space, k)]
        if changed:
            raise ValueError(
                f"{', '.join(changed)} change the network of run {str(run.path)!r}; pass --out NEW_FOLDER "
                "to train the resized network in a new run folder"
            )
        out = run.path
    else:
        stem = source.name if run else source.stem
        out = args.out or Path("runs") / f"train-{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        _check_out(out, "pass another --out")

    ds = D.load_dataset(data_spec)
    data_spec = _data_spec(data_spec)
    if in_place:
        _check_fits(ds, run.space, f"run {str(run.path)!r}")
    base = run.space if run else None
    ops = tuple(dict.fromkeys(op for op, _ in list(genotype.normal) + list(genotype.reduce)))
    space = SpaceConfig(
        C=sizes["C"], num_classes=ds.num_classes, layers=sizes["layers"], in_channels=ds.in_channels,
        input_shape=ds.input_shape, nodes=len(genotype.normal), multiplier=len(list(genotype.normal_concat)),
        stem_multiplier=sizes["stem_multiplier"], primitives=base.primitives if base else ops,
        with_input_batchnorm=base.with_input_batchnorm if base else True,
    )
    cost = genotype_cost(genotype, space)  # also checks that the genotype fits the data's kind
    gen = torch.Generator().manual_seed(int(seed))
    model = _build_model(space, genotype, gen)
    gen_data = torch.Generator().manual_seed(int(seed))
    train_loader = D.make_loader(ds.train_valid(), int(batch_size), shuffle=True, gen=gen_data)
    test_loader = D.make_loader(ds.test, 256, shuffle=False)

    if not in_place:
        out.mkdir(parents=True, exist_ok=True)
        cli_args = {"data": data_spec, "epochs": train_cfg.epochs, "train_epochs": train_cfg.epochs,
                    "batch_size": int(batch_size), "lr": train_cfg.lr, "train_lr": train_cfg.lr, "seed": int(seed),
                    **sizes, "threads": args.threads, "device": args.device}
        atomic_write_json(out / "config.json", {
            "command": "train", "source": str(source.resolve()), "cli": cli_args,
            "space": dataclasses.asdict(space), "train": dataclasses.asdict(train_cfg), "dataset": ds.summary(),
        })
        save_genotype(genotype, out / "genotype.json")
    log(ds.summary())
    log(f"training into {out}: {train_cfg.epochs} epochs, lr {train_cfg.lr}, batch {batch_size}, "
        f"{cost.params:,} parameters")

    def on_epoch(epoch, record):
        append_jsonl(out / "metrics.jsonl", {"phase": "train", **record})
        if args.quiet:
            log(f"train epoch {epoch + 1}/{train_cfg.epochs}: loss {record['train_loss']:.3f} "
                f"acc {record['train_acc']:.3f}")

    t0 = time.time()
    train_model(model, train_loader, cfg=train_cfg, device=device, progress=not args.quiet, on_epoch=on_epoch)
    test_loss, test_acc = evaluate(model, test_loader, device=device)
    atomic_torch_save(out / "model.pt", model.cpu().state_dict())
    summary = dict(run.summary or {}) if in_place else {}
    summary.update(
        data=ds.summary(), genotype=genotype_to_dict(genotype), **_cost_summary(cost),
        test_acc=test_acc, test_loss=test_loss, test_samples=ds.test.num_samples,
        train=dataclasses.asdict(train_cfg), train_seconds=round(time.time() - t0, 1),
    )
    atomic_write_json(out / "summary.json", summary)
    alphas = _load_alphas(out) if in_place else None
    plots = _plots(out, genotype=genotype, space=space, records=_read_metrics(out / "metrics.jsonl"),
                   alphas=alphas, test_acc=test_acc, warmup_epochs=run.warmup_epochs if in_place else 0,
                   missing_only=True, redraw=("curves.png",))  # only the curves changed
    log("\n".join([
        "", f"fnas train: done in {time.time() - t0:.0f} s",
        f"accuracy  {test_acc:.4f} on the held-out test split ({ds.test.num_samples} samples of {ds.name})",
        f"cost      {_cost_text(cost)}",
        f"run       {out}/ (model.pt, summary.json, metrics.jsonl)", "plots", *_plot_lines(plots),
        f"next      fnas export {out}",
    ]))
    return 0


def _load_alphas(folder: Path):
    from fnas.core.io import safe_torch_load

    path = folder / "alphas.pt"
    if not path.is_file():
        return None
    history = safe_torch_load(path)
    return history if isinstance(history, list) and history else None


# --- fnas show -------------------------------------------------------------------------------


def cmd_show(args: argparse.Namespace, argv: list[str]) -> int:
    from fnas.cost import genotype_cost

    run = _open_run(args.run)
    cost = genotype_cost(run.genotype, run.space)
    summary = run.summary or {}
    records = _read_metrics(run.path / "metrics.jsonl")
    s = run.space
    lines = [
        f"run       {run.path}/ ({run.config.get('command', 'search')} run)",
        f"data      {summary.get('data') or run.config.get('dataset') or run.data}",
        f"network   C={s.C}, {s.layers} cells (reductions at {list(s.reduction_layers)}), {s.nodes} nodes, "
        f"multiplier {s.multiplier}, stem {s.stem_multiplier}*C, input {s.in_channels} x {tuple(s.input_shape)}, "
        f"{s.num_classes} classes",
        "genotype", *_genotype_lines(run.genotype),
        f"cost      {_cost_text(cost)}",
    ]
    search = [r for r in records if r.get("phase") == "search"]
    if search:
        last = search[-1]
        lines.append(f"search    {len(search)} epochs; last: supernet train acc "
                     f"{last.get('train_acc', float('nan')):.3f}"
                     + (f", valid acc {last['valid_acc']:.3f}" if "valid_acc" in last else ""))
    if isinstance(summary.get("test_acc"), (int, float)) and (run.path / "model.pt").is_file():
        lines.append(f"accuracy  {summary['test_acc']:.4f} on the held-out test split"
                     + (f" ({summary['test_samples']} samples)" if "test_samples" in summary else ""))
    else:
        lines.append(f"accuracy  not trained yet: run `fnas train {run.path}`")
    export = run.path / "export.json"
    if export.is_file():
        rep = _read_json(export, "export report")
        lines.append(_export_text(rep, run.path))
    elif (run.path / "model.pt").is_file():
        lines.append(f"export    not exported yet: run `fnas export {run.path}`")
    plots = _plots(run.path, genotype=run.genotype, space=run.space, records=records, alphas=_load_alphas(run.path),
                   test_acc=summary.get("test_acc") if (run.path / "model.pt").is_file() else None,
                   warmup_epochs=run.warmup_epochs, missing_only=not args.replot)
    lines += ["plots", *_plot_lines(plots)]
    print("\n".join(lines), flush=True)
    return 0


def _export_text(rep: dict, folder: Path) -> str:
    f32, i8 = rep["float32"], rep["int8"]
    return (
        f"export    {folder / f32['file']}: ONNX opset {rep['opset']}, {f32['bytes']:,} B, test accuracy "
        f"{f32['test_acc']:.4f}, max abs diff vs PyTorch {f32['max_abs_diff_vs_pytorch']:.2e}\n"
        f"          {folder / i8['file']}: int8 QDQ, {i8['bytes']:,} B ({i8['weight_bytes']:,} B of tensors), "
        f"test accuracy {i8['test_acc']:.4f} (float32 {f32['test_acc']:.4f}), calibrated on "
        f"{rep.get('calibration_samples', '?')} {rep.get('calibration_split', 'valid')} samples"
    )


# --- fnas export -----------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace, argv: list[str]) -> int:
    from fnas import data as D
    from fnas.app.export import export_model, require_export_deps
    from fnas.core.io import atomic_write_json

    require_export_deps()
    _positive(calib_samples=args.calib_samples)
    if args.opset < 18:
        raise ValueError(f"--opset must be >= 18 (torch's ONNX exporter), got {args.opset}")
    _threads(args)
    run = _open_run(args.run)
    model = _load_model(run)
    out = args.out or run.path
    if args.out is not None:
        _check_out(out, "pass another --out")
    existing = [f for f in EXPORT_FILES if (out / f).exists()]
    if existing:
        raise ValueError(
            f"{str(out)!r} already holds {', '.join(existing)} from an earlier export; pass --out NEW_FOLDER "
            "to export again without overwriting them"
        )
    ds = D.load_dataset(args.data or run.data)
    _check_fits(ds, run.space, f"run {str(run.path)!r}")
    calib = ds.valid if args.calib_split == "valid" else ds.train
    if calib.num_samples > args.calib_samples:
        pick = torch.randperm(calib.num_samples, generator=torch.Generator().manual_seed(args.seed))
        calib = D.Split(calib.x[pick[: args.calib_samples]], calib.y[pick[: args.calib_samples]])
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    report = export_model(model, calib.x, ds.test.x, ds.test.y, out, opset=args.opset,
                          per_channel=not args.per_tensor, threads=args.threads)
    report.update(
        run=str(run.path.resolve()),
        data=ds.summary(),
        class_names=list(ds.class_names),
        calibration_split=args.calib_split,
        preprocessing=(
            "standardise each input channel c as (x[c] - input_mean[c]) / input_std[c] (the training "
            "split's statistics, as fnas.data.load_dataset does) before feeding the models"
            if ds.input_mean is not None else
            "none: the models take the data as stored (UCR sets the archive z-normalised per series: "
            "z-normalise each new series the same way)"
        ),
        input_mean=list(ds.input_mean) if ds.input_mean is not None else None,
        input_std=list(ds.input_std) if ds.input_std is not None else None,
        seconds=round(time.time() - t0, 1),
    )
    atomic_write_json(out / "export.json", report)
    print("\n".join([
        f"fnas export: done in {report['seconds']:.0f} s ({ds.test.num_samples} held-out test samples of {ds.name})",
        _export_text(report, out),
        f"          PyTorch test accuracy {report['pytorch_test_acc']:.4f}; int8 agrees with float32 on "
        f"{100 * report['int8']['agreement_with_float32']:.1f}% of the test samples",
        f"report    {out / 'export.json'}",
    ]), flush=True)
    return 0


# --- entry point -----------------------------------------------------------------------------

_COMMANDS = {"search": cmd_search, "train": cmd_train, "show": cmd_show, "export": cmd_export}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fnas`` console script; returns the exit code (2 for bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2): return it instead of exiting
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        return _COMMANDS[args.command](args, argv)
    except ValueError as err:  # bad input; MissingDependencyError is one too
        print(f"fnas {args.command}: error: {err}", file=sys.stderr, flush=True)
        return 2
    except FloatingPointError as err:
        print(f"fnas {args.command}: error: {err}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"fnas {args.command}: interrupted", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
