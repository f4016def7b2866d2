"""TFLite export: float parity with PyTorch, full-int8 on TFLite Micro, the arena report, the C header."""

from __future__ import annotations

import builtins
import json

import numpy as np
import pytest
import torch
from torch import nn

from fnas.app.c_header import c_header, parse_c_header, write_c_header
from fnas.data import MissingDependencyError

pytestmark = pytest.mark.usefixtures("single_thread")

GENOTYPE_OPS = dict(
    normal=[("conv_bn_relu_3x1", 0), ("max_pool_3x1", 1), ("skip_connect", 1)],
    reduce=[("skip_connect", 0), ("conv_bn_relu_5x1", 1), ("avg_pool_3x1", 0)],
)


def _deps():
    pytest.importorskip("litert_torch", reason="TFLite export needs the tflite extra (litert-torch)")
    pytest.importorskip("ai_edge_quantizer", reason="TFLite export needs the tflite extra (ai-edge-quantizer)")
    pytest.importorskip("tflite_micro", reason="TFLite export needs the tflite extra (tflite-micro)")
    from fnas.app import tflite

    return tflite


@pytest.fixture(scope="module")
def watch_export(tmp_path_factory):
    """A small NetworkCnn trained for a few steps on the smartwatch IMU windows, then exported."""
    tflite = _deps()
    from fnas.cost import genotype_cost
    from fnas.data import load_watch
    from fnas.spaces.cell.config import SpaceConfig
    from fnas.spaces.cell.genotype import Genotype_CNN
    from fnas.spaces.cell.network import NetworkCnn

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    data = load_watch()
    genotype = Genotype_CNN(normal=GENOTYPE_OPS["normal"], normal_concat=range(2, 4),
                            reduce=GENOTYPE_OPS["reduce"], reduce_concat=range(2, 4))
    space = SpaceConfig(C=4, num_classes=7, layers=3, in_channels=6, input_shape=(128, 1), nodes=3,
                        multiplier=2, stem_multiplier=2)
    model = NetworkCnn(4, 7, 3, genotype, 6, True, 3, 2, 2, gen=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        i = torch.randint(0, len(data.train.x), (32,), generator=gen)
        loss = nn.functional.cross_entropy(model(data.train.x[i]), data.train.y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    folder = tmp_path_factory.mktemp("tflite")
    test_x, test_y = data.test.x[:300], data.test.y[:300]
    predicted = genotype_cost(genotype, space).peak_sram_bytes_int8
    arena = genotype_cost(genotype, space, runtime="tflm").peak_sram_bytes_int8
    report = tflite.export_tflite(model, data.valid.x[:200], test_x, test_y, folder, predicted_sram_bytes=predicted,
                                  predicted_arena_bytes=arena)
    torch.set_num_threads(threads)
    return model, test_x, folder, report


def test_float_tflite_matches_pytorch(watch_export):
    tflite = _deps()
    model, test_x, folder, report = watch_export
    assert report["float32"]["max_abs_diff_vs_pytorch"] < 1e-4
    x = test_x[:8]
    got = tflite.tflm_logits((folder / "model.tflite").read_bytes(), x.permute(0, 2, 3, 1).numpy())
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert report["float32"]["test_acc"] == pytest.approx(report["pytorch_test_acc"], abs=1 / 300)


def test_int8_model_is_fully_integer_and_agrees_with_float(watch_export):
    tflite = _deps()
    _, _, folder, report = watch_export
    assert report["input"]["dtype"] == "int8" and report["output"]["dtype"] == "int8"
    assert report["input"]["shape"] == [1, 128, 1, 6]  # NHWC, one sample
    int8 = (folder / "model_int8.tflite").read_bytes()
    assert not {"DEQUANTIZE"} & set(tflite.tflite_ops(int8))
    assert report["int8"]["agreement_with_float32"] >= 0.9
    assert report["int8"]["test_acc"] >= report["float32"]["test_acc"] - 0.05
    assert report["int8"]["bytes"] == len(int8) and report["float32"]["bytes"] == len((folder / "model.tflite").read_bytes())


def test_arena_report(watch_export):
    _, _, _, report = watch_export
    arena = report["arena"]
    assert arena["total_bytes"] == arena["head_bytes"] + arena["tail_bytes"]
    assert 0 < arena["live_tensor_peak_bytes"] <= arena["head_bytes"]
    assert arena["min_arena_bytes"] >= arena["total_bytes"]
    assert arena["predicted_sram_bytes"] > 0
    assert arena["head_over_predicted"] == pytest.approx(arena["head_bytes"] / arena["predicted_sram_bytes"])
    json.dumps(report)  # JSON-ready


def test_tflm_prediction_matches_the_measured_activation_arena(watch_export):
    """The greedy plan of the flatbuffer is TFLM's head exactly (reference kernels: no scratch), and
    fnas' TFLM-faithful prediction from the genotype alone is within 10% of it (the fused one is not)."""
    _, _, _, report = watch_export
    arena = report["arena"]
    assert arena["planned_arena_bytes"] == arena["head_bytes"]
    assert abs(arena["head_over_predicted_tflm"] - 1) <= 0.10
    assert arena["head_over_predicted"] > 1.3  # why the TFLM mode exists


def test_chain_tflm_prediction_is_exact(tmp_path):
    """Chains with input BN, conv / dilated / sep blocks, identity and strided (padded) blocks: the
    predicted TFLM arena equals the measured head."""
    tflite = _deps()
    from fnas.cost import genotype_cost
    from fnas.spaces.chain import ChainGenotype, ChainSpaceConfig

    cfg = ChainSpaceConfig(input_shape=(64, 1), widths=(16, 32, 32, 16), strides=(1, 2, 1, 2))
    genotype = ChainGenotype((("conv_k5_d1", 12), ("sep_k3_d2", 32), ("conv_k3_d1", 24), ("sep_k5_d1", 16)))
    model = cfg.network(genotype, gen=torch.Generator().manual_seed(0)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, as after training
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(48, 6, 64, 1)
    report = tflite.export_tflite(model, x[:16], x[16:], torch.randint(0, 7, (32,)), tmp_path,
                                  predicted_arena_bytes=genotype_cost(genotype, cfg, runtime="tflm").peak_sram_bytes_int8)
    assert "PAD" in report["int8"]["ops"]  # the strided blocks' explicit padding, which the prediction models
    assert report["arena"]["planned_arena_bytes"] == report["arena"]["head_bytes"]
    assert report["arena"]["predicted_tflm_head_bytes"] == report["arena"]["head_bytes"]


def test_header_holds_the_exact_flatbuffer(watch_export):
    _, _, folder, _ = watch_export
    text = (folder / "model_data.h").read_text()
    assert "alignas(16) const unsigned char g_model[]" in text and "#ifndef" in text and "#endif" in text
    assert parse_c_header(text) == (folder / "model_int8.tflite").read_bytes()


def test_write_c_header_round_trip_and_refusals(tmp_path):
    data = bytes(range(256)) * 3 + b"\x00"
    write_c_header(data, tmp_path / "m.h", name="my_model")
    text = (tmp_path / "m.h").read_text()
    assert parse_c_header(text, name="my_model") == data
    assert f"const unsigned int my_model_len = {len(data)};" in text
    with pytest.raises(ValueError, match="C identifier"):
        c_header(data, name="9lives")
    with pytest.raises(ValueError, match="non-empty"):
        c_header(b"")
    with pytest.raises(ValueError, match="_len says"):
        parse_c_header(text.replace(f"= {len(data)};", "= 3;"), name="my_model")


def test_missing_extra_names_the_install_command(monkeypatch):
    from fnas.app import tflite

    real_import = builtins.__import__

    def no_tflite_micro(name, *args, **kwargs):
        if name.split(".")[0] == "tflite_micro":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tflite_micro)
    with pytest.raises(MissingDependencyError, match=r"pip install 'fnas\[tflite\]'") as info:
        tflite.require_tflite_deps()
    assert "tflite-micro" in str(info.value)
    with pytest.raises(ValueError):  # what callers catch at the boundary
        tflite.export_tflite(nn.Linear(1, 1), torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), torch.zeros(1), ".")


def test_image_network_with_strided_pools_converts(tmp_path):
    """A tiny 2D network of plain modules (the chain space's kind), float input/output."""
    tflite = _deps()
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AvgPool2d(3, 2, 1, count_include_pad=False),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()
    x = torch.randn(64, 3, 16, 16)
    y = torch.randint(0, 4, (64,))
    report = tflite.export_tflite(model, x[:32], x[32:], y[32:], tmp_path, int8_io=False)
    assert report["input"]["dtype"] == "float32" and report["input"]["shape"] == [1, 16, 16, 3]
    assert report["float32"]["max_abs_diff_vs_pytorch"] < 1e-4
    assert not any(op.startswith("STABLEHLO") for op in report["int8"]["ops"])
    assert report["int8"]["agreement_with_float32"] >= 0.75
    assert "predicted_sram_bytes" not in report["arena"]


def test_an_op_tflm_cannot_run_is_refused_by_name():
    tflite = _deps()
    model = nn.Sequential(nn.Conv2d(2, 4, (3, 1), padding=(1, 0)),
                          nn.AvgPool2d((2, 1), (2, 1), (1, 0), count_include_pad=False)).eval()
    with pytest.raises(ValueError, match="STABLEHLO_REDUCE_WINDOW.*TensorFlow Lite Micro"):
        tflite.convert_float(model, torch.zeros(1, 16, 1, 2))
