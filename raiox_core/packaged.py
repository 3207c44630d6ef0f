"""Files that ship inside the installed package: the SQL, and the dashboard's entrypoint and settings.

Found through importlib.resources, so that a wheel, `pip install .` and an editable checkout all work; a
file that is missing is a clear error rather than, say, a schema silently left uncreated.
"""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from pathlib import Path

from .errors import ConfigError

_MIGRATION_NAME = re.compile(r"^\d{3}_[\w-]+\.sql$")


def _package_dir(package: str) -> Path:
    try:
        # Raiox is never installed zipped: its files are real paths (Streamlit needs one to run a script).
        return Path(str(resources.files(package)))
    except ModuleNotFoundError:
        raise ConfigError(f"Raiox's package {package} is not installed; reinstall Raiox (pip install raiox).") from None


def sql_text(name: str) -> str:
    path = _package_dir("raiox_core.sql") / name
    if not path.is_file():
        raise ConfigError(f"Raiox's SQL file {name} is missing from {path.parent}; reinstall Raiox.")
    return path.read_text()


def migration_names() -> list[str]:
    """The numbered migration files, in order; none at all means a broken installation."""
    names = sorted(p.name for p in _package_dir("raiox_core.sql").iterdir() if _MIGRATION_NAME.match(p.name))
    if not names:
        raise ConfigError("Raiox's SQL migrations are missing from the installation; reinstall Raiox.")
    return names


def dashboard_script(name: str = "main.py") -> Path:
    path = _package_dir("raiox_dashboard") / name
    if not path.is_file():
        raise ConfigError(f"The dashboard's {name} is missing from {path.parent}; reinstall Raiox.")
    return path


def dashboard_pages() -> Path:
    return _package_dir("raiox_dashboard.pages")


def streamlit_flags(**overrides: object) -> list[str]:
    """The dashboard's Streamlit settings (app/streamlit.toml) as command-line flags, whatever the working
    directory: Streamlit itself only reads .streamlit/config.toml from the directory it is started in.
    `overrides` are dotted names with "_" for "." (server_port=8501)."""
    settings = {f"{section}.{key}": value for section, values in
                tomllib.loads(dashboard_script("streamlit.toml").read_text()).items() for key, value in values.items()}
    settings.update({name.replace("_", ".", 1): value for name, value in overrides.items()})
    return [f"--{name}={str(value).lower() if isinstance(value, bool) else value}" for name, value in settings.items()]
