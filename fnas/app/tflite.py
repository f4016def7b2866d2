"""TFLite (LiteRT) export for microcontrollers: a trained network to a float and a full-int8 ``.tflite``,
run on TensorFlow Lite Micro's own interpreter, with the tensor arena it needs and a C header.

Needs the optional ``tflite`` extra (``pip install 'fnas[tflite]'``: litert-torch, tflite-micro).

Path: ``torch.export`` of the network behind an NHWC input (what TFLite kernels take), a few exact
FX rewrites for ops the converter would otherwise lower to StableHLO ops TFLM lacks (strided
pools with PyTorch's symmetric padding; the head's mean), ``litert_torch.convert`` to a float
flatbuffer (BatchNorm folded), then ai-edge-quantizer's static int8 recipe (int8 activations per
tensor, int8 weights per output channel, int32 bias) calibrated on held-out samples. The int8
model is checked to be fully integer and is run sample by sample on TFLM (reference kernels),
whose recording allocator reports the arena it used. ``docs/tflite.md`` has the deployment path.
"""

from __future__ import annotations

import contextlib
import operator
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from fnas.app.c_header import write_c_header
from fnas.cost import TFLM_ALIGN, aligned, greedy_arena_bytes
from fnas.data import MissingDependencyError
from fnas.core.io import atomic_write_bytes

__all__ = [
    "FLOAT_FILE",
    "HEADER_FILE",
    "INT8_FILE",
    "TFLITE_FILES",
    "convert_float",
    "export_tflite",
    "live_tensor_peak_bytes",
    "lower_for_tflm",
    "min_arena_bytes",
    "planned_arena_bytes",
    "quantize_full_int8",
    "require_tflite_deps",
    "tflite_ops",
    "tflm_arena",
    "tflm_logits",
    "write_c_header",
]

FLOAT_FILE, INT8_FILE, HEADER_FILE = "model.tflite", "model_int8.tflite", "model_data.h"
TFLITE_FILES = (FLOAT_FILE, INT8_FILE, HEADER_FILE)
HOST_ARENA_BYTES = 32 << 20  # the measuring interpreter's arena; the report says what is really used
_TYPE_BYTES = {"FLOAT32": 4, "INT32": 4, "INT8": 1, "UINT8": 1, "INT16": 2, "INT64": 8, "BOOL": 1, "FLOAT16": 2}


def require_tflite_deps() -> None:
    """Fail early, naming the install command, when the tflite extra is missing.

    Raises:
        ValueError: (a ``fnas.data.MissingDependencyError``) litert-torch, ai-edge-quantizer or
            tflite-micro is missing.
    """

    missing = []
    for module, package in (("litert_torch", "litert-torch"), ("ai_edge_quantizer", "ai-edge-quantizer"),
                            ("tflite_micro", "tflite-micro")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise MissingDependencyError(
            f"TFLite export needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
            "installed; install them with `pip install 'fnas[tflite]'` (or `pip install litert-torch "
            "tflite-micro`; litert-torch brings ai-edge-quantizer)"
        )


@contextlib.contextmanager
def _captured_fds() -> Iterator[list[str]]:
    """Redirect the process' stdout and stderr (file descriptors, so C++ prints too) into a list."""
    out: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield out
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            out.append(sink.read().decode(errors="replace"))


# --- PyTorch -> float TFLite -----------------------------------------------------------------


class _NhwcInput(nn.Module):
    """Takes ``(N, H, W, C)`` (TFLite's layout) and hands ``(N, C, H, W)`` to the wrapped network."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.permute(0, 3, 1, 2))


def _pool_args(node) -> tuple[list[int], list[int], list[int]]:
    args = list(node.args) + [None] * 6
    kernel = list(args[1])
    stride = list(args[2] or kernel)
    padding = list(args[3] or [0, 0])
    return kernel, stride, padding


def _rewrite_strided_pool(gm: torch.fx.GraphModule, node) -> bool:
    """``pool(x, k, s, k // 2)`` -> ``pool(x, k, 1, k // 2)[..., ::s, ::s]``, exactly.

    PyTorch pads symmetrically; TFLite's SAME padding puts the odd pad at the end, so a strided
    'same' pool has no TFLite equivalent and would lower to StableHLO ops. Windows centred on
    every s-th position of the stride-1 pool are the strided pool's windows (odd k), including
    which positions ``count_include_pad=False`` leaves out.
    """
    aten = torch.ops.aten
    kernel, stride, padding = _pool_args(node)
    is_avg = node.target is aten.avg_pool2d.default
    rest = list(node.args[4:])
    dilation = [1, 1] if is_avg or not rest else list(rest[0])
    ceil_mode = (rest[0] if is_avg else (rest[1] if len(rest) > 1 else False)) if rest else False
    if stride == [1, 1] or dilation != [1, 1] or ceil_mode:
        return False
    if any(k % 2 == 0 or p != k // 2 for k, p in zip(kernel, padding, strict=True)):
        return False
    with_indices = node.target is aten.max_pool2d_with_indices.default
    if with_indices and any(u.target is not operator.getitem or u.args[1] != 0 for u in node.users):
        return False  # the indices are used; leave it to the converter
    args = list(node.args)
    args[2] = [1, 1]
    graph = gm.graph
    with graph.inserting_before(node):
        pooled = graph.call_function(node.target, tuple(args), dict(node.kwargs))
        out = graph.call_function(operator.getitem, (pooled, 0)) if with_indices else pooled
        for dim, s in ((2, stride[0]), (3, stride[1])):
            if s > 1:
                out = graph.call_function(aten.slice.Tensor, (out, dim, 0, None, s))
    if with_indices:
        for user in list(node.users):
            user.replace_all_uses_with(out)
            graph.erase_node(user)
    else:
        node.replace_all_uses_with(out)
    graph.erase_node(node)
    return True


def _rewrite_spatial_mean(gm: torch.fx.GraphModule, node) -> bool:
    """``x.mean((2, 3))`` -> ``avg_pool2d(x, (H, W)).view(N, C)``: one AVERAGE_POOL_2D in NHWC
    instead of a TRANSPOSE of the last feature map (a second copy of it in the arena) and a MEAN."""
    aten = torch.ops.aten
    x, dims = node.args[0], node.args[1]
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    shape = x.meta["val"].shape if "val" in x.meta else None
    if shape is None or len(shape) != 4 or sorted(d % 4 for d in dims) != [2, 3] or keepdim:
        return False
    with gm.graph.inserting_before(node):
        pooled = gm.graph.call_function(aten.avg_pool2d.default, (x, [shape[2], shape[3]], [shape[2], shape[3]]))
        out = gm.graph.call_function(aten.view.default, (pooled, [shape[0], shape[1]]))
    node.replace_all_uses_with(out)
    gm.graph.erase_node(node)
    return True


def lower_for_tflm(model: nn.Module, example_nhwc: torch.Tensor) -> torch.fx.GraphModule:
    """The network as an exported graph with an NHWC input and TFLM-friendly (exact) rewrites.

    Args:
        model: the network (eval mode), taking ``(N, C, H, W)``.
        example_nhwc: an example input ``(1, H, W, C)``.

    Returns:
        A ``GraphModule`` with the same logits as ``model`` on ``x.permute(0, 3, 1, 2)``.

    Raises:
        ValueError: ``torch.export`` cannot capture the network.
    """
    aten = torch.ops.aten
    try:
        gm = torch.export.export(_NhwcInput(model.eval()), (example_nhwc,)).module()
    except Exception as exc:  # torch.export raises many types; the message says which op
        raise ValueError(
            f"torch.export could not capture the network for TFLite ({type(exc).__name__}: {exc}); TFLite "
            "export needs a graph without data-dependent control flow"
        ) from exc
    pools = (aten.avg_pool2d.default, aten.max_pool2d.default, aten.max_pool2d_with_indices.default)
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target in pools:
            _rewrite_strided_pool(gm, node)
        elif node.target is aten.mean.dim:
            _rewrite_spatial_mean(gm, node)
    gm.graph.lint()
    gm.recompile()
    return gm


def convert_float(model: nn.Module, example_nhwc: torch.Tensor) -> bytes:
    """The float32 ``.tflite`` flatbuffer of ``model`` (batch 1, NHWC input, BatchNorm folded).

    Args:
        model: the network, taking ``(N, C, H, W)``.
        example_nhwc: ``(1, H, W, C)`` float32.

    Raises:
        ValueError: the converter fails, or leaves an op TFLite Micro has no kernel for.
    """
    require_tflite_deps()
    import litert_torch

    gm = lower_for_tflm(model, example_nhwc)
    litert_torch.config.show_progress = False
    error = None
    with _captured_fds() as log, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            data = litert_torch.convert(gm, (example_nhwc,)).model_content()
        except Exception as exc:  # the converter's errors are of many types; name them at the boundary
            error = exc
    if error is not None:
        tail = "".join(log).strip()[-800:]
        raise ValueError(
            f"litert-torch could not convert the network ({type(error).__name__}: {error}); converter log tail:\n{tail}"
        ) from error
    unsupported = sorted({op for op in tflite_ops(data) if op.startswith(("STABLEHLO_", "CUSTOM", "FLEX"))})
    if unsupported:
        raise ValueError(
            f"the converted model has {', '.join(unsupported)}, which TensorFlow Lite Micro cannot run; it comes "
            "from an op the TFLite converter has no builtin for (e.g. a strided pool with even kernel or "
            "uneven padding, a dilated pool); use primitives made of conv / 'same' pools with odd kernels / "
            "concat / mean / linear, or export to ONNX instead (`fnas export`)"
        )
    return bytes(data)


# --- float TFLite -> full-integer TFLite -----------------------------------------------------


def quantize_full_int8(float_tflite: bytes, calib_nhwc: np.ndarray, *, int8_io: bool = True) -> bytes:
    """Full-integer post-training quantisation of a float ``.tflite`` (ai-edge-quantizer, static).

    Activations int8 (per tensor, asymmetric, min/max over ``calib_nhwc``), weights int8 (symmetric,
    per output channel), biases int32. With ``int8_io=False`` the model keeps float32 input and
    output (a QUANTIZE and a DEQUANTIZE op at the ends); everything between stays integer.

    Args:
        float_tflite: the float flatbuffer (batch 1).
        calib_nhwc: calibration inputs ``(N, H, W, C)`` float32, held out from the test split.
        int8_io: int8 input and output tensors (what a microcontroller feeds directly).

    Raises:
        ValueError: no calibration samples, or an op the quantiser left in float.
    """
    require_tflite_deps()
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import qtyping, quantizer, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    if len(calib_nhwc) == 0:
        raise ValueError("quantize_full_int8 needs at least one calibration sample")
    manager = recipe_manager.RecipeManager()
    manager.add_static_config(".*", qtyping.TFLOperationName.ALL_SUPPORTED, activation_num_bits=8,
                              weight_num_bits=8)
    if not int8_io:
        for op in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
            manager.add_quantization_config(".*", op, algorithm_key=AlgorithmName.NO_QUANTIZE)
    with _captured_fds(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        signature, spec = next(iter(Interpreter(model_content=float_tflite).get_signature_list().items()))
        (name,) = spec["inputs"]
        calib = np.ascontiguousarray(calib_nhwc, dtype=np.float32)
        data = {signature: [{name: calib[i : i + 1]} for i in range(len(calib))]}
        q = quantizer.Quantizer(float_tflite, manager.get_quantization_recipe())
        result = q.quantize(q.calibrate(data, num_threads=1), enable_progress_report=False)
    model = bytes(result.quantized_model)
    float_ops = _float_ops(model, allow_io=not int8_io)
    if float_ops:
        raise ValueError(
            f"the quantiser left {', '.join(float_ops)} in float32, so the model is not fully integer; "
            "ai-edge-quantizer has no int8 kernel for it: replace the op in the network"
        )
    return model


# --- reading a flatbuffer --------------------------------------------------------------------


def _model(tflite_bytes: bytes):
    from tflite_micro.python.tflite_micro import runtime
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    model = runtime.convert_bytearray_to_object(bytearray(tflite_bytes))
    ops = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    codes = [ops.get(runtime.get_builtin_code_from_operator_code(c), "CUSTOM") for c in model.operatorCodes]
    return model, codes, types


def tflite_ops(tflite_bytes: bytes) -> list[str]:
    """The builtin operator names of the main subgraph, in execution order."""
    model, codes, _ = _model(tflite_bytes)
    return [codes[op.opcodeIndex] for op in model.subgraphs[0].operators]


def _is_constant(model, tensor) -> bool:
    buffer = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
    return buffer is not None and (buffer.data is not None and len(buffer.data) > 0 or (buffer.size or 0) > 0)


def _float_ops(tflite_bytes: bytes, *, allow_io: bool) -> list[str]:
    """Ops with a float activation tensor (the boundary QUANTIZE / DEQUANTIZE when ``allow_io``)."""
    model, codes, types = _model(tflite_bytes)
    graph = model.subgraphs[0]
    found = set()
    for op in graph.operators:
        name = codes[op.opcodeIndex]
        if allow_io and (
            (name == "QUANTIZE" and set(op.inputs) <= set(graph.inputs))
            or (name == "DEQUANTIZE" and set(op.outputs) <= set(graph.outputs))
        ):
            continue
        tensors = [graph.tensors[i] for i in [*op.inputs, *op.outputs] if i >= 0]
        if any(types[t.type] == "FLOAT32" and not _is_constant(model, t) for t in tensors):
            found.add(name)
    return sorted(found)


def _activation_buffers(tflite_bytes: bytes) -> tuple[list[tuple[int, int, int]], int]:
    """``(bytes, first op, last op)`` of every non-constant tensor in index order (TFLM's lifetime
    rule: the model input from op 0, a tensor from the op writing it to the last op reading it, the
    model output to the last op), and the number of ops."""
    model, _, types = _model(tflite_bytes)
    graph = model.subgraphs[0]
    n_ops = len(graph.operators)
    first: dict[int, int] = {int(i): 0 for i in graph.inputs}
    last: dict[int, int] = {int(i): n_ops - 1 for i in graph.outputs}
    for step, op in enumerate(graph.operators):
        for i in op.outputs:
            first.setdefault(int(i), step)
            last[int(i)] = max(last.get(int(i), step), step)
        for i in op.inputs:
            if i >= 0 and not _is_constant(model, graph.tensors[i]):
                last[int(i)] = max(last.get(int(i), step), step)
    out = []
    for i in sorted(set(first) | set(last)):
        t = graph.tensors[i]
        nbytes = int(np.prod(t.shape)) * _TYPE_BYTES.get(types[t.type], 4)
        out.append((nbytes, first.get(i, 0), last.get(i, first.get(i, 0))))
    return out, n_ops


def live_tensor_peak_bytes(tflite_bytes: bytes) -> int:
    """The largest sum, over the ops in execution order, of the activation buffers alive at that op.

    A tensor is alive from the op that writes it (the start, for the model input) to the last op
    that reads it (the end, for the output); every op's inputs and output are alive together (no
    TFLM kernel here works in place); each buffer is rounded up to 16 bytes. A lower bound on the
    planned ("head") part of TFLM's arena; :func:`planned_arena_bytes` is the plan itself.
    """
    buffers, n_ops = _activation_buffers(tflite_bytes)
    sizes = [(aligned(b), f, l) for b, f, l in buffers]
    return max((sum(s for s, f, l in sizes if f <= step <= l) for step in range(n_ops)), default=0)


def planned_arena_bytes(tflite_bytes: bytes) -> int:
    """The activation arena TFLM's greedy memory planner lays this model's tensors out in.

    :func:`fnas.cost.greedy_arena_bytes` on the flatbuffer's activation tensors (index order,
    TFLM's lifetimes). With kernels that ask for no scratch buffers (TFLM's reference kernels
    here) it equals the measured ``head`` of :func:`tflm_arena`.
    """
    buffers, _ = _activation_buffers(tflite_bytes)
    return greedy_arena_bytes(buffers)


# --- running on TensorFlow Lite Micro --------------------------------------------------------


def _interpreter(tflite_bytes: bytes, arena_bytes: int):
    from tflite_micro.python.tflite_micro import runtime

    return runtime.Interpreter.from_bytes(bytes(tflite_bytes), arena_size=int(arena_bytes))


def tflm_logits(tflite_bytes: bytes, x_nhwc: np.ndarray, *, arena_bytes: int = HOST_ARENA_BYTES) -> np.ndarray:
    """Run a batch-1 ``.tflite`` classifier on TFLM one sample at a time.

    Float inputs are quantised with the input tensor's scale and zero point when it is int8, and
    int8 outputs dequantised, so callers see float in and float logits out either way.

    Args:
        tflite_bytes: the flatbuffer.
        x_nhwc: float32 inputs ``(N, H, W, C)``.
        arena_bytes: the tensor arena the interpreter is given.

    Returns:
        float32 logits ``(N, num_classes)``.
    """
    require_tflite_deps()
    it = _interpreter(tflite_bytes, arena_bytes)
    din, dout = it.get_input_details(0), it.get_output_details(0)
    logits = []
    for sample in np.asarray(x_nhwc, dtype=np.float32):
        x = sample[None]
        if din["dtype"] == np.int8:
            (scale,), (zero,) = din["quantization_parameters"]["scales"], din["quantization_parameters"]["zero_points"]
            x = np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)
        it.set_input(x, 0)
        it.invoke()
        y = np.asarray(it.get_output(0))
        if dout["dtype"] == np.int8:
            (scale,), (zero,) = dout["quantization_parameters"]["scales"], dout["quantization_parameters"]["zero_points"]
            y = (y.astype(np.float32) - zero) * scale
        logits.append(y.reshape(-1).astype(np.float32))
    return np.stack(logits)


_ARENA_LINE = re.compile(r"Arena allocation (total|head|tail) (\d+) bytes")


def tflm_arena(tflite_bytes: bytes) -> dict[str, int]:
    """The tensor arena TFLM's recording allocator used for one inference.

    Returns:
        ``total_bytes`` (what to reserve), ``head_bytes`` (the planned, non-persistent part:
        activations and kernel scratch buffers) and ``tail_bytes`` (persistent: tensor and node
        structs, quantisation parameters, kernels' persistent buffers), all as measured on this
        host (64-bit; the tail is smaller on a 32-bit microcontroller).

    Raises:
        RuntimeError: TFLM did not report its allocations.
    """
    require_tflite_deps()
    it = _interpreter(tflite_bytes, HOST_ARENA_BYTES)
    d = it.get_input_details(0)
    it.set_input(np.zeros(d["shape"], dtype=d["dtype"]), 0)
    it.invoke()
    with _captured_fds() as log:
        it.print_allocations()
    found = {k: int(v) for k, v in _ARENA_LINE.findall("".join(log))}
    if set(found) != {"total", "head", "tail"}:
        raise RuntimeError(f"TFLM's print_allocations() gave no arena summary: {''.join(log)[:500]!r}")
    return {f"{k}_bytes": found[k] for k in ("total", "head", "tail")}


def _runs_in(tflite_bytes: bytes, arena_bytes: int) -> bool:
    """Whether one inference succeeds with exactly ``arena_bytes`` of arena."""
    try:
        with _captured_fds():
            tflm_logits(tflite_bytes, np.zeros(_input_shape(tflite_bytes)[1:], np.float32)[None], arena_bytes=arena_bytes)
    except (RuntimeError, ValueError):
        return False
    return True


def min_arena_bytes(tflite_bytes: bytes, *, start: int = 0) -> int:
    """The smallest arena one inference runs in on this host (bisection from ``start``).

    It exceeds the recorded total by the allocator objects TFLM places in the arena itself
    (about 1 KiB on a 64-bit host).
    """
    lo, hi = max(int(start), 1) - 1, max(2 * int(start), 4096)
    while not _runs_in(tflite_bytes, hi):
        lo, hi = hi, 2 * hi
        if hi > HOST_ARENA_BYTES:
            raise RuntimeError(f"the model does not run in a {HOST_ARENA_BYTES}-byte arena")
    while hi - lo > TFLM_ALIGN:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _runs_in(tflite_bytes, mid) else (mid, hi)
    return aligned(hi)


def _input_shape(tflite_bytes: bytes) -> list[int]:
    model, _, _ = _model(tflite_bytes)
    graph = model.subgraphs[0]
    return [int(v) for v in graph.tensors[graph.inputs[0]].shape]


# --- the whole export ------------------------------------------------------------------------


def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(-1) == y).mean())


def _io(tflite_bytes: bytes) -> dict[str, Any]:
    it = _interpreter(tflite_bytes, HOST_ARENA_BYTES)
    out = {}
    for key, d in (("input", it.get_input_details(0)), ("output", it.get_output_details(0))):
        q = d["quantization_parameters"]
        entry = {"shape": [int(v) for v in d["shape"]], "dtype": np.dtype(d["dtype"]).name}
        if d["dtype"] == np.int8:
            entry.update(scale=float(q["scales"][0]), zero_point=int(q["zero_points"][0]))
        out[key] = entry
    out["input"]["layout"] = "NHWC: (1, T, 1, C) for kx1 networks, (1, H, W, C) for 2D ones"
    return out


def export_tflite(
    model: nn.Module,
    calib_x: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    folder: str | os.PathLike,
    *,
    int8_io: bool = True,
    predicted_sram_bytes: int | None = None,
    predicted_arena_bytes: int | None = None,
) -> dict[str, Any]:
    """Export ``model`` to ``folder/model.tflite``, ``folder/model_int8.tflite`` and ``model_data.h``.

    Both models take one NHWC sample. The float model is compared with PyTorch on ``test_x``; the
    int8 model (calibrated on ``calib_x``) runs on TensorFlow Lite Micro; both are scored on
    ``(test_x, test_y)``, and TFLM's arena is measured (and checked: one inference runs in exactly
    that many bytes). Files are written atomically.

    Args:
        model: the trained network taking ``(N, C, T, 1)`` / ``(N, C, H, W)`` (eval mode, CPU).
        calib_x: calibration inputs ``(N, C, H, W)``, held out from the test split.
        test_x, test_y: held-out inputs and labels.
        folder: an existing folder.
        int8_io: int8 input and output tensors (else float32, quantised inside the model).
        predicted_sram_bytes: fnas' predicted peak activation memory (int8) to report beside the
            measured arena, e.g. ``fnas.cost.genotype_cost(genotype, space).peak_sram_bytes_int8``.
        predicted_arena_bytes: fnas' prediction of TFLM's planned activation arena,
            ``genotype_cost(genotype, space, runtime="tflm").peak_sram_bytes_int8``.

    Returns:
        A JSON-ready report: input/output tensors (shape, dtype, scale, zero point), per model its
        file, flash bytes, ops and test accuracy; int8/float agreement; the arena (total, head, tail,
        the live-tensor peak and the greedy plan of the graph) beside the predictions and their ratios.

    Raises:
        ValueError: bad inputs, a network the converter cannot take, or a model left partly float.
    """
    require_tflite_deps()
    import ai_edge_quantizer  # noqa: F401  (versions below)
    import litert_torch


    if test_x.ndim != 4 or calib_x.ndim != 4 or tuple(calib_x.shape[1:]) != tuple(test_x.shape[1:]):
        raise ValueError(
            f"export_tflite needs calib_x and test_x as (N, C, T, 1) / (N, C, H, W) of one sample shape, got "
            f"{tuple(calib_x.shape)} and {tuple(test_x.shape)}"
        )
    if len(test_x) == 0 or len(test_x) != len(test_y):
        raise ValueError(f"test_x and test_y must hold the same positive number of samples, got {len(test_x)}, {len(test_y)}")
    folder = Path(folder)
    model = model.cpu().eval()
    with torch.no_grad():
        ref = torch.cat([model(test_x[i : i + 256]) for i in range(0, len(test_x), 256)]).numpy()
    to_nhwc = lambda t: np.ascontiguousarray(t.permute(0, 2, 3, 1).numpy(), dtype=np.float32)  # noqa: E731
    x_nhwc, calib_nhwc, y = to_nhwc(test_x), to_nhwc(calib_x), test_y.numpy()

    f32 = convert_float(model, torch.from_numpy(x_nhwc[:1]))
    int8 = quantize_full_int8(f32, calib_nhwc, int8_io=int8_io)
    f32_logits = tflm_logits(f32, x_nhwc)
    q_logits = tflm_logits(int8, x_nhwc)
    arena = tflm_arena(int8)
    arena["live_tensor_peak_bytes"] = live_tensor_peak_bytes(int8)
    arena["planned_arena_bytes"] = planned_arena_bytes(int8)
    arena["min_arena_bytes"] = min_arena_bytes(int8, start=arena["total_bytes"])
    if predicted_sram_bytes is not None:
        arena["predicted_sram_bytes"] = int(predicted_sram_bytes)
        arena["head_over_predicted"] = arena["head_bytes"] / max(int(predicted_sram_bytes), 1)
        arena["total_over_predicted"] = arena["total_bytes"] / max(int(predicted_sram_bytes), 1)
    if predicted_arena_bytes is not None:
        arena["predicted_tflm_head_bytes"] = int(predicted_arena_bytes)
        arena["head_over_predicted_tflm"] = arena["head_bytes"] / max(int(predicted_arena_bytes), 1)

    atomic_write_bytes(folder / FLOAT_FILE, f32)
    atomic_write_bytes(folder / INT8_FILE, int8)
    write_c_header(int8, folder / HEADER_FILE)
    import tflite_micro

    return {
        **_io(int8),
        "float32": {
            "file": FLOAT_FILE,
            "bytes": len(f32),
            "ops": sorted(set(tflite_ops(f32))),
            "max_abs_diff_vs_pytorch": float(np.abs(f32_logits - ref).max()),
            "test_acc": _accuracy(f32_logits, y),
        },
        "int8": {
            "file": INT8_FILE,
            "header": HEADER_FILE,
            "bytes": len(int8),
            "ops": sorted(set(tflite_ops(int8))),
            "format": "full integer (ai-edge-quantizer static): int8 activations (per tensor), int8 weights "
            f"(per output channel, symmetric), int32 bias; {'int8' if int8_io else 'float32'} input/output",
            "runtime": "tflite-micro (reference kernels)",
            "test_acc": _accuracy(q_logits, y),
            "agreement_with_float32": float((q_logits.argmax(-1) == f32_logits.argmax(-1)).mean()),
        },
        "arena": arena,
        "pytorch_test_acc": _accuracy(ref, y),
        "test_samples": int(len(y)),
        "calibration_samples": int(len(calib_x)),
        "versions": {
            "torch": torch.__version__,
            "litert_torch": litert_torch.__version__,
            "tflite_micro": getattr(tflite_micro, "__version__", "unknown"),
        },
    }
