"""The ``fnas`` command: ``fnas search`` runs a search, trains the found network and writes a run folder."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from fnas import primitives as P

DEFAULTS = {
    # Sized so the default job (search + training on the watch data) takes about 10 minutes on
    # 2 CPU cores; see README.md for the measured time.
    "data": "watch",
    "epochs": 10,
    "train_epochs": 40,
    "batch_size": 64,
    "C": 8,
    "layers": 5,
    "nodes": 4,
    "multiplier": 4,
    "stem_multiplier": 3,
    "primitives": None,
    "hypergrad": "first_order",
    "unroll_steps": 1,
    "lr": 0.025,
    "lr_min": 0.001,
    # DARTS uses 3e-4 over ~20k steps; a 10-epoch search on the watch data has ~320 steps, so
    # the alphas get a 10x larger Adam step to move as far.
    "arch_lr": 3e-3,
    "arch_weight_decay": 1e-3,
    "weight_decay": 3e-4,
    "momentum": 0.9,
    "grad_clip": 5.0,
    "warmup_epochs": 2,
    "train_lr": 0.05,
    "seed": 0,
    # One thread: these networks are small, and on 2-core VMs two threads are often slower.
    "threads": 1,
    "device": "cpu",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fnas",
        description="Differentiable architecture search for tiny CNNs (kx1 time series and 2D images).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "search",
        help="search an architecture, train it from scratch, report held-out accuracy",
        description=(
            "Search a cell architecture with DARTS on a dataset, train the found network from scratch "
            "on train+valid, evaluate it on the held-out test split, and write a run folder "
            "(config.json, genotype.json, metrics.jsonl, checkpoint.pt, model.pt, summary.json)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = DEFAULTS
    s.add_argument("--data", default=d["data"], help="'watch' (bundled smartwatch IMU), 'digits', 'ucr:NAME', or a .npz path")
    s.add_argument("--config", type=Path, help="replay a run: a run folder's config.json (other options override it)")
    s.add_argument("--out", type=Path, help="run folder to create (default: runs/<data>-<time>)")
    s.add_argument("--epochs", type=int, default=d["epochs"], help="search epochs")
    s.add_argument("--train-epochs", type=int, default=d["train_epochs"], help="epochs to train the found network")
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
        f"images); known: {','.join(sorted(P._REGISTRY))}",
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
    s.add_argument("--threads", type=int, default=d["threads"], help="torch CPU threads (0: torch's default)")
    s.add_argument("--device", default=d["device"], help="'cpu', 'cuda' or 'cuda:N'")
    s.add_argument("--quiet", action="store_true", help="no progress bars; one log line per epoch")
    s.add_argument("--mode", dest="penalty_mode", default=None,
                   help="resource-aware search: 'Memory' (parameters), 'Compute' (MACs), 'SRAM' (peak "
                   "activations), or a combination like 'Memory+Compute'")
    s.add_argument("--penalty-weight", type=float, default=1.0, help="weight of the resource penalty")
    s.add_argument("--max-params", type=int, help="parameter budget (turns on the 'Memory' penalty)")
    s.add_argument("--max-macs", type=int, help="MAC budget (turns on the 'Compute' penalty)")
    s.add_argument("--max-sram", dest="max_sram_bytes", type=int,
                   help="peak activation budget in bytes at int8 (turns on the 'SRAM' penalty)")
    return parser


def _config_args(args: argparse.Namespace, argv: list[str]) -> argparse.Namespace:
    """Apply a replayed config.json under the options given explicitly on the command line."""
    if args.config is None:
        return args
    path = args.config / "config.json" if args.config.is_dir() else args.config
    if not path.is_file():
        raise ValueError(f"--config {str(args.config)!r}: no config.json there")
    try:
        saved = json.loads(path.read_text())["cli"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"--config {str(path)!r} is not an fnas run config ({err})") from err
    given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in argv if a.startswith("--")}
    for key, value in saved.items():
        if key not in given and hasattr(args, key) and key not in ("config", "out"):
            setattr(args, key, value)
    return args


def _log(quiet: bool):
    def log(msg: str) -> None:
        print(msg, flush=True)

    return log


def cmd_search(args: argparse.Namespace, argv: list[str]) -> int:
    from fnas import data as D
    from fnas.config import SearchConfig, SpaceConfig
    from fnas.cost import genotype_cost
    from fnas.genotypes import genotype_to_dict, save_genotype
    from fnas.runs import append_jsonl, atomic_torch_save, atomic_write_json
    from fnas.search import run_search, state_to_dict
    from fnas.train import TrainConfig, evaluate, train_model

    args = _config_args(args, argv)
    log = _log(args.quiet)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device} but CUDA is not available; use --device cpu")

    t0 = time.time()
    ds = D.load_dataset(args.data)
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
    )
    gen_data = torch.Generator().manual_seed(args.seed)
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
    )
    train_cfg = TrainConfig(epochs=args.train_epochs, lr=args.train_lr)

    out = args.out or Path("runs") / f"{Path(str(args.data)).stem.replace(':', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"run folder {str(out)!r} exists and is not empty; pass another --out")
    out.mkdir(parents=True, exist_ok=True)
    cli_args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "command"}
    atomic_write_json(out / "config.json", {"cli": cli_args, "search": dataclasses.asdict(cfg),
                                            "train": dataclasses.asdict(train_cfg), "dataset": ds.summary()})
    log(f"run folder: {out}")

    def on_epoch(epoch, state, record):
        rec = dict(record, genotype=genotype_to_dict(record["genotype"]))
        append_jsonl(out / "metrics.jsonl", {"phase": "search", **rec})
        atomic_torch_save(out / "checkpoint.pt", {"epoch": epoch, "state": state_to_dict(state)})
        if args.quiet:
            log(f"search epoch {epoch + 1}/{args.epochs}: train loss {rec['train_loss']:.3f} acc "
                f"{rec['train_acc']:.3f}, valid acc {rec.get('valid_acc', float('nan')):.3f}")

    gen = torch.Generator().manual_seed(args.seed)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # budget misses are reported below, not as a warning
        result = run_search(cfg, train_loader, valid_loader, epochs=args.epochs, gen=gen, device=device,
                            progress=not args.quiet, on_epoch=on_epoch)
    t_search = time.time() - t0
    save_genotype(result.genotype, out / "genotype.json")
    atomic_torch_save(out / "alphas.pt", result.alpha_history)
    log(f"genotype: {result.genotype}")
    for miss in result.budget_misses:
        log(f"WARNING: the derived genotype is over budget: {miss}")

    model = result.model
    final_loader = D.make_loader(ds.train_valid(), args.batch_size, shuffle=True, gen=gen_data)
    test_loader = D.make_loader(ds.test, 256, shuffle=False)

    def on_train_epoch(epoch, record):
        append_jsonl(out / "metrics.jsonl", {"phase": "train", **record})
        if args.quiet:
            log(f"train epoch {epoch + 1}/{train_cfg.epochs}: loss {record['train_loss']:.3f} acc {record['train_acc']:.3f}")

    train_model(model, final_loader, cfg=train_cfg, device=device, progress=not args.quiet, on_epoch=on_train_epoch)
    test_loss, test_acc = evaluate(model, test_loader, device=device)
    atomic_torch_save(out / "model.pt", model.state_dict())
    cost = genotype_cost(result.genotype, space)
    summary = {
        "data": ds.summary(),
        "genotype": genotype_to_dict(result.genotype),
        "test_acc": test_acc,
        "test_loss": test_loss,
        "params": int(sum(p.numel() for p in model.parameters())),
        "macs": int(cost.macs),
        "peak_sram_bytes_int8": int(cost.peak_sram_bytes_int8),
        "budget_misses": result.budget_misses,
        "search_seconds": round(t_search, 1),
        "total_seconds": round(time.time() - t0, 1),
    }
    atomic_write_json(out / "summary.json", summary)
    log(
        f"\nheld-out test accuracy {test_acc:.4f} ({ds.test.num_samples} windows of unseen subjects)\n"
        f"parameters {summary['params']:,}   MACs {summary['macs']:,}   peak SRAM (int8) "
        f"{summary['peak_sram_bytes_int8']:,} B\n"
        f"search {t_search:.0f} s, total {summary['total_seconds']:.0f} s; run folder {out}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fnas`` console script; returns the exit code (2 for bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        if args.command == "search":
            return cmd_search(args, argv)
    except ValueError as err:
        print(f"fnas {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
