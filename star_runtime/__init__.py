"""star-runtime: exact long-context inference over many workers (dense, ring and star attention)."""

from .config import ConfigError, RunConfig
from .engine import Engine

__all__ = ["Engine", "RunConfig", "ConfigError"]
__version__ = "0.1.0"
