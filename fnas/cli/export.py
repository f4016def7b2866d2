"""``fnas export``: a trained run's network to ONNX and int8 QDQ ONNX, checked on the held-out test split."""

from __future__ import annotations

import argparse
import time

import torch

from fnas.app import runs
from fnas.app.export import OPSET, export_model, require_export_deps
from fnas.app.tflite import TFLITE_FILES, export_tflite, require_tflite_deps
from fnas.cost import genotype_cost
from fnas.cli.common import check_out, check_positive, export_text, set_threads
from fnas.data import Dataset, Split, load_dataset


def cmd_export(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``fnas export``; returns the exit code."""
    onnx, tflite = args.format in ("onnx", "all"), args.format in ("tflite", "all")
    if onnx:
        require_export_deps()
    if tflite:
        require_tflite_deps()
    check_positive(calib_samples=args.calib_samples)
    if args.opset < OPSET:
        raise ValueError(f"--opset must be >= {OPSET} (torch's ONNX exporter), got {args.opset}")
    set_threads(args)
    run = runs.open_run(args.run)
    model = runs.load_model(run)
    out = args.out or run.path
    if args.out is not None:
        check_out(out, "pass another --out")
    files = (runs.EXPORT_FILES if onnx else ()) + (TFLITE_FILES if tflite else ())
    existing = [f for f in files if (out / f).exists()]
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
    report = runs.read_export_report(out) if not onnx else {}
    if onnx:
        report = export_model(model, calib.x, ds.test.x, ds.test.y, out, opset=args.opset,
                              per_channel=not args.per_tensor, threads=args.threads)
    if tflite:
        predicted = genotype_cost(run.genotype, run.space).peak_sram_bytes_int8
        arena = genotype_cost(run.genotype, run.space, runtime="tflm").peak_sram_bytes_int8
        report["tflite"] = export_tflite(model, calib.x, ds.test.x, ds.test.y, out, int8_io=not args.float_io,
                                         predicted_sram_bytes=predicted, predicted_arena_bytes=arena)
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
    lines = [f"fnas export: done in {report['seconds']:.0f} s ({ds.test.num_samples} held-out test samples of {ds.name})"]
    if onnx:
        lines += [export_text(report, out),
                  f"          PyTorch test accuracy {report['pytorch_test_acc']:.4f}; int8 agrees with float32 on "
                  f"{100 * report['int8']['agreement_with_float32']:.1f}% of the test samples"]
    if tflite:
        lines.append(tflite_text(report["tflite"], out))
    lines.append(f"report    {out / runs.EXPORT_REPORT}")
    print("\n".join(lines), flush=True)
    return 0


def tflite_text(rep: dict, out) -> str:
    """The TFLite part of the export summary: files, accuracies on TFLite Micro, arena vs prediction."""
    arena = rep["arena"]
    models = {m: rep[m] for m in ("float32", "int8") if m in rep}
    sizes = ", ".join(f"{out / v['file']} {v['bytes']:,} B" for v in models.values() if "file" in v)
    accs = ", ".join(f"{k} {v['test_acc']:.4f}" for k, v in models.items() if "test_acc" in v)
    return (f"tflite    {sizes}; test accuracy on TFLite Micro: {accs}\n"
            f"          tensor arena {arena['total_bytes']:,} B (activations {arena['head_bytes']:,} B; fnas "
            f"predicted {arena.get('predicted_tflm_head_bytes', 0):,} B for TFLM, {arena['predicted_sram_bytes']:,} B "
            f"fused); C header {out / 'model_data.h'}")


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
