"""evop-hub: remove whole transformer blocks chosen by evolutionary search, publish on the Hub."""

__version__ = "0.1.0"

from .errors import EvopError  # noqa: E402
from .models import LoadConfig, drop, load, save  # noqa: E402
from .prune import PruneConfig, PruneResult, prune  # noqa: E402

__all__ = ["EvopError", "LoadConfig", "PruneConfig", "PruneResult", "__version__", "drop", "load", "prune", "save"]
