"""evop-hub: remove whole transformer blocks chosen by evolutionary search, publish on the Hub."""

from ._version import __version__
from .errors import EvopError
from .models import LoadConfig, drop, load, save
from .prune import PruneConfig, PruneResult, prune

__all__ = ["EvopError", "LoadConfig", "PruneConfig", "PruneResult", "__version__", "drop", "load", "prune", "save"]
