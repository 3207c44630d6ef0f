"""Raiox core: identify dental implants on X-rays by similarity to labelled references.

Never imports streamlit: the dashboard (app/, pages/) and the `raiox` command both build on this package.
"""

from .config import Settings
from .errors import (
    ConfigError,
    DatabaseUnavailable,
    ImageRejected,
    ModelLoadError,
    NamingError,
    NotFound,
    RaioxError,
    StorageError,
)

__version__ = "0.1.0"
__all__ = [
    "Settings", "RaioxError", "ConfigError", "DatabaseUnavailable", "ImageRejected", "ModelLoadError",
    "NamingError", "NotFound", "StorageError", "__version__",
]
