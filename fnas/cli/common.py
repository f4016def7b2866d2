"""What the ``fnas`` commands share: logging, threads and device, option checks, training the found
network into a run folder, and the text the commands print."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fnas.app import runs
from fnas.app.chain_plots import op_label
from fnas.app.plots import ALL_PLOT_FILES
from fnas.app.spaces import Space, is_chain
from fnas.app.train import TrainConfig, evaluate, train_model
from fnas.cost import Cost, genotype_cost
from fnas.data import Dataset, make_loader

TEST_BATCH = 256  # evaluation only: any size gives the same accuracy


def make_log(enabled: bool = True) -> Callable[[str], None]:
    """A ``log(msg)`` that prints and flushes, or does nothing (the non-lead ranks of a torchrun job).

    ``--quiet`` does not silence it: quiet swaps the progress bars for one log line per epoch.
    """
    if not enabled:
        return lambda msg: None

    def log(msg: str) -> None:
        print(msg, flush=True)

    return log


def set_threads(args: argparse.Namespace) -> None:
    """Apply ``--threads`` (0: torch's default).

    Raises:
        ValueError: a negative count.
    """
    if getattr(args, "threads", 0):
        if args.threads < 0:
            raise ValueError(f"--threads must be >= 0, got {args.threads}")
        torch.set_num_threads(args.threads)


def pick_device(spec: str) -> torch.device:
    """The ``--device``, checked to exist here.

    Raises:
        ValueError: not a device, or CUDA asked for but not available.
    """
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise ValueError(f"--device {spec!r} is not a device; use 'cpu', 'cuda' or 'cuda:N'") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {spec} but CUDA is not available; use --device cpu")
    return device


def check_positive(**values: Any) -> None:
    """Every given (not ``None``) option must be >= 1; keyword names are option names.

    Raises:
        ValueError: naming the first option that is not.
    """
    for name, value in values.items():
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")


def check_out(out: Path, hint: str) -> None:
    """``out`` must be new or an empty folder; nothing in it is ever overwritten.

    Raises:
        ValueError: ``out`` is a file or a non-empty folder; ``hint`` says what to do instead.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file, not a folder; {hint}")
    if out.is_dir() and any(out.iterdir()):
        if (out / runs.CONFIG).is_file() and not (out / runs.CHECKPOINT).is_file():
            hint = (f"it holds a search stopped before its first checkpoint: continue it with `fnas search "
                    f"--resume {out}` (it starts from the beginning), or {hint}")
        raise ValueError(f"run folder {str(out)!r} exists and is not empty; {hint}")


def absolute_data_spec(spec: str) -> str:
    """An .npz path made absolute, so that a replayed config finds it from any folder."""
    spec = str(spec)
    if spec.strip().lower().endswith(".npz"):
        return str(Path(spec.strip()).expanduser().resolve())
    return spec


def train_and_test(
    model: nn.Module,
    ds: Dataset,
    out: Path,
    *,
    cfg: TrainConfig,
    batch_size: int,
    gen: torch.Generator,
    device: torch.device,
    quiet: bool,
    log: Callable[[str], None],
) -> dict:
    """Train the found network on train+valid into run folder ``out`` and test it on the test split.

    Appends a ``train`` record per epoch to ``metrics.jsonl`` (and logs it when ``quiet``, where no
    progress bar shows it) and writes ``model.pt``.

    Returns:
        The ``summary.json`` entries: test accuracy and loss, test sample count, the recipe.
    """
    def on_epoch(epoch: int, record: dict) -> None:
        runs.append_metrics(out, "train", record)
        if quiet:
            log(f"train epoch {epoch + 1}/{cfg.epochs}: loss {record['train_loss']:.3f} "
                f"acc {record['train_acc']:.3f}")

    train_loader = make_loader(ds.train_valid(), batch_size, shuffle=True, gen=gen)
    test_loader = make_loader(ds.test, TEST_BATCH, shuffle=False)
    train_model(model, train_loader, cfg=cfg, device=device, progress=not quiet, on_epoch=on_epoch)
    test_loss, test_acc = evaluate(model, test_loader, device=device)
    runs.save_model(out, model)
    return {"test_acc": test_acc, "test_loss": test_loss, "test_samples": ds.test.num_samples,
            "train": dataclasses.asdict(cfg)}


# --- the text the commands print --------------------------------------------------------------


def _cell_text(cell, concat) -> str:
    nodes = ", ".join(f"n{j} = {op}({'in' if i == 0 else f'n{i}'})" for j, (op, i) in enumerate(cell, start=1))
    return f"{nodes}; out = concat({', '.join(f'n{k}' for k in concat)})"


def genotype_lines(genotype: Any, space: Space | None = None) -> list[str]:
    """A cell genotype's two cells, one line each, as ``n1 = op(in), ...; out = concat(...)``; a chain
    genotype's blocks, one line each (see :func:`chain_lines`)."""
    if space is not None and is_chain(space):
        return chain_lines(genotype, space)
    return [
        f"  normal  {_cell_text(genotype.normal, genotype.normal_concat)}",
        f"  reduce  {_cell_text(genotype.reduce, genotype.reduce_concat)}",
    ]


def chain_lines(genotype: Any, space: Space) -> list[str]:
    """One line per part of a chain network: input BN, each block (op, kernel, dilation, width, stride), the head,
    with its exact parameters, MACs and peak live activations (int8 bytes, batch 1)."""
    cost = genotype_cost(genotype, space)

    def peak(prefix: str) -> int:
        return max((live for step, live in cost.schedule if step.startswith(prefix)), default=0)

    def line(name: str, what: str, key: str, prefix: str) -> str:
        p, m = cost.parts.get(key, (0, 0))
        sram = peak(prefix)
        return f"  {name:<9}{what:<24}{p:>9,} params {m:>12,} MACs" + (f" {sram:>9,} B SRAM" if sram else "")

    lines = []
    if "input_bn" in cost.parts:
        lines.append(line("input", f"BatchNorm, {space.in_channels} ch", "input_bn", "input_bn"))
    for b, ((op, width), stride) in enumerate(zip(genotype.blocks, space.strides)):
        key = f"blocks.{b}.{op}"
        what = "identity (skipped)" if op == "identity" else f"{op_label(op)}, width {width}"
        lines.append(line(f"block {b}", what + (f", stride {stride}" if stride > 1 else ""), key, key))
    lines.append(line("head", f"pool, linear {genotype.blocks[-1][1]}->{space.num_classes}", "head", "head"))
    return lines


def space_text(space: Space) -> str:
    """The searched network's skeleton on one line."""
    shape = f"input {space.in_channels} x {tuple(space.input_shape)}, {space.num_classes} classes"
    if is_chain(space):
        strides = f", strides {list(space.strides)}" if any(s > 1 for s in space.strides) else ""
        return (f"chain of {space.num_blocks} blocks, max widths {list(space.widths)}{strides}, kernels "
                f"{list(space.kernels)}, dilations {list(space.dilations)}, ops {'/'.join(space.op_types)}"
                f"{' + identity' if space.identity else ''}, width policy {space.width_policy}, {shape}")
    return (f"C={space.C}, {space.layers} cells (reductions at {list(space.reduction_layers)}), {space.nodes} nodes, "
            f"multiplier {space.multiplier}, stem {space.stem_multiplier}*C, {shape}")


def cost_text(cost: Cost) -> str:
    """Parameters, MACs and peak SRAM on one line."""
    return (
        f"{cost.params:,} parameters, {cost.macs:,} MACs, peak SRAM {cost.peak_sram_bytes_int8:,} B int8 / "
        f"{cost.peak_sram_bytes_f32:,} B float32 (at {cost.peak_at}; batch 1)"
    )


def plot_lines(paths: list[Path]) -> list[str]:
    """One line per plot file: where it is and what it shows."""
    return [f"  {p}  ({ALL_PLOT_FILES.get(p.name, '')})" for p in paths]


def export_text(rep: dict, folder: Path) -> str:
    """The two exported models of an ``export.json`` report: files, sizes, accuracies."""
    f32, i8 = rep["float32"], rep["int8"]
    return (
        f"export    {folder / f32['file']}: ONNX opset {rep['opset']}, {f32['bytes']:,} B, test accuracy "
        f"{f32['test_acc']:.4f}, max abs diff vs PyTorch {f32['max_abs_diff_vs_pytorch']:.2e}\n"
        f"          {folder / i8['file']}: int8 QDQ, {i8['bytes']:,} B ({i8['weight_bytes']:,} B of tensors), "
        f"test accuracy {i8['test_acc']:.4f} (float32 {f32['test_acc']:.4f}), calibrated on "
        f"{rep.get('calibration_samples', '?')} {rep.get('calibration_split', 'valid')} samples"
    )
