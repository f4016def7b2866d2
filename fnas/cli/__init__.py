"""The ``fnas`` command: ``search`` an architecture, ``train`` it, ``show`` a run, ``export`` it to ONNX/int8.

Every subcommand documents itself (``fnas <command> --help``). Bad input (an unknown dataset, a
malformed ``.npz``, a folder that is not a run, an existing non-empty ``--out``, files that would be
overwritten) prints ``fnas <command>: error: ...`` on stderr and exits with code 2 before anything
is written. The run folder every command reads or writes is described in :mod:`fnas.app.runs`.
"""

from __future__ import annotations

import sys

from fnas.cli.export import cmd_export
from fnas.cli.parser import build_parser
from fnas.cli.search import cmd_search
from fnas.cli.show import cmd_show
from fnas.cli.train import cmd_train

__all__ = ["main"]

COMMANDS = {"search": cmd_search, "train": cmd_train, "show": cmd_show, "export": cmd_export}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fnas`` console script; returns the exit code (2 for bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2): return it instead of exiting
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        return COMMANDS[args.command](args, argv)
    except ValueError as err:  # bad input; MissingDependencyError is one too
        print(f"fnas {args.command}: error: {err}", file=sys.stderr, flush=True)
        return 2
    except FloatingPointError as err:
        print(f"fnas {args.command}: error: {err}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"fnas {args.command}: interrupted", file=sys.stderr, flush=True)
        return 130
