"""Run folders: the files a run holds, and reading and writing them (the CLI's only access to them).

Layout of a run folder (``fnas search`` writes all of it; ``fnas train --out`` all but the
search files, so ``show`` and ``export`` work on either)::

    config.json      everything needed to replay the run (``fnas search --config``), the space with its type
    genotype.json    the derived genotype with the space it was searched in and the data it was searched on
                     (:func:`genotype_file`), so ``fnas train genotype.json`` rebuilds that network
    metrics.jsonl    one JSON record per epoch, ``phase`` "search" or "train"
    alphas.pt        softmax(alphas) per search epoch
    checkpoint.pt    the whole search state, for ``fnas search --resume`` (see fnas.search.loop)
    model.pt         the trained final network's state_dict
    summary.json     held-out accuracy, parameters, MACs, peak SRAM, wall times
    plots/*.png      edge weights over the epochs, cell diagrams, loss/accuracy curves
    model.onnx, model_int8.onnx, export.json   after ``fnas export``

Every write is atomic (:mod:`fnas.core.io`): a crash leaves the old file or the new one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from torch import nn

from fnas.app.plots import write_plots
from fnas.app.spaces import Space, chain_genotype_from_json, genotype_json, is_chain, space_from_dict, space_to_dict
from fnas.app.train import build_network
from fnas.core.io import append_jsonl, atomic_torch_save, atomic_write_json, safe_torch_load
from fnas.cost import Cost
from fnas.data import Dataset
from fnas.search.defaults import DEFAULTS, selection_for
from fnas.spaces.cell.genotype import genotype_from_dict, load_genotype, save_genotype

CONFIG, GENOTYPE, METRICS, ALPHAS = "config.json", "genotype.json", "metrics.jsonl", "alphas.pt"
CHECKPOINT, MODEL, SUMMARY, PLOTS_DIR = "checkpoint.pt", "model.pt", "summary.json", "plots"
EXPORT_FILES = ("model.onnx", "model_int8.onnx", "export.json")
EXPORT_REPORT = EXPORT_FILES[-1]


class Run(NamedTuple):
    """An opened run folder: its config, search space, genotype and (once trained) summary."""

    path: Path
    config: dict
    space: Space  # SpaceConfig (cells) or ChainSpaceConfig
    genotype: Any  # Genotype_CNN or ChainGenotype
    summary: dict | None

    @property
    def data(self) -> str:
        """The dataset spec the run used."""
        return str(self.config.get("cli", {}).get("data") or DEFAULTS["data"])

    @property
    def warmup_epochs(self) -> int:
        """Weight-only search epochs (0 for a run that did not search)."""
        if "search" not in self.config:
            return 0
        schedule = self.config.get("schedule") or {}  # the resolved "auto" values
        value = schedule.get("warmup_epochs", self.config.get("cli", {}).get("warmup_epochs"))
        return value if isinstance(value, int) else 0

    @property
    def selection(self) -> str | None:
        """How the search read the genotype off the supernet (``None`` for a run that did not search)."""
        if "search" not in self.config:
            return None
        return self.config.get("selection") or self.config.get("cli", {}).get("selection") or selection_for(self.space)

    @property
    def trained(self) -> bool:
        """Whether the run holds a trained network (``model.pt``)."""
        return (self.path / MODEL).is_file()


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file, or say which file is broken.

    Raises:
        ValueError: the file is not valid JSON; ``what`` names it in the message.
    """
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} {str(path)!r} is not valid JSON ({err}); restore it from a copy") from err


def open_run(path: Path) -> Run:
    """Read a run folder's config, space, genotype and summary.

    Raises:
        ValueError: ``path`` is not a run folder, or one of its files is broken; the message says which.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"run folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise ValueError(
            f"{str(path)!r} is a file; give the run folder (the one holding config.json and genotype.json)"
        )
    missing = [f for f in (CONFIG, GENOTYPE) if not (path / f).is_file()]
    if missing:
        raise ValueError(
            f"{str(path)!r} is not an fnas run folder: {' and '.join(missing)} missing (a run folder is "
            "what `fnas search` or `fnas train --out` writes)"
        )
    config = read_json(path / CONFIG, "run config")
    if not isinstance(config, dict):
        raise ValueError(f"{str(path / CONFIG)!r} is not an fnas run config")
    space_dict = (config.get("search") or {}).get("space") if isinstance(config.get("search"), dict) else None
    space = space_from_dict(space_dict or config.get("space"), str(path / CONFIG))
    if is_chain(space):
        genotype = space.genotype_from_dict(read_json(path / GENOTYPE, "genotype file"))
    else:
        genotype = load_genotype(path / GENOTYPE)
    summary = read_json(path / SUMMARY, "run summary") if (path / SUMMARY).is_file() else None
    return Run(path, config, space, genotype, summary if isinstance(summary, dict) else None)


def write_config(folder: Path, config: dict) -> None:
    """Write ``config.json``."""
    atomic_write_json(Path(folder) / CONFIG, config)


class GenotypeFile(NamedTuple):
    """A genotype JSON file: the genotype, and the space and data it records (``None`` where it has none)."""

    genotype: Any  # Genotype_CNN or ChainGenotype
    space: Space | None
    data: dict | None  # data_record's entries


def data_record(ds: Dataset, spec: str) -> dict:
    """What a genotype file records of the data: the spec to load it again, its name and shapes."""
    return {"spec": str(spec), "name": ds.name, "in_channels": int(ds.in_channels),
            "input_shape": [int(v) for v in ds.input_shape], "num_classes": int(ds.num_classes)}


def genotype_file(genotype: Any, space: Space, data: dict | None = None) -> dict:
    """What ``genotype.json`` holds: the genotype (a cell's in the seed's format, whose readers ignore the
    other keys), ``"space"`` (its type), ``"space_config"`` (:func:`fnas.app.spaces.space_to_dict`, as
    ``config.json`` stores it) and, when given, ``"data"`` (:func:`data_record`)."""
    record = dict(genotype_json(genotype, space))
    record.update(space="chain" if is_chain(space) else "cell", space_config=space_to_dict(space))
    if data is not None:
        record["data"] = data
    return record


def write_genotype(folder: Path, genotype: Any, space: Space | None = None, data: dict | None = None) -> None:
    """Write ``genotype.json``: :func:`genotype_file`; without a space, a cell genotype in the seed's bare format."""
    if space is None:
        save_genotype(genotype, Path(folder) / GENOTYPE)
        return
    atomic_write_json(Path(folder) / GENOTYPE, genotype_file(genotype, space, data))


def read_genotype_file(path: Path) -> GenotypeFile:
    """A genotype JSON file: one ``fnas search`` / ``fnas train`` wrote (with its space and data), a bare chain
    genotype (``{"space": "chain", "blocks": ...}``), or a bare cell genotype in the seed's format.

    Raises:
        ValueError: not JSON, not a genotype, a space that is not the genotype's kind, or a malformed
            ``data`` entry; the message names the file.
    """
    where = f"genotype file {str(path)!r}"
    raw = read_json(path, "genotype file")  # a clear message for a file that is not JSON at all
    if not isinstance(raw, dict):
        return GenotypeFile(load_genotype(path), None, None)  # load_genotype says what is wrong
    data = raw.get("data")
    if data is not None and not (isinstance(data, dict) and isinstance(data.get("spec"), str)):
        raise ValueError(f"{where}: 'data' must be an object with the dataset's 'spec' (e.g. \"watch\"), got "
                         f"{data!r:.80}")
    if raw.get("space") == "chain":
        genotype, space = chain_genotype_from_json(raw, where)
        return GenotypeFile(genotype, space, data)
    space = space_from_dict(raw["space_config"], where) if "space_config" in raw else None
    if space is not None and is_chain(space):
        raise ValueError(f"{where}: 'space_config' is a chain space, but the genotype is a cell genotype "
                         "(a chain genotype file has \"space\": \"chain\" and \"blocks\")")
    genotype = genotype_from_dict(raw) if space is not None else load_genotype(path)
    return GenotypeFile(genotype, space, data)


def write_summary(folder: Path, summary: dict) -> None:
    """Write ``summary.json``."""
    atomic_write_json(Path(folder) / SUMMARY, summary)


def read_export_report(folder: Path) -> dict:
    """``export.json`` of an earlier export (empty when there is none), to add a format's report to."""
    path = Path(folder) / EXPORT_REPORT
    return read_json(path, "export report") if path.is_file() else {}


def write_export_report(folder: Path, report: dict) -> None:
    """Write ``export.json``."""
    atomic_write_json(Path(folder) / EXPORT_REPORT, report)


def append_metrics(folder: Path, phase: str, record: dict) -> None:
    """Append one epoch's record to ``metrics.jsonl``, tagged with its ``phase``."""
    append_jsonl(Path(folder) / METRICS, {"phase": phase, **record})


def read_metrics(folder: Path) -> list[dict]:
    """``metrics.jsonl`` records; a torn last line (a crash mid-append) is skipped."""
    path = Path(folder) / METRICS
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


def save_alphas(folder: Path, history: list) -> None:
    """Write ``alphas.pt``: softmax(alphas) per search epoch."""
    atomic_torch_save(Path(folder) / ALPHAS, history)


def load_alphas(folder: Path) -> list | None:
    """The per-epoch alphas of ``alphas.pt``; ``None`` for a run without them."""
    path = Path(folder) / ALPHAS
    if not path.is_file():
        return None
    history = safe_torch_load(path)
    return history if isinstance(history, list) and history else None


def save_model(folder: Path, model: nn.Module) -> None:
    """Write ``model.pt``: the trained network's state_dict (moved to the CPU)."""
    atomic_torch_save(Path(folder) / MODEL, model.cpu().state_dict())


def load_model(run: Run) -> nn.Module:
    """The run's trained network, in eval mode.

    Raises:
        ValueError: the run is not trained yet, or ``model.pt`` does not fit its genotype and space.
    """
    path = run.path / MODEL
    if not path.is_file():
        raise ValueError(
            f"run {str(run.path)!r} has no trained model (model.pt); train it first with `fnas train {run.path}`"
        )
    model = build_network(run.space, run.genotype)
    try:
        model.load_state_dict(safe_torch_load(path))
    except RuntimeError as err:
        raise ValueError(
            f"{str(path)!r} does not match the network of the run's config.json and genotype.json "
            f"({str(err).splitlines()[0]})"
        ) from err
    return model.eval()


def check_fits(ds: Dataset, space: Space, where: str) -> None:
    """The dataset must have the shapes and classes the run's network was built for.

    Raises:
        ValueError: channels, input shape or class count differ; ``where`` names the run.
    """
    want = (space.in_channels, tuple(space.input_shape), space.num_classes)
    got = (ds.in_channels, tuple(ds.input_shape), ds.num_classes)
    if want != got:
        raise ValueError(
            f"{ds.name} has {got[0]} channels, input {got[1]} and {got[2]} classes, but {where}'s network "
            f"takes {want[0]} channels, input {want[1]} and {want[2]} classes; pass the run's dataset "
            "with --data"
        )


def cost_summary(cost: Cost) -> dict:
    """The exact cost entries of ``summary.json``."""
    return {
        "params": int(cost.params),
        "macs": int(cost.macs),
        "peak_sram_bytes_int8": int(cost.peak_sram_bytes_int8),
        "peak_sram_bytes_f32": int(cost.peak_sram_bytes_f32),
    }


def write_run_plots(
    folder: Path,
    *,
    genotype: Any,
    space: Space,
    alphas: list | None = None,
    test_acc: float | None = None,
    warmup_epochs: int = 0,
    selection: str | None = None,
    missing_only: bool = False,
    redraw: tuple[str, ...] = (),
) -> list[Path]:
    """Draw the run's plots into ``plots/`` from its genotype, metrics and alphas (cell or chain plots).

    Returns:
        The plot files that exist afterwards (see :func:`fnas.app.plots.write_plots`).
    """
    folder = Path(folder)
    chain = space if is_chain(space) else None
    return write_plots(
        folder / PLOTS_DIR, genotype=genotype, primitives=None if chain else list(space.primitives),
        alpha_history=alphas, records=read_metrics(folder), test_acc=test_acc, warmup_epochs=warmup_epochs,
        missing_only=missing_only, redraw=redraw, chain=chain, selection=selection,
    )
