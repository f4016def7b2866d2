"""``fnas train``: train a run's (or a genotype file's) network from scratch and test it on held-out data.

A search-only run is trained in place; anything else (a genotype file, a run that already holds a
model, a resized network) goes to a new run folder, so a trained model is never overwritten. Cell
and chain genotypes both train; a chain genotype's widths are its own (no size options).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import NamedTuple

import torch

from fnas.app import runs
from fnas.app.spaces import Space, chain_genotype_from_json, chain_space_for, space_to_dict
from fnas.app.train import TrainConfig, build_network
from fnas.cli.common import (
    absolute_data_spec,
    check_out,
    check_positive,
    cost_text,
    make_log,
    pick_device,
    plot_lines,
    set_threads,
    train_and_test,
)
from fnas.cost import genotype_cost
from fnas.data import Dataset, load_dataset
from fnas.search.defaults import DEFAULTS
from fnas.spaces.cell.config import SpaceConfig
from fnas.spaces.cell.genotype import Genotype_CNN, load_genotype
from fnas.spaces.chain import ChainGenotype, ChainSpaceConfig

SIZES = ("C", "layers", "stem_multiplier")  # the options that size a cell network


class _Settings(NamedTuple):
    """What ``fnas train`` runs with: given options, else the run's, else the defaults."""

    train: TrainConfig
    batch_size: int
    seed: int
    sizes: dict[str, int]
    data: str


def cmd_train(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``fnas train``; returns the exit code."""
    log = make_log()
    check_positive(epochs=args.epochs, batch_size=args.batch_size, C=args.C, layers=args.layers,
                   stem_multiplier=args.stem_multiplier)
    set_threads(args)
    device = pick_device(args.device)
    run, genotype, saved_space = _open_source(args.source)
    chain = isinstance(genotype, ChainGenotype)
    if chain:
        _check_no_sizes(args)
    settings = _settings(args, run, chain)
    out, in_place = _destination(args, run, settings.sizes)

    ds = load_dataset(settings.data)
    if in_place:
        runs.check_fits(ds, run.space, f"run {str(run.path)!r}")
    if chain:
        space = chain_space_for(genotype, in_channels=ds.in_channels, num_classes=ds.num_classes,
                                input_shape=tuple(ds.input_shape), base=run.space if run else saved_space)
    else:
        space = _space(genotype, settings.sizes, ds, run.space if run else None)
    cost = genotype_cost(genotype, space)  # also checks that the genotype fits the data's kind
    model = build_network(space, genotype, torch.Generator().manual_seed(settings.seed))
    if not in_place:
        _new_run_folder(out, args, settings, space, genotype, ds)
    log(ds.summary())
    log(f"training into {out}: {settings.train.epochs} epochs, lr {settings.train.lr}, batch "
        f"{settings.batch_size}, {cost.params:,} parameters")

    t0 = time.time()
    tested = train_and_test(model, ds, out, cfg=settings.train, batch_size=settings.batch_size,
                            gen=torch.Generator().manual_seed(settings.seed), device=device, quiet=args.quiet,
                            log=log)
    summary = dict(run.summary or {}) if in_place else {}
    summary.update(data=ds.summary(), genotype=space.genotype_to_dict(genotype), **runs.cost_summary(cost), **tested,
                   train_seconds=round(time.time() - t0, 1))
    runs.write_summary(out, summary)
    plots = runs.write_run_plots(
        out, genotype=genotype, space=space, alphas=runs.load_alphas(out) if in_place else None,
        test_acc=tested["test_acc"], warmup_epochs=run.warmup_epochs if in_place else 0,
        selection=run.selection if run else None, missing_only=True, redraw=("curves.png",),  # only curves changed
    )
    log("\n".join([
        "", f"fnas train: done in {time.time() - t0:.0f} s",
        f"accuracy  {tested['test_acc']:.4f} on the held-out test split ({ds.test.num_samples} samples of {ds.name})",
        f"cost      {cost_text(cost)}",
        f"run       {out}/ (model.pt, summary.json, metrics.jsonl)", "plots", *plot_lines(plots),
        f"next      fnas export {out}",
    ]))
    return 0


def _open_source(source: Path) -> tuple[runs.Run | None, Genotype_CNN | ChainGenotype, ChainSpaceConfig | None]:
    """The run folder (``None`` for a genotype file), the genotype to train, and the chain space a chain
    genotype file carries (``None`` otherwise: a run's space is ``run.space``)."""
    if not source.exists():
        raise ValueError(f"{str(source)!r} does not exist; give a run folder or a genotype JSON file")
    if source.is_dir():
        run = runs.open_run(source)
        return run, run.genotype, None
    data = runs.read_json(source, "genotype file")  # a clear message for a file that is not JSON at all
    if isinstance(data, dict) and data.get("space") == "chain":
        genotype, space = chain_genotype_from_json(data, f"genotype file {str(source)!r}")
        return None, genotype, space
    return None, load_genotype(source), None


def _check_no_sizes(args: argparse.Namespace) -> None:
    """A chain genotype spells out its widths: the cell size options do not apply."""
    given = [f"--{k.replace('_', '-')}" for k in SIZES if getattr(args, k) is not None]
    if given:
        verb = "sizes" if len(given) == 1 else "size"
        raise ValueError(f"{', '.join(given)} {verb} a cell network, but this is a chain genotype (its blocks give "
                         "every width); drop them")


def _settings(args: argparse.Namespace, run: runs.Run | None, chain: bool) -> _Settings:
    """Each setting from the command line, else the run (its space for the sizes), else DEFAULTS."""
    saved = run.config.get("cli", {}) if run else {}

    def pick(name: str, key: str | None = None):
        value = getattr(args, name)
        if value is not None:
            return value
        if run is not None:
            if name in SIZES:
                return getattr(run.space, name)
            value = saved.get(key or name)
            if value:
                return value
        return DEFAULTS[key or name]

    return _Settings(
        train=TrainConfig(epochs=int(pick("epochs", "train_epochs")), lr=float(pick("lr", "train_lr"))),
        batch_size=int(pick("batch_size")),
        seed=int(pick("seed")),
        sizes={} if chain else {k: pick(k) for k in SIZES},
        data=args.data or (run.data if run else DEFAULTS["data"]),
    )


def _destination(args: argparse.Namespace, run: runs.Run | None, sizes: dict[str, int]) -> tuple[Path, bool]:
    """``(folder, in_place)``: a search-only run itself, or a new folder; never over a trained model."""
    if run is None or args.out is not None:
        stem = args.source.name if run else args.source.stem
        out = args.out or Path("runs") / f"train-{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        check_out(out, "pass another --out")
        return out, False
    if run.trained:
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
    return run.path, True


def _space(genotype: Genotype_CNN, sizes: dict[str, int], ds: Dataset, base: SpaceConfig | None) -> SpaceConfig:
    """The network's space: the given sizes, the data's shapes, the genotype's nodes; primitives and
    input BatchNorm from the run (``base``), else the genotype's ops and BatchNorm on."""
    ops = tuple(dict.fromkeys(op for op, _ in list(genotype.normal) + list(genotype.reduce)))
    # the run's cell skeleton beyond the sizes (fields of newer SpaceConfigs, absent in older ones)
    skeleton = {k: getattr(base, k) for k in ("reductions", "preprocess") if base is not None and hasattr(base, k)}
    return SpaceConfig(
        C=sizes["C"], num_classes=ds.num_classes, layers=sizes["layers"], in_channels=ds.in_channels,
        input_shape=ds.input_shape, nodes=len(genotype.normal), multiplier=len(list(genotype.normal_concat)),
        stem_multiplier=sizes["stem_multiplier"], primitives=base.primitives if base else ops,
        with_input_batchnorm=base.with_input_batchnorm if base else True, **skeleton,
    )


def _new_run_folder(out: Path, args: argparse.Namespace, settings: _Settings, space: Space,
                    genotype: Genotype_CNN | ChainGenotype, ds: Dataset) -> None:
    """Create ``out`` with the ``config.json`` and ``genotype.json`` of a ``train`` run."""
    out.mkdir(parents=True, exist_ok=True)
    train = settings.train
    cli_args = {"data": absolute_data_spec(settings.data), "epochs": train.epochs, "train_epochs": train.epochs,
                "batch_size": settings.batch_size, "lr": train.lr, "train_lr": train.lr, "seed": settings.seed,
                **settings.sizes, "threads": args.threads, "device": args.device}
    runs.write_config(out, {
        "command": "train", "source": str(args.source.resolve()), "cli": cli_args,
        "space": space_to_dict(space), "train": dataclasses.asdict(train), "dataset": ds.summary(),
    })
    runs.write_genotype(out, genotype, space)
