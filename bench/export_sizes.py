"""ONNX file sizes, float32 vs int8 QDQ, as the exporter and quantiser write them and compacted
(``fnas.app.export._compact``); the table of docs/cli.md, "Export sizes".

    python bench/export_sizes.py

Networks on the watch data's shapes (6 channels, T=128, 7 classes) with random weights and
BatchNorm statistics from random batches (sizes do not depend on training): the cell space that
``fnas search --space cell --max-params 8000`` sizes (C=4, 5 layers, 4 nodes; genotypes drawn
with seeds 0-2), a smaller cell (C=2) and chains (the FCN member at widths 8, 16, 32). One thread.
"""

from __future__ import annotations

import tempfile
from unittest import mock

import torch

from fnas.app import export
from fnas.spaces.cell.config import SpaceConfig
from fnas.spaces.cell.genotype import random_genotype
from fnas.spaces.chain import ChainSpaceConfig

SHAPE = dict(in_channels=6, num_classes=7, input_shape=(128, 1))


def networks():
    for C, seeds in ((4, (0, 1, 2)), (2, (0,))):
        space = SpaceConfig(C=C, layers=5, nodes=4, multiplier=4, stem_multiplier=3, **SHAPE)
        for seed in seeds:
            genotype = random_genotype(space, torch.Generator().manual_seed(seed))
            yield f"cell C={C}, random genotype {seed}", space.network(genotype, gen=torch.Generator().manual_seed(0))
    chain = ChainSpaceConfig(**SHAPE)
    for width in (8, 16, 32):
        yield f"chain FCN w={width}", chain.network(chain.fcn_genotype(width), gen=torch.Generator().manual_seed(0))


def sizes(model, x) -> dict:
    with tempfile.TemporaryDirectory() as out:
        rep = export.export_model(model, x[:32], x[32:], torch.arange(32) % 7, out)
    return {k: (rep[k]["bytes"], rep[k]["weight_bytes"]) for k in ("float32", "int8")}


def main() -> None:
    torch.set_num_threads(1)
    x = torch.randn(64, 6, 128, 1, generator=torch.Generator().manual_seed(1))
    print("| network | params | float32 B (tensors) | int8 B (tensors), as written | int8 B, compacted | "
          "float32 B, compacted | int8 / float32 file, compacted |")
    print("|---|---|---|---|---|---|---|")
    for name, model in networks():
        with torch.no_grad():  # non-trivial BatchNorm statistics
            model(torch.randn(16, 6, 128, 1))
        params = sum(p.numel() for p in model.parameters())
        with mock.patch.object(export, "_compact", lambda proto: None):
            loose = sizes(model, x)
        tight = sizes(model, x)
        print(f"| {name} | {params:,} | {loose['float32'][0]:,} ({loose['float32'][1]:,}) | {loose['int8'][0]:,} "
              f"({loose['int8'][1]:,}) | {tight['int8'][0]:,} | {tight['float32'][0]:,} | "
              f"{tight['int8'][0] / tight['float32'][0]:.2f} |")


if __name__ == "__main__":
    main()
