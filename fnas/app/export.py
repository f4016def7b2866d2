"""Deployment export: a trained network to ONNX (checked against PyTorch with onnxruntime) and to an
int8 post-training-quantised QDQ ONNX (onnxruntime static quantisation, calibrated on held-out data).

Needs the optional ``export`` extra (``pip install 'fnas[export]'``: onnx, onnxscript, onnxruntime).

The float model comes from ``torch.onnx.export(dynamo=True)`` (the torch.export-based exporter; the
TorchScript one is deprecated) at opset :data:`OPSET` with a dynamic batch axis. ``NetworkCnn``
converts activations to channels_last internally; that is a memory-format hint only, so the ONNX
graph is plain NCHW (``Conv``, ``BatchNormalization``, ``Relu``, ``MaxPool``, ``Concat``,
``ReduceMean``, ``Gemm``) and takes the same ``(N, C, T, 1)`` / ``(N, C, H, W)`` input as the module.

The int8 model is what microcontroller toolchains consume: BatchNorm folded into the convolutions
(``quant_pre_process``), then ``quantize_static`` in QDQ format with int8 weights (symmetric,
per output channel), int8 activations (asymmetric, MinMax calibration) and int32 biases. Both
graphs are compacted (no shape annotations or node names, shared equal initialisers, short
tensor names): the QDQ graph has about three times the nodes of the float one, and on a network
of a few thousand parameters its description, not the weights, is most of the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fnas.core.io import atomic_write_bytes
from fnas.data import MissingDependencyError

__all__ = ["OPSET", "export_model", "export_onnx", "onnx_logits", "quantize_int8", "require_export_deps",
           "size_comparison"]

OPSET = 18  # the lowest opset torch's dynamo exporter emits; onnxruntime >= 1.14 runs it
INPUT_NAME, OUTPUT_NAME = "x", "logits"


def require_export_deps() -> None:
    """Fail early, naming the install command, when the export extra is missing.

    Raises:
        ValueError: (a ``fnas.data.MissingDependencyError``) onnx, onnxscript or onnxruntime is missing.
    """
    missing = []
    for module in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) < (2, 5):
        raise MissingDependencyError(
            f"export needs torch >= 2.5 (its torch.export-based ONNX exporter); found {torch.__version__}"
        )
    if missing:
        raise MissingDependencyError(
            f"export needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
            "installed; install them with `pip install 'fnas[export]'` (or `pip install onnx "
            "onnxscript onnxruntime`)"
        )


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's chatter (torchvision notices, deprecation warnings) for clean CLI output."""
    names = ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir", "root")
    loggers = [logging.getLogger(n if n != "root" else None) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)  # sessions the quantiser opens: errors only
    except ImportError:
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | os.PathLike, *, opset: int = OPSET) -> None:
    """Export ``model`` (in eval mode) to an ONNX file with a dynamic batch axis.

    Args:
        model: the network; it is put in eval mode.
        example: an example input batch ``(N, C, T, 1)`` / ``(N, C, H, W)`` with ``N >= 2`` (a batch
            of 1 would let the exporter specialise the batch axis).
        path: the ``.onnx`` file to write.
        opset: ONNX opset (>= 18 for the dynamo exporter).

    Raises:
        ValueError: ``example`` is not a batch of at least two samples, or ``opset < 18``.
    """
    require_export_deps()
    if example.ndim != 4 or example.shape[0] < 2:
        raise ValueError(f"export_onnx needs an example batch of >= 2 samples (N, C, H, W), got {tuple(example.shape)}")
    if opset < 18:
        raise ValueError(f"opset must be >= 18 (torch's dynamo exporter), got {opset}")
    model.eval()
    batch = torch.export.Dim("batch", min=1)
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            model,
            (example.contiguous(),),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"x": {0: batch}},
            verbose=False,
        )
        program.save(os.fspath(path))
    _strip_metadata(path)


def _strip_metadata(path: str | os.PathLike) -> None:
    """Drop per-node debug metadata (stack traces with local paths, FX node dumps: a third of the
    file, and nothing a runtime reads), fold BatchNorms that follow a concat of convolutions, and
    compact the graph (:func:`_compact`)."""
    import onnx

    proto = onnx.load(os.fspath(path))
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    _fold_concat_bn(proto)
    _compact(proto)
    onnx.save(proto, os.fspath(path))


# the quantiser's tensor-name suffixes, shortened (a tiny network's int8 file is mostly such names)
_SHORT_NAMES = (("_DequantizeLinear_Output", "_dq"), ("_QuantizeLinear_Output", "_qo"),
                ("_QuantizeLinear_Input", "_qi"), ("_quantized", "_q"), ("_zero_point", "_zp"), ("_scale", "_s"))


def _compact(proto) -> None:
    """Shrink a model's graph description without changing what it computes.

    For a network of a few thousand parameters the graph, not the weights, is most of an ONNX
    file, and the int8 QDQ graph has about three times the nodes of the float one (a Quantize /
    Dequantize pair per activation, a Dequantize per weight and bias), each naming its tensors in
    full. So: drop the optional intermediate shape annotations (``value_info``; runtimes infer
    them) and node names, share identical initialisers (the quantiser writes a zero point per
    tensor, most of them equal; a shared one is named for its value, e.g. ``zeros_int8_16``), and
    shorten the quantiser's tensor-name suffixes. Graph inputs and outputs keep their names.
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    del graph.value_info[:]
    for node in graph.node:
        node.name = ""
    first: dict[tuple, Any] = {}
    alias: dict[str, str] = {}  # a removed duplicate -> the initialiser kept in its place
    for t in list(graph.initializer):
        value = numpy_helper.to_array(t)
        key = (t.data_type, tuple(t.dims), value.tobytes())
        if key in first:
            alias[t.name] = first[key].name
            graph.initializer.remove(t)
        else:
            first[key] = t
    by_name = {t.name: t for t in graph.initializer}
    shared = {}
    for k, name in enumerate(sorted(set(alias.values()))):
        t = by_name[name]
        zeros = not numpy_helper.to_array(t).any()
        label = "_".join(["zeros" if zeros else "shared", helper.tensor_dtype_to_np_dtype(t.data_type).name,
                          *map(str, t.dims)])
        shared[name] = label if zeros else f"{label}_{k}"
    kept = {v.name for v in list(graph.input) + list(graph.output)}
    names = {s for n in graph.node for s in list(n.input) + list(n.output) if s} | set(by_name)

    def short(name: str) -> str:
        if name in kept:
            return name
        if name in shared:
            return shared[name]
        for long, brief in _SHORT_NAMES:
            name = name.replace(long, brief)
        return name

    renamed = {s: short(s) for s in names - set(alias)}
    if len(set(renamed.values())) < len(renamed) or set(renamed.values()) & (kept - names):
        renamed = {s: s for s in names - set(alias)}  # a clash: keep the long names (still correct, only larger)
    for node in graph.node:
        for field in (node.input, node.output):
            for i, s in enumerate(field):
                if s:
                    field[i] = renamed[alias.get(s, s)]
    for t in graph.initializer:
        t.name = renamed[t.name]


def _fold_concat_bn(proto) -> int:
    """Fold ``BatchNormalization(Concat(Conv_1, ..., Conv_k))`` into the convolutions, exactly.

    The factorised-reduce skip (two strided 1x1 convs, concatenated, then BatchNorm) has this shape;
    the exporter's and onnxruntime's BN fusions only handle a BN right after one conv, so without
    this the int8 model would keep a float BatchNorm in every reduction cell. Per output channel
    ``c`` of conv ``k``: ``W'[c] = s[c] W[c]``, ``b'[c] = s[c] (b[c] - mean[c]) + beta[c]`` with
    ``s = gamma / sqrt(var + eps)``.

    Returns:
        The number of BatchNorms folded.
    """
    from onnx import numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    outputs = {o.name for o in graph.output}

    def array(name):
        return numpy_helper.to_array(inits[name]) if name in inits else None

    def set_array(name, value):
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))

    folded = 0
    for bn in [n for n in graph.node if n.op_type == "BatchNormalization"]:
        cat = producer.get(bn.input[0])
        if cat is None or cat.op_type != "Concat" or consumers.get(cat.output[0]) != 1:
            continue
        axis = next((a.i for a in cat.attribute if a.name == "axis"), None)
        convs = [producer.get(i) for i in cat.input]
        if axis != 1 or any(c is None or c.op_type != "Conv" or consumers.get(c.output[0]) != 1
                            or c.output[0] in outputs for c in convs):
            continue
        gamma, beta, mean, var = (array(i) for i in bn.input[1:5])
        weights = [array(c.input[1]) for c in convs]
        if any(v is None for v in (gamma, beta, mean, var, *weights)):
            continue
        if any(sum(1 for n in graph.node for i in n.input if i == c.input[1]) != 1 for c in convs):
            continue  # a shared weight cannot be rescaled for one user
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        scale = gamma / np.sqrt(var + eps)
        start = 0
        for conv, w in zip(convs, weights, strict=True):
            stop = start + w.shape[0]
            s = scale[start:stop]
            bias = array(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros(w.shape[0], np.float32)
            set_array(conv.input[1], w * s.reshape(-1, *([1] * (w.ndim - 1))))
            new_bias = s * (bias - mean[start:stop]) + beta[start:stop]
            if len(conv.input) > 2 and conv.input[2]:
                set_array(conv.input[2], new_bias)
            else:
                name = f"{conv.output[0]}_folded_bias"
                graph.initializer.append(numpy_helper.from_array(new_bias.astype(np.float32), name))
                inits[name] = graph.initializer[-1]
                if len(conv.input) == 2:
                    conv.input.append(name)
                else:
                    conv.input[2] = name
            start = stop
        if start != gamma.shape[0]:
            raise RuntimeError("concat channels do not match the BatchNorm; the graph is malformed")
        # the concat now produces what the BatchNorm produced
        cat.output[0] = bn.output[0]
        graph.node.remove(bn)
        folded += 1
    if folded:  # drop the folded BatchNorms' parameters (onnxruntime warns about unused ones)
        used = {i for n in graph.node for i in n.input}
        for t in [t for t in graph.initializer if t.name not in used and t.name not in outputs]:
            graph.initializer.remove(t)
    return folded


def _initializer_bytes(path: str | os.PathLike) -> int:
    """Bytes of the stored tensors (weights, biases, scales, zero points): what goes to flash."""
    import onnx
    from onnx import numpy_helper

    return int(sum(numpy_helper.to_array(t).nbytes for t in onnx.load(os.fspath(path)).graph.initializer))


def _session(path: str | os.PathLike, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only
    return ort.InferenceSession(os.fspath(path), sess_options=opts, providers=["CPUExecutionProvider"])


def onnx_logits(path: str | os.PathLike, x: np.ndarray, *, batch_size: int = 256, threads: int = 1) -> np.ndarray:
    """Run an ONNX classifier with onnxruntime on ``x`` in batches.

    Args:
        path: an ``.onnx`` file with one input and the logits as first output.
        x: float32 inputs ``(N, C, T, 1)`` / ``(N, C, H, W)``.
        batch_size: samples per run.
        threads: onnxruntime intra-op threads (0: its default).

    Returns:
        float32 logits ``(N, num_classes)``.
    """
    sess = _session(path, threads)
    name = sess.get_inputs()[0].name
    x = np.ascontiguousarray(x, dtype=np.float32)
    return np.concatenate([sess.run(None, {name: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)])


def _reader(x: np.ndarray, batch_size: int):
    from onnxruntime.quantization import CalibrationDataReader

    class _Batches(CalibrationDataReader):
        """Feeds calibration batches ``{"x": (B, C, H, W)}`` to the quantiser."""

        def __init__(self) -> None:
            self.rewind()

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter({INPUT_NAME: x[i : i + batch_size]} for i in range(0, len(x), batch_size))

    return _Batches()


def quantize_int8(
    fp32_path: str | os.PathLike,
    int8_path: str | os.PathLike,
    calib_x: np.ndarray,
    *,
    per_channel: bool = True,
    batch_size: int = 64,
) -> None:
    """Post-training static int8 quantisation to a QDQ ONNX model.

    BatchNorm is folded into the convolutions first (``quant_pre_process``: shape inference and
    onnxruntime's basic graph optimisations), then ``quantize_static`` calibrates activation
    ranges (MinMax) on ``calib_x`` and writes QuantizeLinear/DequantizeLinear pairs around int8
    weights (symmetric; per output channel unless ``per_channel=False``) and activations.

    Args:
        fp32_path: the float ONNX model.
        int8_path: where to write the quantised model.
        calib_x: calibration inputs, float32 ``(N, C, H, W)``; use held-out data that is not the
            test split, so the reported int8 accuracy stays honest.
        per_channel: per-output-channel weight scales (what CMSIS-NN / TFLite Micro use).
        batch_size: calibration batch size.

    Raises:
        ValueError: empty calibration data.
    """
    require_export_deps()
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calib_x) == 0:
        raise ValueError("quantize_int8 needs at least one calibration sample")
    calib_x = np.ascontiguousarray(calib_x, dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="fnas-quant-") as tmp, _quiet_exporter():
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(os.fspath(fp32_path), os.fspath(pre))
        quantize_static(
            os.fspath(pre),
            os.fspath(int8_path),
            _reader(calib_x, batch_size),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    proto = onnx.load(os.fspath(int8_path))
    _compact(proto)
    onnx.save(proto, os.fspath(int8_path))


def size_comparison(f32_bytes: int, f32_tensor_bytes: int, int8_bytes: int, int8_tensor_bytes: int) -> dict[str, Any]:
    """``export.json``'s ``size``: the int8 file and its tensors against the float32 ones, and why they differ.

    A file is its tensors (what a microcontroller stores) plus the graph that describes them. The
    int8 tensors are about a third of the float32 ones, but the QDQ graph has about three times
    the nodes, so for a network of a few thousand parameters the int8 file can be the larger one
    (measured in docs/cli.md, "Export sizes").
    """
    graph = {"float32": f32_bytes - f32_tensor_bytes, "int8": int8_bytes - int8_tensor_bytes}
    file_ratio = int8_bytes / f32_bytes
    return {
        "int8_file_vs_float32": round(file_ratio, 3),
        "int8_tensors_vs_float32": round(int8_tensor_bytes / f32_tensor_bytes, 3),
        "graph_bytes": graph,
        "note": (
            "file bytes = tensor bytes + graph bytes; the int8 QDQ graph (a Quantize/Dequantize pair per activation, "
            "a Dequantize per weight and bias) is larger than the float32 graph"
            + (", and here it outweighs the smaller int8 tensors: the tensors are what a device stores, the graph "
               "is compiled away by its toolchain" if file_ratio > 1 else "")
        ),
    }


def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(-1) == y).mean())


def export_model(
    model: nn.Module,
    calib_x: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    folder: str | os.PathLike,
    *,
    opset: int = OPSET,
    per_channel: bool = True,
    threads: int = 1,
) -> dict[str, Any]:
    """Export ``model`` to ``folder/model.onnx`` and ``folder/model_int8.onnx`` and check both.

    The float ONNX model is compared with PyTorch on ``test_x`` (max abs difference of the logits);
    the int8 model is calibrated on ``calib_x`` and both are scored on ``(test_x, test_y)``. The two
    files are written atomically (built in a temporary folder, then renamed into place).

    Args:
        model: the trained network (put in eval mode, on the CPU).
        calib_x: calibration inputs for the int8 model (held out from the test split).
        test_x, test_y: held-out inputs and labels for parity and accuracy.
        folder: an existing folder to write the two models into.
        opset: ONNX opset of the float model.
        per_channel: per-output-channel int8 weight scales.
        threads: onnxruntime intra-op threads.

    Returns:
        A JSON-ready report: opset, file names and sizes in bytes, the int8 file's size against the
        float32 one (``size``, :func:`size_comparison`), max abs difference, test accuracies
        (PyTorch, ONNX float32, ONNX int8), int8/float32 prediction agreement, sample counts.
    """
    require_export_deps()
    import onnx
    import onnxruntime

    folder = Path(folder)
    model = model.cpu().eval()
    with torch.no_grad():
        ref = torch.cat([model(test_x[i : i + 256]) for i in range(0, len(test_x), 256)]).numpy()
    x_np, y_np = test_x.numpy().astype(np.float32), test_y.numpy()
    with tempfile.TemporaryDirectory(prefix="fnas-export-") as tmp:
        fp32, int8 = Path(tmp) / "model.onnx", Path(tmp) / "model_int8.onnx"
        export_onnx(model, (test_x if len(test_x) >= 2 else calib_x)[:2], fp32, opset=opset)
        f32_logits = onnx_logits(fp32, x_np, threads=threads)
        quantize_int8(fp32, int8, calib_x.numpy(), per_channel=per_channel)
        q_logits = onnx_logits(int8, x_np, threads=threads)
        ops = sorted({n.op_type for n in onnx.load(os.fspath(int8)).graph.node})
        sizes = {p.name: p.stat().st_size for p in (fp32, int8)}
        weights = {p.name: _initializer_bytes(p) for p in (fp32, int8)}
        for p in (fp32, int8):
            atomic_write_bytes(folder / p.name, p.read_bytes())
    return {
        "opset": opset,
        "input": {"name": INPUT_NAME, "shape": ["N", *map(int, test_x.shape[1:])], "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "shape": ["N", int(ref.shape[1])]},
        "float32": {
            "file": "model.onnx",
            "bytes": sizes["model.onnx"],
            "weight_bytes": weights["model.onnx"],
            "max_abs_diff_vs_pytorch": float(np.abs(f32_logits - ref).max()),
            "test_acc": _accuracy(f32_logits, y_np),
        },
        "int8": {
            "file": "model_int8.onnx",
            "bytes": sizes["model_int8.onnx"],
            "weight_bytes": weights["model_int8.onnx"],
            "format": "QDQ (onnxruntime quantize_static): int8 weights "
            f"({'per-channel' if per_channel else 'per-tensor'}, symmetric), int8 activations "
            "(MinMax), int32 bias; BatchNorm folded",
            "ops": ops,
            "test_acc": _accuracy(q_logits, y_np),
            "agreement_with_float32": float((q_logits.argmax(-1) == f32_logits.argmax(-1)).mean()),
            "max_abs_logit_diff_vs_float32": float(np.abs(q_logits - f32_logits).max()),
        },
        "size": size_comparison(sizes["model.onnx"], weights["model.onnx"], sizes["model_int8.onnx"],
                                weights["model_int8.onnx"]),
        "pytorch_test_acc": _accuracy(ref, y_np),
        "test_samples": int(len(y_np)),
        "calibration_samples": int(len(calib_x)),
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
    }
