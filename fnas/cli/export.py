"""``fnas export``: a trained run's network to ONNX and int8 QDQ ONNX, checked on the held-out test split."""

from __future__ import annotations

import argparse
import time

import torch

from fnas.app import runs
from fnas.app.export import OPSET, export_model, require_export_deps
from fnas.cli.common import check_out, check_positive, export_text, set_threads
from fnas.data import Dataset, Split, load_dataset


def cmd_export(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``fnas export``; returns the exit code."""
    require_export_deps()
    check_positive(calib_samples=args.calib_samples)
    if args.opset < OPSET:
        raise ValueError(f"--opset must be >= {OPSET} (torch's ONNX exporter), got {args.opset}")
    set_threads(args)
    run = runs.open_run(args.run)
    model = runs.load_model(run)
    out = args.out or run.path
    if args.out is not None:
        check_out(out, "pass another --out")
    existing = [f for f in runs.EXPORT_FILES if (out / f).exists()]
    if existing:
        raise ValueError(
            f"{str(out)!r} already holds {', '.join(existing)} from an earlier export; pass --out NEW_FOLDER "
            "to export again without overwriting them"
        )
    ds = load_dataset(args.data or run.data)
    runs.check_fits(ds, run.space, f"run {str(run.path)!r}")
    calib = _calibration(ds, args.calib_split, args.calib_samples, args.seed)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    report = export_model(model, calib.x, ds.test.x, ds.test.y, out, opset=args.opset,
                          per_channel=not args.per_tensor, threads=args.threads)
    report.update(
        run=str(run.path.resolve()),
        data=ds.summary(),
        class_names=list(ds.class_names),
        calibration_split=args.calib_split,
        preprocessing=_preprocessing(ds),
        input_mean=list(ds.input_mean) if ds.input_mean is not None else None,
        input_std=list(ds.input_std) if ds.input_std is not None else None,
        seconds=round(time.time() - t0, 1),
    )
    runs.write_export_report(out, report)
    print("\n".join([
        f"fnas export: done in {report['seconds']:.0f} s ({ds.test.num_samples} held-out test samples of {ds.name})",
        export_text(report, out),
        f"          PyTorch test accuracy {report['pytorch_test_acc']:.4f}; int8 agrees with float32 on "
        f"{100 * report['int8']['agreement_with_float32']:.1f}% of the test samples",
        f"report    {out / runs.EXPORT_REPORT}",
    ]), flush=True)
    return 0


def _calibration(ds: Dataset, split: str, samples: int, seed: int) -> Split:
    """The int8 calibration data: at most ``samples`` of the valid (or train) split, a seeded subset."""
    calib = ds.valid if split == "valid" else ds.train
    if calib.num_samples > samples:
        pick = torch.randperm(calib.num_samples, generator=torch.Generator().manual_seed(seed))
        calib = Split(calib.x[pick[:samples]], calib.y[pick[:samples]])
    return calib


def _preprocessing(ds: Dataset) -> str:
    """How a device must prepare new inputs for the exported models."""
    if ds.input_mean is not None:
        return ("standardise each input channel c as (x[c] - input_mean[c]) / input_std[c] (the training "
                "split's statistics, as fnas.data.load_dataset does) before feeding the models")
    return ("none: the models take the data as stored (UCR sets the archive z-normalised per series: "
            "z-normalise each new series the same way)")
