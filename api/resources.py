"""The API's resources: database, storage and model, loaded once at start-up, and whether they are ready."""

from __future__ import annotations

import functools
import logging
import threading

from raiox_core.adapter import with_active_adapter
from raiox_core.batching import Admission, BatchingEncoder
from raiox_core.config import Settings
from raiox_core.db import Database, Filters, open_database
from raiox_core.errors import RaioxError
from raiox_core.images import ImageLimits
from raiox_core.match import match_files
from raiox_core.threshold import ThresholdPolicy
from raiox_core.model_state import ModelState, load_model_state
from raiox_core.storage import Storage, open_storage

from .errors import ApiError, not_ready

log = logging.getLogger(__name__)


class Resources:
    """Opened in a background thread at start-up, so that /livez answers at once and /readyz says when
    the model is in; the database is opened again on demand if it was down at start-up."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.limits = ImageLimits.from_settings(settings)
        self.model: ModelState | None = None
        self._db: Database | None = None
        self._storage: Storage | None = None
        self._lock = threading.Lock()
        self._loaded = threading.Event()
        self._encoder: BatchingEncoder | None = None
        self.on_batch = None  # called with each encoder batch's size (the app sets it to the metrics')
        self.match_admission = Admission(settings.match_queue)

    def start(self) -> None:
        threading.Thread(target=self._load, name="raiox-api-load", daemon=True).start()

    def _load(self) -> None:
        try:
            for opener in (lambda: self.db, lambda: self.storage):
                try:
                    opener()
                except RaioxError as exc:  # retried on demand; /readyz says why meanwhile
                    log.error("%s", exc)
            # Never raises: unavailable says why. An adapter adopted later applies after a restart.
            model = with_active_adapter(load_model_state(self.settings), lambda: self.db, self.settings)
            if model.usable and self.settings.match_batching:
                s = self.settings
                self._encoder = BatchingEncoder(model.embedder, window_ms=s.match_batch_window_ms,
                                                max_batch=s.match_batch_max, max_queue=s.match_queue,
                                                on_batch=lambda size: self.on_batch and self.on_batch(size))
            self.model = model  # last: /readyz and the routes see the model only with its encoder
        except Exception:
            log.exception("Loading the API's resources failed")
        finally:
            self._loaded.set()

    @property
    def db(self) -> Database:
        with self._lock:
            if self._db is None:
                self._db = open_database(self.settings)
            return self._db

    @property
    def storage(self) -> Storage:
        with self._lock:
            if self._storage is None:
                self._storage = open_storage(self.settings)
            return self._storage

    @property
    def embedder(self):
        """The loaded embedder, or 503: still loading, or unavailable with the reason."""
        if self.model is None:
            raise not_ready("The model is still loading; retry after the Retry-After seconds.")
        if not self.model.usable:
            raise not_ready(self.model.message)
        return self.model.embedder

    @property
    def match_encoder(self):
        """What matches encode with: the batching queue over the embedder (RAIOX_MATCH_BATCHING=off: the embedder)."""
        embedder = self.embedder
        return self._encoder or embedder

    def matcher(self, k: int = 3, filters: Filters = Filters()):
        """match_files bound to this process's database, model, limits and threshold: what /v1/match and the
        webhook both run, so that both answer alike."""
        encoder = self.match_encoder  # 503 while the model loads
        return functools.partial(match_files, limits=self.limits, db=self.db, embedder=lambda: encoder,
                                 threshold=ThresholdPolicy(self.settings, self.db), k=k, filters=filters)

    def checks(self) -> dict[str, str | None]:
        """check -> None when it passes, else the one-sentence reason (for /readyz)."""
        found: dict[str, str | None] = {}
        for name, probe in (("database", lambda: self.db.ping()), ("storage", lambda: self.storage.check_writable()),
                            ("model", lambda: self.embedder)):
            try:
                probe()
                found[name] = None
            except RaioxError as exc:
                found[name] = str(exc)
            except ApiError as exc:
                found[name] = exc.message
        return found

    def close(self) -> None:
        if self._encoder is not None:
            self._encoder.close()
        if self._db is not None:
            self._db.close()
