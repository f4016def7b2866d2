"""``python -m fnas.cli``: the ``fnas`` command (``python -m fnas`` is the same)."""

import sys

from fnas.cli import main

if __name__ == "__main__":
    sys.exit(main())
