"""The seed's import path ``fnas.train_cnn_search`` (kept): the code lives in :mod:`fnas.app.seed_api`."""

from fnas.app.seed_api import *  # noqa: F401,F403
from fnas.app.seed_api import __all__  # noqa: F401
