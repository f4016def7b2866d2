"""``fnas train``: train a run's (or a genotype file's) network from scratch and test it on held-out data.

A search-only run is trained in place; anything else (a genotype file, a run that already holds a
model, a resized network) goes to a new run folder, so a trained model is never overwritten. Cell
and chain genotypes both train; a chain genotype's widths are its own (no size options). A genotype
file that ``fnas search`` wrote carries its space and data, so its network is the searched one; a
bare genotype (the seed's format) gets the size options' or the default space, and says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import NamedTuple

import torch

from fnas.app import runs
from fnas.app.spaces import Space, chain_space_for, space_to_dict, space_type
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
from fnas.cost import Cost, genotype_cost
from fnas.data import Dataset, load_dataset
from fnas.search.defaults import DEFAULTS
from fnas.spaces.cell.config import SpaceConfig
from fnas.spaces.cell.genotype import Genotype_CNN
from fnas.spaces.chain import ChainGenotype

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
    run, source = _open_source(args.source)
    genotype, base = source.genotype, source.space  # base: the space it was searched in (None: a bare genotype)
    chain = isinstance(genotype, ChainGenotype)
    if chain:
        _check_no_sizes(args)
    settings = _settings(args, run, chain, base, source.data)
    out, in_place = _destination(args, run, settings.sizes)

    ds = _load_data(settings.data, from_file=run is None and args.data is None and source.data is not None,
                    where=args.source)
    if in_place:
        runs.check_fits(ds, run.space, f"run {str(run.path)!r}")
    if run is None and (base is None or source.data is None and args.data is None):
        log(_assumed(args, chain, base, source.data))
    space, cost = _fit(genotype, base, settings.sizes, ds, args.source, (source.data or {}).get("spec"))
    if base is not None and _shapes(base) != _shapes(ds):
        log(f"note      {args.source} was searched on data of {_shapes_text(_shapes(base))}; {ds.name} has "
            f"{_shapes_text(_shapes(ds))}: the network's input and head follow {ds.name}")
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


def _open_source(source: Path) -> tuple[runs.Run | None, runs.GenotypeFile]:
    """The run folder (``None`` for a genotype file), and the genotype to train with the space it was
    searched in (a run's, or the one its file records; ``None`` for a bare genotype) and its data."""
    if not source.exists():
        raise ValueError(f"{str(source)!r} does not exist; give a run folder or a genotype JSON file")
    if source.is_dir():
        run = runs.open_run(source)
        return run, runs.GenotypeFile(run.genotype, run.space, None)
    return None, runs.read_genotype_file(source)


def _load_data(spec: str, *, from_file: bool, where: Path) -> Dataset:
    """The dataset; one the genotype file names but that cannot be loaded here says how to pick another."""
    try:
        return load_dataset(spec)
    except ValueError as err:
        if not from_file:
            raise
        raise ValueError(f"{err} (the data genotype file {str(where)!r} was searched on; pass --data to train on "
                         "other data)") from err


def _shapes(x: Space | Dataset) -> tuple[int, tuple[int, ...], int]:
    """(channels, input shape, classes) of a space or a dataset."""
    return int(x.in_channels), tuple(int(v) for v in x.input_shape), int(x.num_classes)


def _shapes_text(shapes: tuple[int, tuple[int, ...], int]) -> str:
    return f"{shapes[0]} channels, input {shapes[1]}, {shapes[2]} classes"


def _assumed(args: argparse.Namespace, chain: bool, base: Space | None, data: dict | None) -> str:
    """One line: what a genotype file without its space (or data) is trained in, and the options that choose."""
    parts, options = [], []
    if base is None and not chain:
        sizes = {k: getattr(args, k) if getattr(args, k) is not None else DEFAULTS[k] for k in SIZES}
        given = all(getattr(args, k) is not None for k in SIZES)
        parts.append(f"the cell space C={sizes['C']}, layers {sizes['layers']}, stem multiplier "
                     f"{sizes['stem_multiplier']}" + ("" if given else " (the defaults where no option is given)"))
        options.append("--C, --layers, --stem-multiplier")
    elif base is None:
        parts.append("the genotype's own chain space (its widths, stride 1)")
    if data is None and args.data is None:
        parts.append(f"the {DEFAULTS['data']!r} data")
        options.append("--data")
    why = "a bare genotype without the space it was searched in" if base is None else "no data recorded"
    how = f"; choose with {' and '.join(options)}" if options else ""
    return f"assumed   {' on '.join(parts)}: {args.source} holds {why}{how}"


def _fit(genotype: Genotype_CNN | ChainGenotype, base: Space | None, sizes: dict[str, int], ds: Dataset,
         source: Path, searched_on: str | None) -> tuple[Space, Cost]:
    """The network's space on ``ds`` and the genotype's exact cost in it.

    Raises:
        ValueError: the genotype cannot be built on ``ds`` (e.g. kx1 ops on images, a chain whose
            identity first block needs another channel count), naming the space it was searched in.
    """
    try:
        if isinstance(genotype, ChainGenotype):
            space = chain_space_for(genotype, in_channels=ds.in_channels, num_classes=ds.num_classes,
                                    input_shape=tuple(ds.input_shape), base=base)
        else:
            space = _space(genotype, sizes, ds, base)
        return space, genotype_cost(genotype, space)  # also checks that the genotype fits the data's kind
    except ValueError as err:
        searched = (f"searched in a {space_type(base)} space for {_shapes_text(_shapes(base))}" if base is not None
                    else "a bare genotype")
        data = f"--data {searched_on}" if searched_on else "--data"
        raise ValueError(f"{str(source)!r} ({searched}) does not fit {ds.name} ({_shapes_text(_shapes(ds))}): {err}; "
                         f"train it on the data it was searched on ({data}), or search this data's space") from err


def _check_no_sizes(args: argparse.Namespace) -> None:
    """A chain genotype spells out its widths: the cell size options do not apply."""
    given = [f"--{k.replace('_', '-')}" for k in SIZES if getattr(args, k) is not None]
    if given:
        verb = "sizes" if len(given) == 1 else "size"
        raise ValueError(f"{', '.join(given)} {verb} a cell network, but this is a chain genotype (its blocks give "
                         "every width); drop them")


def _settings(args: argparse.Namespace, run: runs.Run | None, chain: bool, base: Space | None,
              data: dict | None) -> _Settings:
    """Each setting from the command line, else the run (its space for the sizes; a genotype file's
    space and data), else DEFAULTS."""
    saved = run.config.get("cli", {}) if run else {}

    def pick(name: str, key: str | None = None):
        value = getattr(args, name)
        if value is not None:
            return value
        if name in SIZES and base is not None:
            return getattr(base, name)
        if run is not None:
            value = saved.get(key or name)
            if value:
                return value
        return DEFAULTS[key or name]

    return _Settings(
        train=TrainConfig(epochs=int(pick("epochs", "train_epochs")), lr=float(pick("lr", "train_lr"))),
        batch_size=int(pick("batch_size")),
        seed=int(pick("seed")),
        sizes={} if chain else {k: pick(k) for k in SIZES},
        data=args.data or (run.data if run else (data or {}).get("spec") or DEFAULTS["data"]),
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
    """The network's space: the given sizes, the data's shapes, the genotype's nodes; primitives, input
    BatchNorm and skeleton from the space it was searched in (``base``: the run's or the genotype
    file's), else the genotype's ops and BatchNorm on."""
    ops = tuple(dict.fromkeys(op for op, _ in list(genotype.normal) + list(genotype.reduce)))
    # the searched cell skeleton beyond the sizes (fields of newer SpaceConfigs, absent in older ones)
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
    runs.write_genotype(out, genotype, space, runs.data_record(ds, absolute_data_spec(settings.data)))
