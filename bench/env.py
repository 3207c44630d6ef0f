"""The bench's private world: its own embedded PostgreSQL, local storage and data dir, and the model.

Nothing touches the user's database or images: everything lives in throw-away directories (made with
tempfile.mkdtemp, not under a private test dir, because pgserver runs postgres as its own user).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from psycopg import sql

from raiox_core import embedded_pg
from raiox_core.config import Settings
from raiox_core.db import Database, migrate
from raiox_core.embedder import Embedder, load_embedder
from raiox_core.errors import ModelLoadError
from raiox_core.storage import LocalStorage

from .data import Labels

log = logging.getLogger(__name__)


@dataclass
class BenchEnv:
    settings: Settings  # points at the bench's own database and data dir
    server: object
    db: Database
    embedder: Embedder
    root: Path
    notes: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, settings: Settings) -> "BenchEnv":
        root = Path(tempfile.mkdtemp(prefix="raiox-bench-"))
        root.chmod(0o755)
        embedded_pg.postgres_server_class()  # imports pgserver without platformdirs' RuntimeDirWarning
        import pgserver

        server = pgserver.get_server(tempfile.mkdtemp(prefix="raiox-bench-pg-"), cleanup_mode="delete")
        try:
            return cls._open(settings, root, server)
        except BaseException:
            server.cleanup()
            shutil.rmtree(root, ignore_errors=True)
            raise

    @classmethod
    def _open(cls, settings: Settings, root: Path, server) -> "BenchEnv":
        embedded_pg.tune(server, restart=True)  # the embedded default's shared_buffers (the server is new)
        url = server.get_uri()
        migrate(url)
        # The CPU path, always: the targets are for CPU, and the int8 encoder is CPU-only.
        bench_settings = settings.with_(data_dir=root / "data", database_url=url, storage_url=None, device="cpu")
        # As the app's own embedded database: index builds get the memory Raiox gives them (and are serial, as its are).
        db = Database(url, description="bench PostgreSQL", max_size=4, server=server)
        notes = []
        try:
            embedder = load_embedder(settings.model, settings.pretrained, bench_settings.device, settings.precision)
        except ModelLoadError as exc:
            # Untrained weights run at exactly the same speed, so the figures stay valid.
            notes.append(f"Weights {settings.pretrained!r} unavailable ({exc}); measured with untrained weights.")
            embedder = load_embedder(settings.model, "none", bench_settings.device, settings.precision)
            bench_settings = bench_settings.with_(pretrained="none")
        return cls(bench_settings, server, db, embedder, root, notes)

    def close(self) -> None:
        self.db.close()
        try:
            self.server.cleanup()
        except Exception as exc:  # a stuck postgres must not hide the figures already measured
            log.warning("Could not stop the bench PostgreSQL: %s", exc)
        shutil.rmtree(self.root, ignore_errors=True)

    def storage(self, name: str) -> LocalStorage:
        """A fresh local object store under the bench dir."""
        path = self.root / "objects" / name
        shutil.rmtree(path, ignore_errors=True)
        return LocalStorage(path)

    def fresh_db(self) -> Database:
        """A new Database on the same server, so no index is assumed to exist from earlier sections."""
        self.db.close()
        self.db = Database(self.db.pool.conninfo, description="bench PostgreSQL", max_size=4)
        return self.db

    def model_view(self, embedding_model: str) -> Embedder:
        """The loaded model under another embedding_model: its vectors live in their own partition and index."""
        return replace(self.embedder, embedding_model=embedding_model)

    # -- bulk data ------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Empty every table and drop the per-model vector indexes (bulk loads then build them afresh)."""
        with self.db.connection() as conn:
            conn.execute("TRUNCATE reference_implants, embeddings, match_log RESTART IDENTITY CASCADE")
            names = [n for (n,) in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'embeddings' AND indexdef ILIKE '%% hnsw %%'")]
            for name in names:
                conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
        self.fresh_db()

    def copy_references(self, labels: Labels, start_id: int = 1) -> None:
        """Fully labelled reference rows by binary COPY (ids start_id..), then the id sequence moved past them."""
        with self.db.connection() as conn, conn.cursor() as cur:
            with cur.copy("COPY reference_implants (id, manufacturer, model, diameter_mm, source_filename, sha256,"
                          " object_key, width, height, source) FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "text", "text", "numeric", "text", "text", "text", "int4", "int4", "text"])  # text: bpchar's wire format
                for row in labels.rows(start_id):
                    copy.write_row((*row, 512, 512, "synthetic"))
            cur.execute("SELECT setval(pg_get_serial_sequence('reference_implants', 'id'),"
                        " (SELECT max(id) FROM reference_implants))")

    def copy_vectors(self, embedding_model: str, ids: np.ndarray, vectors: np.ndarray) -> None:
        """One model's vectors by binary COPY; the caller builds the index afterwards."""
        with self.db.connection() as conn, conn.cursor() as cur:
            with cur.copy("COPY embeddings (reference_id, embedding_model, dim, embedding) FROM STDIN WITH (FORMAT BINARY)") \
                    as copy:
                copy.set_types(["int8", "text", "int4", "vector"])
                dim = vectors.shape[1]
                for ref_id, vector in zip(ids.tolist(), vectors):
                    copy.write_row((ref_id, embedding_model, dim, vector))

    def build_index(self, embedding_model: str, dim: int) -> float:
        """Seconds to build the model's HNSW index over the rows already there, then ANALYZE."""
        start = time.perf_counter()
        self.db.ensure_model_index(embedding_model, dim)
        seconds = time.perf_counter() - start
        with self.db.connection() as conn:
            conn.execute("ANALYZE reference_implants")
            conn.execute("ANALYZE embeddings")
        return seconds
