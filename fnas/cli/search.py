"""``fnas search``: search a chain or cells on a dataset, train the found network, write and report a run folder.

Under torchrun the search runs data-parallel; rank 0 alone writes the run folder and trains.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader

from fnas.app import runs
from fnas.app.spaces import Space, space_to_dict
from fnas.app.train import TrainConfig
from fnas.cli.common import (
    absolute_data_spec,
    check_out,
    check_positive,
    cost_text,
    genotype_lines,
    make_log,
    pick_device,
    plot_lines,
    set_threads,
    train_and_test,
)
from fnas.cli.distributed import close_distributed, dist_env, init_distributed
from fnas.cli.parser import AUTO, given_options
from fnas.cli.space import build_space, check_space_options
from fnas.cost import Cost, check_budget, genotype_cost
from fnas.data import Dataset, load_dataset, make_loader
from fnas.search.compile import (
    CompileDecision,
    choose_compile,
    compile_cache_dir,
    mark_warm,
    step_cache_key,
    use_compile_cache,
)
from fnas.search.config import SearchConfig
from fnas.search.defaults import DEFAULTS, selection_for
from fnas.search.loop import SearchResult, run_search

Log = Callable[[str], None]


class Schedule(NamedTuple):
    """The search's length with ``auto`` resolved: epochs, weight-only epochs, steps per epoch."""

    epochs: int
    warmup_epochs: int
    steps_per_epoch: int

    @property
    def steps(self) -> int:
        """Search steps in all."""
        return self.epochs * self.steps_per_epoch

    def describe(self, *, auto: bool) -> str:
        """One line: epochs, steps, warm-up (and why, for ``--epochs auto``)."""
        why = f" (--epochs auto: at least {DEFAULTS['min_search_steps']} steps)" if auto else ""
        return (f"{self.epochs} search epochs x {self.steps_per_epoch} steps = {self.steps} steps{why}; the first "
                f"{self.warmup_epochs} epochs train the weights only")


def cmd_search(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``fnas search``; returns the exit code."""
    args = _resume_options(args, argv)
    given = given_options(argv)
    rank, world = dist_env()
    lead = rank == 0  # the only process that prints and writes the run folder
    log = make_log(lead)
    _check_options(args, world)
    check_space_options(args, given)
    set_threads(args)
    device = pick_device(args.device)
    if args.out is not None and args.resume is None and lead:
        check_out(args.out, "pass another --out")

    t0 = time.time()
    ds = load_dataset(args.data)
    args.data = absolute_data_spec(args.data)
    log(ds.summary())
    space, sized = build_space(args, ds, given)
    if "space" not in given and ds.input_shape[1] != 1:
        log(f"space     {args.space} (images: the chain space takes time series only)")
    if sized:
        log(f"space     {sized}")
    gen_data = torch.Generator().manual_seed(args.seed)
    train_loader, valid_loader = _search_loaders(args, ds, gen_data)
    schedule = resolve_schedule(args.epochs, args.warmup_epochs, steps_per_epoch=len(train_loader))
    log(f"schedule  {schedule.describe(auto=args.epochs == AUTO)}")
    cfg = _search_config(args, space, schedule)
    if cfg.penalty_metrics and not cfg.penalty_weight and all(b is None for b in cfg.budgets.values()):
        log(f"note      --mode {args.penalty_mode} has no effect: the penalty weight is 0 (the {args.space} space's "
            "default); pass --penalty-weight, or a budget (--max-params ...), which the genotype then meets")
    selection = args.selection or selection_for(space)
    train_cfg = TrainConfig(epochs=args.train_epochs, lr=args.train_lr) if args.train_epochs else None
    compiled, cache_key = _compile_choice(args, cfg, ds, schedule, device=device, world=world)
    log(f"compile   {compiled.reason}")

    if world > 1:  # after every check: a bad option fails on every rank before any of them waits
        device = init_distributed(device)
    extra = {"schedule": schedule._asdict(), "selection": selection, "sized": sized}
    out = _run_folder(args, cfg, train_cfg, ds, extra, world=world, lead=lead, log=log)
    if world > 1:
        log(f"data parallel: {world} processes ({'NCCL' if device.type == 'cuda' else 'gloo'}), "
            f"{args.batch_size // world} of each batch of {args.batch_size} per process")
    result = _search(args, cfg, schedule, selection, train_loader, valid_loader, out, device=device, world=world,
                     log=log, compiled=compiled, cache_key=cache_key)
    if not lead:
        return 0  # every rank found the same genotype; rank 0 writes it and trains the network alone

    # the times include those of the runs this one resumed from (their checkpoint carries them)
    t_search = time.time() - t0 + result.resumed_seconds
    cost = genotype_cost(result.genotype, space)
    summary = _save_search(out, result, space, cost, ds, args.data, t_search)
    if train_cfg is not None:
        summary.update(train_and_test(result.model, ds, out, cfg=train_cfg, batch_size=args.batch_size,
                                      gen=gen_data, device=device, quiet=args.quiet, log=log))
    summary["total_seconds"] = round(time.time() - t0 + result.resumed_seconds, 1)
    runs.write_summary(out, summary)
    plots = runs.write_run_plots(out, genotype=result.genotype, space=space, alphas=result.alpha_history,
                                 test_acc=summary.get("test_acc"), warmup_epochs=schedule.warmup_epochs,
                                 selection=selection)
    log(_report(out, result, cost, cfg, train_cfg, ds, summary, t_search, plots))
    return 0


# --- options ---------------------------------------------------------------------------------


def _resume_options(args: argparse.Namespace, argv: list[str]) -> argparse.Namespace:
    """``--resume RUN`` replays RUN's saved options; ``--config`` replays a finished run's."""
    resume = args.resume
    if resume is not None:
        # a crashed or killed run continues from its checkpoint with its own saved options; one killed
        # before its first checkpoint (config.json only) starts again from the beginning
        if not (resume / runs.CONFIG).is_file():
            raise ValueError(f"--resume {str(resume)!r} is not a search run folder (no config.json there)")
        if (resume / runs.GENOTYPE).is_file():
            raise ValueError(f"--resume {str(resume)!r}: that search already finished (genotype.json "
                             "exists); use `fnas train` or `fnas show` on it")
        args.config = resume
    return _replay_config(args, argv)


def _replay_config(args: argparse.Namespace, argv: list[str]) -> argparse.Namespace:
    """Apply a replayed config.json under the options given explicitly on the command line."""
    if args.config is None:
        return args
    path = args.config / runs.CONFIG if args.config.is_dir() else args.config
    if not path.is_file():
        raise ValueError(f"--config {str(args.config)!r}: no config.json there")
    try:
        config = json.loads(path.read_text())
        saved = config["cli"]
        config["search"]  # noqa: B018 - only search runs can be replayed
    except UnicodeDecodeError as err:  # a binary file: the codec's byte offsets would not help the user
        raise ValueError(f"--config {str(path)!r} is not the config.json of an `fnas search` run (not text)") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"--config {str(path)!r} is not the config.json of an `fnas search` run (broken JSON at "
                         f"line {err.lineno}, column {err.colno}: {err.msg})") from err
    except (KeyError, TypeError) as err:
        raise ValueError(f"--config {str(path)!r} is not the config.json of an `fnas search` run (it needs the "
                         "'cli' and 'search' entries that `fnas search` writes)") from err
    given = given_options(argv)
    for key, value in saved.items():
        if key not in given and hasattr(args, key) and key not in ("config", "out", "quiet"):
            setattr(args, key, value)
    if "space" not in saved and "space" not in given:  # written before the chain space: a cell run
        args.space = (config["search"].get("space") or {}).get("type", "cell")
    return args


def _check_options(args: argparse.Namespace, world: int) -> None:
    """Reject option values (and combinations with torchrun) before anything is loaded or written."""
    check_positive(epochs=None if args.epochs == AUTO else args.epochs, batch_size=args.batch_size)
    if args.warmup_epochs != AUTO and args.warmup_epochs < 0:
        raise ValueError(f"--warmup-epochs must be >= 0 or 'auto', got {args.warmup_epochs}")
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


# --- data, space, config ---------------------------------------------------------------------


def _search_loaders(args: argparse.Namespace, ds: Dataset, gen: torch.Generator) -> tuple[DataLoader, DataLoader]:
    """Shuffled train and valid loaders of full batches, both drawing their order from ``gen``."""
    for split, name in ((ds.train, "train"), (ds.valid, "valid")):
        if split.num_samples < args.batch_size:
            raise ValueError(
                f"the {name} split has {split.num_samples} samples, fewer than --batch-size "
                f"{args.batch_size}; lower --batch-size (the search drops incomplete batches)"
            )
    return (make_loader(ds.train, args.batch_size, shuffle=True, gen=gen, drop_last=True),
            make_loader(ds.valid, args.batch_size, shuffle=True, gen=gen, drop_last=True))


def resolve_schedule(epochs: int | str, warmup_epochs: int | str, *, steps_per_epoch: int) -> Schedule:
    """``--epochs`` and ``--warmup-epochs`` with ``auto`` resolved (see ``fnas search --help``).

    ``epochs="auto"``: the fewest epochs with at least ``DEFAULTS["min_search_steps"]`` steps;
    ``warmup_epochs="auto"``: ``DEFAULTS["warmup_fraction"]`` of the epochs, rounded down.

    Raises:
        ValueError: the warm-up takes every epoch (the alphas would never train).
    """
    auto = epochs == AUTO
    if auto:
        epochs = max(1, math.ceil(DEFAULTS["min_search_steps"] / steps_per_epoch))
    warmup = int(DEFAULTS["warmup_fraction"] * epochs) if warmup_epochs == AUTO else warmup_epochs
    if warmup >= epochs:
        chosen = f" ('auto' chose {epochs})" if auto else ""
        raise ValueError(
            f"--warmup-epochs {warmup} is not fewer than the {epochs} search epochs{chosen}: the warm-up trains "
            f"only the weights, so the alphas would never train; lower --warmup-epochs (e.g. "
            f"{int(DEFAULTS['warmup_fraction'] * epochs)}, or 'auto') or raise --epochs"
        )
    return Schedule(epochs, warmup, steps_per_epoch)


def _search_config(args: argparse.Namespace, space: Space, schedule: Schedule) -> SearchConfig:
    """The search's config from the options; an unreachable budget fails here, before the run folder exists."""
    cfg = SearchConfig(
        space=space, lr=args.lr, lr_min=args.lr_min, momentum=args.momentum, weight_decay=args.weight_decay,
        grad_clip=args.grad_clip, arch_lr=args.arch_lr, arch_weight_decay=args.arch_weight_decay,
        hypergrad=args.hypergrad, unroll_steps=args.unroll_steps,
        warmup_steps=schedule.warmup_epochs * schedule.steps_per_epoch, penalty_mode=args.penalty_mode,
        penalty_weight=args.penalty_weight, max_params=args.max_params, max_macs=args.max_macs,
        max_sram_bytes=args.max_sram_bytes, beta_weight=args.beta_weight,
    )
    if cfg.penalty_metrics:
        check_budget(cfg, cfg.max_params, cfg.max_macs, cfg.max_sram_bytes)
    return cfg


# --- the run folder and the search -----------------------------------------------------------


def _run_folder(args: argparse.Namespace, cfg: SearchConfig, train_cfg: TrainConfig | None, ds: Dataset,
                extra: dict, *, world: int, lead: bool, log: Log) -> Path:
    """The resumed run's folder, or a new one holding ``config.json`` (written by the lead rank only)."""
    if args.resume is not None:
        if (args.resume / runs.CHECKPOINT).is_file():
            log(f"resuming {args.resume} from its checkpoint")
        else:
            log(f"resuming {args.resume}: it was stopped before its first checkpoint, so its search starts "
                "from the beginning")
        return args.resume
    stem = Path(str(args.data)).stem.replace(":", "-")
    out = args.out or Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if lead:
        check_out(out, "pass another --out")
        out.mkdir(parents=True, exist_ok=True)
        cli_args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                    if k not in ("command", "resume")}
        search = dict(dataclasses.asdict(cfg), space=space_to_dict(cfg.space))
        config = {
            "command": "search", "cli": cli_args, "search": search, **extra,
            "train": dataclasses.asdict(train_cfg) if train_cfg else None, "dataset": ds.summary(),
        }
        if world > 1:
            config["world_size"] = world
        runs.write_config(out, config)
        log(f"run folder: {out}")
    return out


def _compile_choice(args: argparse.Namespace, cfg: SearchConfig, ds: Dataset, schedule: Schedule, *,
                    device: torch.device, world: int) -> tuple[CompileDecision, str]:
    """``--compile`` / ``--no-compile``, or whether compiling pays off for the steps after the warm-up;
    and the compiled step's name in the compile cache."""
    n = args.batch_size
    train, valid = (ds.train.x[:n], ds.train.y[:n]), (ds.valid.x[:n], ds.valid.y[:n])
    decision = choose_compile(args.compile, cfg, train, valid, steps=schedule.steps - cfg.warmup_steps, device=device,
                              world=world)
    return decision, step_cache_key(cfg, train, valid)


def _search(args: argparse.Namespace, cfg: SearchConfig, schedule: Schedule, selection: str,
            train_loader: DataLoader, valid_loader: DataLoader, out: Path, *, device: torch.device, world: int,
            log: Log, compiled: CompileDecision, cache_key: str) -> SearchResult:
    """Run the search, checkpointing into ``out``; under torchrun, leave the process group after it."""
    cache = compile_cache_dir()

    def on_epoch(epoch: int, state: Any, record: dict) -> None:
        if compiled.compile and epoch >= schedule.warmup_epochs:  # the compiled step has run: the cache is warm
            mark_warm(cache, cache_key)
        rec = dict(record)  # its genotype is already the space's JSON dict
        runs.append_metrics(out, "search", rec)
        if args.quiet:
            costs = "".join(f", expected {k[len('expected_'):]} {v:,.0f}" for k, v in rec.items()
                            if k.startswith("expected_"))
            valid = f"{rec['valid_acc']:.3f}" if "valid_acc" in rec else "- (warm-up)"
            log(f"search epoch {epoch + 1}/{schedule.epochs}: train loss {rec['train_loss']:.3f} acc "
                f"{rec['train_acc']:.3f}, valid acc {valid}{costs}")

    checkpoint = out / runs.CHECKPOINT
    try:
        # a compiled step goes to the user's compile cache: a later run (or --resume) of it starts warm
        with warnings.catch_warnings(), use_compile_cache(cache) if compiled.compile else contextlib.nullcontext():
            warnings.simplefilter("ignore")  # budget misses are reported at the end, not as a warning
            # under torchrun: data parallel over the process group; only rank 0 writes and calls on_epoch
            return run_search(cfg, train_loader, valid_loader, epochs=schedule.epochs,
                              gen=torch.Generator().manual_seed(args.seed), device=device,
                              progress=not args.quiet, on_epoch=on_epoch, checkpoint=checkpoint,
                              checkpoint_every=args.checkpoint_every,
                              resume=checkpoint if args.resume is not None and checkpoint.is_file() else None,
                              selection=selection, compile=compiled.compile)
    finally:
        if world > 1:
            close_distributed()


def _save_search(out: Path, result: SearchResult, space: Space, cost: Cost, ds: Dataset, data_spec: str,
                 t_search: float) -> dict:
    """Write the genotype and the alphas; returns the summary so far (data, genotype, exact cost, search time:
    ``t_search`` includes the resumed runs', ``resumed_seconds`` says how much of it was theirs)."""
    runs.write_genotype(out, result.genotype, space, runs.data_record(ds, data_spec))  # fnas train rebuilds both
    runs.save_alphas(out, result.alpha_history)
    return {
        "data": ds.summary(),
        "genotype": space.genotype_to_dict(result.genotype),
        **runs.cost_summary(cost),
        "budget_misses": result.budget_misses,
        "search_seconds": round(t_search, 1),
        "selection_seconds": round(result.selection_seconds, 1),
        **({"resumed_seconds": round(result.resumed_seconds, 1)} if result.resumed_seconds else {}),
    }


# --- the report ------------------------------------------------------------------------------


def _report(out: Path, result: SearchResult, cost: Cost, cfg: SearchConfig, train_cfg: TrainConfig | None,
            ds: Dataset, summary: dict, t_search: float, plots: list[Path]) -> str:
    """What the search found: genotype, exact cost, budget, accuracy, and where the files are."""
    last = result.history[-1] if result.history else {}
    before = f", {result.resumed_seconds:.0f} s of them before the resume" if result.resumed_seconds else ""
    selected = summary["selection_seconds"]  # as saved, so this line and `fnas show` agree on whether to print it
    select = f", genotype selection {selected:.0f} s of it" if selected >= 1 else ""
    lines = ["", f"fnas search: done in {summary['total_seconds']:.0f} s (search {t_search:.0f} s{before}{select})",
             f"data      {ds.summary()}", "genotype", *genotype_lines(result.genotype, cfg.space),
             f"cost      {cost_text(cost)}"]
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
    lines += [f"run       {out}/", "plots", *plot_lines(plots),
              f"next      fnas show {out}  |  fnas export {out}" if train_cfg else f"next      fnas train {out}"]
    return "\n".join(lines)
