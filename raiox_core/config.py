"""Settings: one frozen dataclass built from RAIOX_* environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

from .errors import ConfigError
from .remote_files import Fetcher, HostList

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
MAX_K = 50  # the most references a match answers with, on every door
# Where Jotform serves uploaded files (US, EU and HIPAA accounts); a host a file URL redirects to must be listed too.
JOTFORM_FILE_HOSTS = "www.jotform.com,eu.jotform.com,hipaa.jotform.com,files.jotform.com"
_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def default_data_dir() -> Path:
    """The per-user data directory (XDG on Linux, ~/Library on macOS, %APPDATA% on Windows)."""
    if os.name == "nt":
        base = Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming"))
    elif os.uname().sysname == "Darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "raiox"


@dataclass(frozen=True)
class Settings:
    """Everything configurable; see the README's Configuration table for each variable."""

    data_dir: Path = field(default_factory=default_data_dir)
    cache_dir: Path | None = None  # None: data_dir/cache (what model loads remember, e.g. the int8 check's verdict)
    database_url: str | None = field(default=None, repr=False)  # may hold a password; None: embedded pgserver
    database_read_url: str | None = field(default=None, repr=False)  # a read replica for searches (needs database_url)
    # Both may carry user:password@ or a signed query: kept out of repr, shown only through redact_url.
    storage_url: str | None = field(default=None, repr=False)  # None: file:// under data_dir/objects
    s3_endpoint_url: str | None = field(default=None, repr=False)
    model: str = DEFAULT_MODEL
    pretrained: str = DEFAULT_PRETRAINED
    untrained_fallback: bool = False  # weights that cannot be loaded give untrained ones, with a warning (demo)
    device: str = "auto"
    precision: str = "auto"  # "auto": int8 matmuls on CPU where they match fp32 (see embedder); "fp32"
    max_upload_mb: float = 20.0
    max_pixels: int = 50_000_000
    match_threshold: float = 0.6
    match_threshold_set: bool = False  # RAIOX_MATCH_THRESHOLD was given: it overrides a calibrated threshold
    target_precision: float | None = None  # RAIOX_TARGET_PRECISION: threshold from `raiox evaluate`'s curve
    target_recall: float = 0.98  # RAIOX_TARGET_RECALL: recall@10 the recall probe tunes ef_search for
    staff_password: str | None = field(default=None, repr=False)
    pool_max_size: int = 8
    db_timeout_s: float = 10.0
    api_rate_per_min: int = 120  # requests per minute and per key on the HTTP API
    # The web-form webhook (raiox_core/jotform.py, remote_files.py, submissions.py).
    jotform_file_hosts: str = JOTFORM_FILE_HOSTS
    jotform_api_key: str | None = field(default=None, repr=False)
    jotform_timeout_s: float = 10.0
    result_webhook_url: str | None = field(default=None, repr=False)  # may carry a token
    log_format: str = "text"  # of `raiox api`'s log: "text" or "json" (one object per line)
    # The API's encoder queue (raiox_core.batching): concurrent match requests share one encoder call.
    match_batching: bool = True
    match_batch_window_ms: float = 5.0  # how long the first image of a batch waits for company
    match_batch_max: int = 16  # images per encoder call (the encoder's own batch size)
    match_queue: int = 64  # match requests the API holds at once; beyond, 503 with Retry-After
    adapter: str = "on"  # RAIOX_ADAPTER: "off" searches the base model's vectors even when `raiox train` adopted one
    numba_warmup: bool = True  # RAIOX_NUMBA_WARMUP: the dashboard compiles umap in the background at start
    index_type: str = "vector"  # RAIOX_INDEX_TYPE: "halfvec" indexes 16-bit vectors (half the index; pgvector >= 0.7)

    @property
    def embedded_database(self) -> bool:
        return self.database_url is None

    @property
    def effective_storage_url(self) -> str:
        return self.storage_url or (self.data_dir / "objects").resolve().as_uri()

    @property
    def effective_cache_dir(self) -> Path:
        return self.cache_dir or self.data_dir / "cache"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def with_(self, **changes) -> "Settings":
        """A copy with some fields changed (used by tests and `raiox reembed`)."""
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Read the RAIOX_* variables; unset or empty means the default."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        kwargs: dict = {}
        if (v := get("RAIOX_DATA_DIR")) is not None:
            kwargs["data_dir"] = Path(v).expanduser()
        if (v := get("RAIOX_CACHE_DIR")) is not None:
            kwargs["cache_dir"] = Path(v).expanduser()
        for name, attr in [
            ("RAIOX_DATABASE_URL", "database_url"),
            ("RAIOX_DATABASE_READ_URL", "database_read_url"),
            ("RAIOX_STORAGE_URL", "storage_url"),
            ("RAIOX_S3_ENDPOINT_URL", "s3_endpoint_url"),
            ("RAIOX_MODEL", "model"),
            ("RAIOX_PRETRAINED", "pretrained"),
            ("RAIOX_STAFF_PASSWORD", "staff_password"),
            ("RAIOX_JOTFORM_FILE_HOSTS", "jotform_file_hosts"),
            ("RAIOX_JOTFORM_API_KEY", "jotform_api_key"),
            ("RAIOX_RESULT_WEBHOOK_URL", "result_webhook_url"),
        ]:
            if (v := get(name)) is not None:
                kwargs[attr] = v
        for name, attr, choices in [
            ("RAIOX_DEVICE", "device", ("auto", "cpu", "cuda")),
            ("RAIOX_PRECISION", "precision", ("auto", "fp32")),
            ("RAIOX_LOG_FORMAT", "log_format", ("text", "json")),
            ("RAIOX_ADAPTER", "adapter", ("on", "off")),
            ("RAIOX_INDEX_TYPE", "index_type", ("vector", "halfvec")),
        ]:
            if (v := get(name)) is not None:
                if v not in choices:
                    raise ConfigError(f"{name} must be {', '.join(choices[:-1])} or {choices[-1]}, not {v!r}.")
                kwargs[attr] = v
        for name, attr in [("RAIOX_UNTRAINED_FALLBACK", "untrained_fallback"), ("RAIOX_MATCH_BATCHING", "match_batching"),
                           ("RAIOX_NUMBA_WARMUP", "numba_warmup")]:
            if (v := get(name)) is not None:
                if v.lower() not in _BOOLEANS:
                    raise ConfigError(f"{name} must be 1 or 0 (on or off), not {v!r}.")
                kwargs[attr] = _BOOLEANS[v.lower()]
        for name, attr, kind, low, high in [
            ("RAIOX_MAX_UPLOAD_MB", "max_upload_mb", float, 0.001, 10_000),
            ("RAIOX_MAX_PIXELS", "max_pixels", int, 1024, 10**10),
            ("RAIOX_MATCH_THRESHOLD", "match_threshold", float, 0.0, 1.0),
            ("RAIOX_POOL_MAX_SIZE", "pool_max_size", int, 2, 1000),
            ("RAIOX_DB_TIMEOUT_S", "db_timeout_s", float, 0.1, 3600),
            ("RAIOX_API_RATE_PER_MIN", "api_rate_per_min", int, 1, 1_000_000),
            ("RAIOX_JOTFORM_TIMEOUT_S", "jotform_timeout_s", float, 0.1, 600),
            ("RAIOX_TARGET_PRECISION", "target_precision", float, 0.5, 1.0),
            ("RAIOX_TARGET_RECALL", "target_recall", float, 0.5, 1.0),
            ("RAIOX_MATCH_BATCH_WINDOW_MS", "match_batch_window_ms", float, 0.0, 1000.0),
            ("RAIOX_MATCH_BATCH_MAX", "match_batch_max", int, 1, 256),
            ("RAIOX_MATCH_QUEUE", "match_queue", int, 1, 100_000),
        ]:
            if (v := get(name)) is None:
                continue
            try:
                value = kind(v)
            except ValueError:
                raise ConfigError(f"{name} must be a number, not {v!r}.") from None
            if not low <= value <= high:
                raise ConfigError(f"{name} must be between {low} and {high}, not {v}.")
            kwargs[attr] = value
        settings = cls(**kwargs, match_threshold_set="match_threshold" in kwargs)
        try:
            HostList.parse(settings.jotform_file_hosts)
        except ValueError as exc:
            raise ConfigError(f"RAIOX_JOTFORM_FILE_HOSTS is a comma-separated list of host or host:port, {exc}.") from None
        return settings

    def file_fetcher(self) -> Fetcher:
        """The downloader of a web form's uploads under these settings (allowed hosts, size limit, timeout)."""
        headers = (("APIKEY", self.jotform_api_key),) if self.jotform_api_key else ()
        return Fetcher(HostList.parse(self.jotform_file_hosts), self.max_upload_bytes, self.jotform_timeout_s, headers)
