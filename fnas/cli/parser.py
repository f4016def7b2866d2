"""The ``fnas`` argument parser: one subparser per command, every default read from
:data:`fnas.search.defaults.DEFAULTS` (the one source of defaults)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from fnas.app.export import OPSET
from fnas.search import HYPERGRADS, SELECTIONS
from fnas.search.defaults import DEFAULTS
from fnas.spaces import primitives as P
from fnas.spaces.chain import ChainSpaceConfig
from fnas.spaces.chain.spec import OP_TYPES, WIDTH_POLICIES

AUTO = "auto"
CELL_OPTIONS = ("C", "layers", "nodes", "multiplier", "stem_multiplier", "primitives", "partial_channels", "reductions",
                "preprocess")
CHAIN_OPTIONS = ("widths", "width_fractions", "kernels", "dilations", "op_types", "no_identity", "strides",
                 "width_policy", "hold_fcn")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except ``None`` ones (their help says what happens instead)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None:
            return action.help or ""
        return super()._get_help_string(action)


_FMT = _Formatter


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: a usage error is one line naming the option and pointing at ``--help``,
    not the whole usage block (``fnas search``'s is 30 lines, burying the error under it)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def _int_from(low: int):
    """An argparse type: an integer >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def _number(low: float = 0.0, high: float = math.inf, *, above: bool = False, below: bool = False):
    """An argparse type: a finite number in ``[low, high]`` (``above`` / ``below``: the open end)."""
    what = (f"a finite number {'>' if above else '>='} {low:g}"
            + (f" and {'<' if below else '<='} {high:g}" if high < math.inf else ""))

    def parse(text: str) -> float:
        try:
            value = float(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (math.isfinite(value) and (value > low if above else value >= low)
                and (value < high if below else value <= high)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what
    return parse


COUNT, POSITIVE, NON_NEGATIVE = _int_from(0), _int_from(1), _number()


def _list_of(kind: type, example: str):
    """An argparse type: a comma-separated list of ``kind`` as a tuple."""

    def parse(text: str) -> tuple:
        items = [t.strip() for t in str(text).split(",") if t.strip()]
        try:
            return tuple(kind(t) for t in items)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {kind.__name__} values, e.g. {example}, got {text!r}"
            ) from None

    parse.__name__ = f"{kind.__name__} list"
    return parse


def _auto_or_int(text: str) -> str | int:
    """An argparse type: ``auto`` or an integer."""
    if str(text).strip().lower() == AUTO:
        return AUTO
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer, got {text!r}") from None


def _add_data(p: argparse.ArgumentParser, default: str | None, note: str = "") -> None:
    p.add_argument(
        "--data",
        default=default,
        help="'watch' (bundled smartwatch IMU), 'digits' (8x8 images), 'ucr:NAME' (pip install "
        "'fnas[ucr]'), or your own .npz: X (N, C, T) or (N, C, H, W) and integer labels y in 0..K-1 "
        "(split 60/20/20 by class), or all of X_train, y_train, X_valid, y_valid, X_test, y_test" + note,
    )


def _add_runtime(p: argparse.ArgumentParser, *, device: bool = True, quiet: bool = True) -> None:
    p.add_argument("--threads", type=COUNT, default=DEFAULTS["threads"], help="torch CPU threads (0: torch's default)")
    if device:
        p.add_argument("--device", default=DEFAULTS["device"], help="'cpu', 'cuda' or 'cuda:N'")
    if quiet:
        p.add_argument("--quiet", action="store_true", help="no progress bars; one log line per epoch")


def _add_search(sub) -> None:
    """The ``fnas search`` subparser."""
    d = DEFAULTS
    s = sub.add_parser(
        "search",
        help="search an architecture, train it from scratch, report held-out accuracy",
        description=(
            "Search an architecture (a chain of conv blocks, or DARTS cells) with differentiable NAS on a "
            "dataset, train the found network from scratch "
            "on train+valid, evaluate it on the held-out test split, and write a run folder "
            "(config.json, genotype.json, metrics.jsonl, alphas.pt, checkpoint.pt, model.pt, "
            "summary.json, plots/). Under torchrun (e.g. `torchrun --nproc_per_node 4 -m fnas search "
            "--device cuda`) the search runs data-parallel: every process takes 1/WORLD_SIZE of each "
            "batch, and rank 0 writes the run folder and trains the found network."
        ),
        formatter_class=_FMT,
    )
    _add_data(s, d["data"])
    s.add_argument("--resume", type=Path, metavar="RUN",
                   help="continue a killed or crashed search from RUN/checkpoint.pt, with its saved options "
                   "(exactly: the result equals an uninterrupted run); options given here override them, e.g. "
                   "a lower --lr after a divergence")
    s.add_argument("--checkpoint-every", type=COUNT, default=d["checkpoint_every"], metavar="STEPS",
                   help="also checkpoint every STEPS steps (0: only at the end of every epoch)")
    s.add_argument("--config", type=Path,
                   help="replay a run: a run folder or its config.json (options given here override it)")
    s.add_argument("--out", type=Path, help="run folder to create (default: runs/<data>-<time>)")
    s.add_argument("--epochs", type=_auto_or_int, default=AUTO,
                   help=f"search epochs; 'auto': the fewest that give at least {d['min_search_steps']} search steps, "
                   f"ceil({d['min_search_steps']} / steps per epoch), steps per epoch = training samples // "
                   "--batch-size (the watch data at batch 64: 32 steps, so 10 epochs; a dataset of 390 series: "
                   "100 epochs)")
    s.add_argument("--train-epochs", type=COUNT, default=d["train_epochs"],
                   help="epochs to train the found network (0: search only; train later with `fnas train RUN`)")
    s.add_argument("--batch-size", type=POSITIVE, default=d["batch_size"], help="batch size (search and training)")
    s.add_argument("--space", choices=["chain", "cell"], default=d["space"],
                   help="search space: 'chain' (a chain of conv blocks searching op, kernel, dilation, width and "
                   "depth; kx1 time series only) or 'cell' (the seed's DARTS cells); without --space, 2D data "
                   "(images) uses cells")
    ch = s.add_argument_group("chain space (--space chain)")
    base = ChainSpaceConfig()
    ch.add_argument("--widths", type=_list_of(int, "32,64,64,32"),
                    help="maximum output width per block, one per block (default: "
                    f"{','.join(map(str, d['chain_widths']))}, scaled to the budget when one is given)")
    ch.add_argument("--width-fractions", type=_list_of(float, "0.5,1"),
                    help="width choices of a block as fractions of its maximum width (default: "
                    f"{','.join(map(str, base.width_fractions))})")
    ch.add_argument("--kernels", type=_list_of(int, "3,5,7"),
                    help=f"odd kernel sizes (default: {','.join(map(str, base.kernels))})")
    ch.add_argument("--dilations", type=_list_of(int, "1,2"),
                    help=f"dilations (default: {','.join(map(str, base.dilations))})")
    ch.add_argument("--op-types", type=_list_of(str, "conv"),
                    help=f"op types among {','.join(OP_TYPES)}: conv-BN-ReLU, depthwise-separable (default: all)")
    ch.add_argument("--no-identity", action="store_true",
                    help="no identity (skip) choice: every block is a conv (no depth search)")
    ch.add_argument("--strides", type=_list_of(int, "1,2,1,1"),
                    help="stride per block (default: all 1)")
    ch.add_argument("--hold-fcn", action="store_true",
                    help="when a budget sizes the space, widen it (if needed) until the widest FCN (Wang et al. "
                    "2017) within the budget is a member; the search then costs 1.4-2.3x as much (docs/chain-space.md)")
    ch.add_argument("--width-policy", choices=list(WIDTH_POLICIES),
                    help="how widths are read off: 'fill' (the widths of the largest product the budget allows, "
                    "default) or 'alphas' "
                    "(the width alphas' argmax)")
    ce = s.add_argument_group("cell space (--space cell)")
    ce.add_argument("--C", type=POSITIVE,
                    help=f"initial channels (default: {d['C']}, or with a budget and neither --C nor --layers: "
                    "the smallest even C whose largest cell network exceeds the budget)")
    ce.add_argument("--layers", type=POSITIVE,
                    help=f"cells; layers//3 and 2*layers//3 reduce (default: {d['layers']})")
    ce.add_argument("--nodes", type=POSITIVE, default=d["nodes"], help="intermediate nodes per cell")
    ce.add_argument("--multiplier", type=POSITIVE, default=d["multiplier"], help="nodes concatenated into a cell's output")
    ce.add_argument("--stem-multiplier", type=POSITIVE, default=d["stem_multiplier"], help="stem width = this * C")
    ce.add_argument(
        "--primitives",
        default=d["primitives"],
        help=f"comma-separated primitives (default: the seed's kx1 set for time series, DARTS' 2D set for "
        f"images); known: {','.join(P.names())}",
    )
    ce.add_argument("--partial-channels", type=POSITIVE, default=d["partial_channels"], metavar="K",
                    help="PC-DARTS: mixed ops see 1/K of the channels (1: off)")
    ce.add_argument("--reductions", type=_list_of(int, "1,3"),
                    help="indices of the reduction cells ('' for none; default: layers//3 and 2*layers//3)")
    ce.add_argument("--preprocess", choices=["always", "when_needed"],
                    help="a cell's 1x1 input preprocessing: 'always' (the seed's, default) or 'when_needed' (only "
                    "where the channels differ)")
    s.add_argument("--hypergrad", choices=list(HYPERGRADS), default=d["hypergrad"],
                   help="architecture gradient: first order, exact unrolled, or DARTS' finite difference")
    s.add_argument("--unroll-steps", type=POSITIVE, default=d["unroll_steps"], help="virtual steps for --hypergrad exact")
    s.add_argument("--lr", type=NON_NEGATIVE, default=d["lr"], help="weight learning rate during search (cosine)")
    s.add_argument("--lr-min", type=NON_NEGATIVE, default=d["lr_min"], help="final weight learning rate of the cosine")
    s.add_argument("--momentum", type=_number(0.0, 1.0, below=True), default=d["momentum"], help="SGD momentum")
    s.add_argument("--weight-decay", type=NON_NEGATIVE, default=d["weight_decay"], help="weight decay during search")
    s.add_argument("--grad-clip", type=_number(above=True), default=d["grad_clip"], help="max global gradient norm")
    s.add_argument("--arch-lr", type=NON_NEGATIVE, default=d["arch_lr"], help="Adam learning rate of the alphas")
    s.add_argument("--arch-weight-decay", type=NON_NEGATIVE, default=d["arch_weight_decay"], help="alpha weight decay")
    s.add_argument("--warmup-epochs", type=_auto_or_int, default=AUTO,
                   help=f"search epochs that train only the weights before the alphas train; 'auto': "
                   f"{round(100 * d['warmup_fraction'])}%% of the search epochs, rounded down; must be fewer than "
                   "the epochs")
    s.add_argument("--train-lr", type=_number(above=True), default=d["train_lr"], help="learning rate for training the found network")
    s.add_argument("--seed", type=COUNT, default=d["seed"], help="random seed (init and batch order)")
    s.add_argument("--mode", dest="penalty_mode", default=None,
                   help="resource-aware search: 'Memory' (parameters), 'Compute' (MACs), 'SRAM' (peak "
                   "activations), or a combination like 'Memory+Compute'")
    s.add_argument("--penalty-weight", type=NON_NEGATIVE,
                   help=f"weight of the resource penalty (default: the space's: {d['penalty_weight']} on cells, "
                   f"{d['chain_penalty_weight']} on chains, where the exact knapsack meets the budget)")
    s.add_argument("--beta-weight", type=NON_NEGATIVE, default=d["beta_weight"],
                   help="beta-DARTS regularisation weight (linear schedule from 0; 0: off)")
    s.add_argument("--selection", choices=list(SELECTIONS),
                   help="how the genotype is read off the supernet: per node (block) the op whose removal raises "
                   "the validation loss most (perturbation, Wang et al. 2021), or the largest alpha (DARTS) "
                   f"(default: the space's: {d['chain_selection']!r} on chains, {d['selection']!r} on cells)")
    s.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="run the search step under torch.compile (inductor): 1.4-2.9x faster steps on CPU, after "
                   "a first compile of 12-46 minutes that later runs load from the cache (~/.cache/fnas/"
                   "torch-compile) in 1-3 minutes (bench/COMPILED.md). Default: on when the search is long "
                   "enough to pay the compile back (timed on one eager step; the log says why); not under torchrun")
    s.add_argument("--max-params", type=POSITIVE,
                   help="parameter budget (turns on the 'Memory' penalty). With a budget and no size option "
                   "(--widths on chains, --C / --layers on cells) the space is sized so that the budget binds. "
                   f"Chains with neither a budget nor --widths search under {DEFAULTS['chain_max_params']:,}")
    s.add_argument("--max-macs", type=POSITIVE, help="MAC budget (turns on the 'Compute' penalty)")
    s.add_argument("--max-sram", dest="max_sram_bytes", type=POSITIVE,
                   help="peak activation budget in bytes at int8 (turns on the 'SRAM' penalty)")
    _add_runtime(s)


def _add_train(sub) -> None:
    """The ``fnas train`` subparser."""
    d = DEFAULTS
    t = sub.add_parser(
        "train",
        help="train a run's (or a genotype file's) network from scratch, report held-out accuracy",
        description=(
            "Train the fixed network of a genotype from scratch with the standard recipe (SGD with "
            "Nesterov momentum, cosine learning rate, label smoothing 0.1, weight decay 5e-4) on "
            "train+valid, and report its accuracy on the held-out test split. SOURCE is a run folder "
            "(from `fnas search`, e.g. with --train-epochs 0), whose model.pt/summary.json it writes, "
            "or a genotype JSON file, for which it creates a new run folder (--out). A genotype.json "
            "that `fnas search` wrote carries the space it was searched in and its data, and trains "
            "that network; a bare genotype (the seed's format) trains in the cell space the size "
            "options give (else the defaults below) on --data, and the command says what it assumed. "
            "A run that "
            "already holds a model.pt is never overwritten: pass --out to train again elsewhere "
            "(also to change the network size or the dataset)."
        ),
        formatter_class=_FMT,
    )
    t.add_argument("source", type=Path, metavar="RUN_OR_GENOTYPE.json", help="a run folder or a genotype JSON file")
    _add_data(t, None, note=" (default: the run's dataset, or the one the genotype file was searched on; 'watch' "
              "for a genotype file that names none)")
    t.add_argument("--out", type=Path, help="new run folder to write (default: the run folder itself; "
                   "runs/train-<name>-<time> for a genotype file)")
    t.add_argument("--epochs", type=POSITIVE,
                   help=f"training epochs (default: the run's --train-epochs, else {d['train_epochs']})")
    t.add_argument("--batch-size", type=POSITIVE, help=f"batch size (default: the run's, else {d['batch_size']})")
    t.add_argument("--lr", type=_number(above=True),
                   help=f"initial learning rate (default: the run's --train-lr, else {d['train_lr']})")
    t.add_argument("--seed", type=COUNT, help=f"random seed (default: the run's, else {d['seed']})")
    space = "the run's or genotype file's space, else"
    t.add_argument("--C", type=POSITIVE, help=f"initial channels (default: {space} {d['C']})")
    t.add_argument("--layers", type=POSITIVE, help=f"cells (default: {space} {d['layers']})")
    t.add_argument("--stem-multiplier", type=POSITIVE,
                   help=f"stem width = this * C (default: {space} {d['stem_multiplier']})")
    _add_runtime(t)


def _add_show(sub) -> None:
    """The ``fnas show`` subparser."""
    sh = sub.add_parser(
        "show",
        help="print a run's genotype, exact cost, accuracy and plots",
        description=(
            "Print a run's genotype, its exact parameters / MACs / peak SRAM (int8 and float32, batch "
            "1), the held-out accuracy if it was trained, the export results if it was exported, and "
            "where its plots are (missing plots are drawn first)."
        ),
        formatter_class=_FMT,
    )
    sh.add_argument("run", type=Path, metavar="RUN", help="a run folder")
    sh.add_argument("--replot", action="store_true", help="redraw every plot, not only missing ones")


def _add_export(sub) -> None:
    """The ``fnas export`` subparser."""
    d = DEFAULTS
    e = sub.add_parser(
        "export",
        help="export a trained run to ONNX (checked with onnxruntime) and to int8 (QDQ ONNX)",
        description=(
            "Export a trained run's network to ONNX (opset 18, dynamic batch) and check it against "
            "PyTorch with onnxruntime on the held-out test split (max abs difference of the logits); "
            "then quantise it to int8 with onnxruntime's static post-training quantisation (QDQ "
            "format, per-channel int8 weights, int8 activations) calibrated on the validation split "
            "(never the test split), and report both models' sizes and test accuracies. Writes "
            "model.onnx, model_int8.onnx and export.json. Needs `pip install 'fnas[export]'`."
        ),
        formatter_class=_FMT,
    )
    e.add_argument("run", type=Path, metavar="RUN", help="a trained run folder (holding model.pt)")
    _add_data(e, None, note=" (default: the run's dataset)")
    e.add_argument("--out", type=Path, help="folder for the exported files (default: the run folder)")
    e.add_argument("--opset", type=_int_from(OPSET), default=OPSET, help=f"ONNX opset of the float model (>= {OPSET})")
    e.add_argument("--calib-split", choices=["valid", "train"], default=d["calib_split"],
                   help="split that calibrates the int8 activation ranges (the test split is never used)")
    e.add_argument("--calib-samples", type=POSITIVE, default=d["calib_samples"],
                   help="at most this many calibration samples (a seeded random subset)")
    e.add_argument("--per-tensor", action="store_true", help="one int8 weight scale per tensor instead of per channel")
    e.add_argument("--format", choices=["onnx", "tflite", "all"], default="onnx",
                   help="onnx: model.onnx + int8 QDQ ONNX; tflite: a fully int8 model_int8.tflite (and float "
                        "model.tflite) run on TFLite Micro's interpreter, its measured tensor arena beside fnas' "
                        "predicted peak SRAM, and model_data.h for an MCU project (`pip install 'fnas[tflite]'`); "
                        "all: both. The reports go into export.json")
    e.add_argument("--float-io", action="store_true",
                   help="tflite: float32 input and output around the int8 network (default: int8 in and out)")
    e.add_argument("--seed", type=COUNT, default=d["seed"], help="seed of the calibration subset")
    _add_runtime(e, device=False, quiet=False)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``fnas {search,train,show,export}``."""
    parser = argparse.ArgumentParser(
        prog="fnas",
        description="Differentiable architecture search for tiny CNNs (kx1 time series and 2D images). "
        "Typical flow: fnas search -> fnas show RUN -> fnas train RUN -> fnas export RUN.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{search,train,show,export}",
                                parser_class=_CommandParser)
    for add in (_add_search, _add_train, _add_show, _add_export):
        add(sub)
    return parser


def given_options(argv: list[str]) -> set[str]:
    """Destinations of the options given explicitly in ``argv`` (abbreviations and aliases resolved)."""
    parser = build_parser()
    for sub in parser._subparsers._group_actions[0].choices.values():  # noqa: SLF001
        for action in sub._actions:  # noqa: SLF001
            action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"command"}
