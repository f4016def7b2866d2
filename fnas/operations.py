"""The seed's import path ``fnas.operations`` (kept): ``OPS`` lives in :mod:`fnas.spaces.primitives.modules`."""

from fnas.spaces.primitives.modules import *  # noqa: F401,F403
from fnas.spaces.primitives.modules import __all__  # noqa: F401
