"""``python -m fnas``: the ``fnas`` command (also ``torchrun ... -m fnas search ...``)."""

import sys

from fnas.cli import main

if __name__ == "__main__":
    sys.exit(main())
