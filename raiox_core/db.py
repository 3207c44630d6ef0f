"""PostgreSQL + pgvector: connection pool, numbered migrations, and the queries in sql/queries.sql."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from pgvector.psycopg.vector import VectorBinaryLoader, VectorLoader
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg.types.numeric import FloatLoader
from psycopg_pool import ConnectionPool, PoolTimeout

from . import embedded_pg, packaged
from .errors import ConfigError, DatabaseUnavailable, DuplicateReference, InvalidInput, NotFound
from .redact import redact_url  # noqa: F401  (re-exported: db.redact_url is public)

log = logging.getLogger(__name__)

_MIGRATION_LOCK = 0x5241494F  # "RAIO": serialises migrations and index creation across processes
# Below this many candidate rows a filtered search scans exactly: pgvector 0.6 has no iterative index
# scans, so an HNSW scan followed by a selective WHERE could return fewer than k rows.
EXACT_SEARCH_MAX_ROWS = 20_000
# ef_construction 128, not pgvector's default 64: on 100k clustered vectors recall@10 at ef_search 40 / 100
# is 0.98 / 0.996 against 0.95 / 0.97 at 64, for a 1.6x longer build; m = 32 gains no more per ms of search.
# ef_search 100 costs ~2 ms more per search than 40, where a match spends ~70 ms in the encoder
# (bench/README.md, "HNSW parameters").
HNSW_M, HNSW_EF_CONSTRUCTION, DEFAULT_EF_SEARCH = 16, 128, 100
HNSW_PARAMS = {"m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION}  # as index_params reports them
# A filtered HNSW scan keeps the rows of its ef_search nearest that pass the filter: about ef_search *
# (candidates / rows) when the filter is unrelated to the vectors, none when the query's neighbourhood is all
# of other labels (at 1M clustered vectors one manufacturer of eight returned 0 rows for most queries, bench
# (c)). Such a search, one that returns fewer than k rows, is repeated as an exact scan.
FILTERED_EF_SEARCH = 400
TUNING_TTL_S = 60.0  # how long a process keeps the recall probe's ef_search before reading it again
REPLICA_RETRY_S = 30.0  # after a read replica failed, searches go to the primary this long before trying it again
# A write of at least BULK_MIN_VECTORS vectors that makes up at least BULK_SHARE of the model's vectors after
# it goes into the table without the model's index, built once at the end: inserting through a live HNSW
# graph costs several ms per vector, a build from scratch a fraction of one (bench (l), "Bulk writes").
BULK_MIN_VECTORS, BULK_SHARE = 2_000, 0.25
BULK_DROP_LOCK_TIMEOUT = "5s"  # a drop waits this long for running searches, else the write keeps the live index


PGVECTOR_HNSW_DEFAULTS = {"m": 16, "ef_construction": 64}  # what an index built without WITH (...) has
# What the index holds (RAIOX_INDEX_TYPE): full 32-bit vectors, or 16-bit halfvec ones (pgvector 0.7+), with
# the bytes per dimension and the operator class of each. The table always keeps the 32-bit vectors, and
# the similarity a search reports is computed from them.
INDEX_TYPES = {"vector": (4, "vector_cosine_ops"), "halfvec": (2, "halfvec_cosine_ops")}
HALFVEC_SINCE = (0, 7)


def _graph_bytes(rows: int, dim: int, index_type: str = "vector") -> int:
    """What an HNSW graph of `rows` vectors takes: the vectors plus ~40 bytes of links and tuple overhead per
    unit of m (bench (g): 260 MB for 100k 512-d vectors at m = 16)."""
    return rows * (dim * INDEX_TYPES[index_type][0] + 40 * HNSW_M)


def _size_index_build(conn, graph_bytes: int, *, local: bool) -> None:
    """Give an index build the memory its graph needs (pgvector builds on disk, several times slower, once the
    graph outgrows maintenance_work_mem, 64 MB by default: too little beyond ~25k vectors), never less than the
    server's setting nor more than a quarter of this machine's RAM; and no parallel workers. pgvector 0.6's
    parallel builds make graphs of uneven quality: at 100k clustered vectors, recall@10 at ef_search 100 was
    0.976-0.995 over the parallel builds measured and 0.997 built serially, which took twice as long on 2 cores
    (82 against 42 s; bench/README.md, "HNSW parameters"). A build is paid once, recall at every search."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    want_kb = min(graph_bytes * 5 // 4, ram // 4) // 1024
    (have_kb,) = conn.execute("SELECT setting::bigint FROM pg_settings WHERE name = 'maintenance_work_mem'").fetchone()
    scope = sql.SQL("SET LOCAL" if local else "SET")
    conn.execute(sql.SQL("{} maintenance_work_mem = {}").format(scope, sql.Literal(f"{max(want_kb, have_kb)}kB")))
    conn.execute(sql.SQL("{} max_parallel_maintenance_workers = 0").format(scope))


def _index_options(conn, name: str) -> list[str] | None:
    """The index's storage options ("m=16", ...; [] when built with the defaults), or None if it does not exist."""
    row = conn.execute("SELECT reloptions FROM pg_class WHERE relname = %s AND relkind = 'i'", (name,)).fetchone()
    return None if row is None else row[0] or []


def _index_name(embedding_model: str, index_type: str = "vector") -> str:
    """One index per model and index type: switching RAIOX_INDEX_TYPE builds the other one, never reuses it."""
    name = "embeddings_hnsw_" + hashlib.sha256(embedding_model.encode()).hexdigest()[:16]
    return name if index_type == "vector" else f"{name}_{index_type}"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


@dataclass(frozen=True)
class Filters:
    """Optional restrictions on which references are searched or listed."""

    manufacturer: str | None = None
    model: str | None = None
    diameter_min: float | None = None
    diameter_max: float | None = None
    text: str | None = None

    def params(self) -> dict[str, Any]:
        return {k: (v if v not in ("", None) else None) for k, v in self.__dict__.items()}

    def active(self) -> dict[str, Any]:
        return {k: v for k, v in self.params().items() if v is not None}


@lru_cache(maxsize=1)
def named_queries() -> dict[str, str]:
    """`-- name: x` blocks of sql/queries.sql, by name, with the shared filters put in where they are named."""
    text = packaged.sql_text("queries.sql")
    blocks = re.split(r"^-- name: ([\w-]+)\s*$", text, flags=re.M)
    queries = {name: body.strip() for name, body in zip(blocks[1::2], blocks[2::2])}
    filters = "(" + _without_comments(queries.pop("reference-filters")) + ")"
    return {name: body.replace("/* reference-filters */", filters) for name, body in queries.items()}


def _without_comments(body: str) -> str:
    return "\n".join(line for line in body.splitlines() if not line.lstrip().startswith("--"))


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of the numbered files in sql/, in order."""
    return [(int(name[:3]), name, packaged.sql_text(name)) for name in packaged.migration_names()]


class _VectorAsArray(VectorBinaryLoader):
    """pgvector values as native float32 arrays, the type every caller computes with."""

    def load(self, data) -> np.ndarray:
        return super().load(data).to_numpy().astype(np.float32)


class _VectorTextAsArray(VectorLoader):
    def load(self, data) -> np.ndarray:
        return super().load(data).to_numpy().astype(np.float32)


def _configure(conn: psycopg.Connection) -> None:
    register_vector(conn)
    conn.adapters.register_loader("vector", _VectorTextAsArray)
    conn.adapters.register_loader("vector", _VectorAsArray)
    conn.adapters.register_loader("numeric", FloatLoader)  # diameters: numeric(4,2) 3.75 -> float 3.75


def migrate(url: str, timeout_s: float = 10.0) -> list[str]:
    """Apply the numbered sql/ files not yet recorded; safe when several processes start at once.

    Runs on its own connection before the pool opens, because the pool's connections can only register
    the vector type once `CREATE EXTENSION vector` has run.
    """
    applied: list[str] = []
    with psycopg.connect(url, connect_timeout=max(1, int(timeout_s))) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
        for version, name, body in migrations():
            if version not in done:
                conn.execute(body)
                conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
                applied.append(name)
    return applied


def _pool(url: str, max_size: int, timeout_s: float, name: str) -> ConnectionPool:
    pool = ConnectionPool(
        url,
        min_size=1,
        max_size=max_size,
        timeout=timeout_s,
        # Never prepared: a prepared statement may get a generic plan, which keeps the NULL filters of
        # sql/queries.sql and cannot match a model's partial index; unprepared ones are planned per call.
        kwargs={"connect_timeout": max(1, int(timeout_s)), "autocommit": False, "prepare_threshold": None},
        configure=_configure,
        check=lambda conn: _check_connection(pool, conn),  # drops dead connections so we recover after an outage
        # The pool's background reconnection backs off exponentially (up to minutes after a long outage);
        # giving it up after one timeout lets the next request try at once, so recovery follows the server.
        reconnect_timeout=timeout_s,
        open=False,
        name=name,
    )
    pool.open(wait=False)
    return pool


def _check_connection(pool: ConnectionPool, conn: psycopg.Connection) -> None:
    """Test a connection before lending it; the first dead one has every idle connection tested."""
    try:
        ConnectionPool.check_connection(conn)
    except Exception:
        # One dead connection usually means all of them (a restart, a failover, terminated backends).
        # Replace the idle ones at once: met one by one, each costs a growing back-off delay, and a warm
        # pool of 8 would make requests time out for a while after the server is back.
        pool.check()
        raise


@contextmanager
def _lent(pool: ConnectionPool, description: str) -> Iterator[psycopg.Connection]:
    """A connection of `pool` inside a transaction; connection failures become DatabaseUnavailable."""
    try:
        with pool.connection() as conn:
            with conn.transaction():
                yield conn
    except PoolTimeout:
        raise DatabaseUnavailable(f"Cannot reach the database at {description}; check that it is running and reachable.") from None
    except psycopg.OperationalError as exc:
        if isinstance(exc, psycopg.errors.QueryCanceled):
            raise DatabaseUnavailable("The database took too long to answer; try again.") from None
        if isinstance(exc, psycopg.errors.SerializationFailure):  # an OperationalError, yet the server is up
            raise ReplayConflict(f"The database at {description} cancelled the query for a conflict with its"
                                 " replication; try again.") from None
        raise DatabaseUnavailable(f"Lost the connection to the database at {description}; try again.") from None


class ReplayConflict(DatabaseUnavailable):
    """SQLSTATE 40001: on a standby, a query cancelled because it held back the replay of the primary's WAL."""


class Database:
    """A pooled connection to PostgreSQL with pgvector; every public method is one short transaction."""

    def __init__(self, url: str, *, description: str, max_size: int = 8, timeout_s: float = 10.0, server=None,
                 index_type: str = "vector", read_url: str | None = None, read_description: str | None = None):
        self.url = url
        self.index_type = index_type  # see INDEX_TYPES; check_index_type says whether the server can
        self.description = description  # shown to users: never contains a password
        self._server = server  # keeps the embedded server alive as long as this object
        self._indexed_models: set[str] = set()
        self._deferred: dict[str, int] = {}  # model -> open bulk_load blocks that dropped (or hold off) its index
        self._lock = threading.Lock()
        self._tunings: dict[str, tuple[float, dict | None]] = {}  # model -> (read at, recall probe's row)
        self.pool = _pool(url, max_size, timeout_s, "raiox")
        # A read replica takes the similarity searches, the bulk of the load; everything else (writes, the
        # match log, the recall probe's record, counts) stays on the primary. None: no replica.
        self.read_description = read_description or "the read replica"
        self.read_pool = _pool(read_url, max_size, timeout_s, "raiox-read") if read_url else None
        self._replica_failed_at = -math.inf

    def close(self) -> None:
        self.pool.close()
        if self.read_pool is not None:
            self.read_pool.close()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection inside a transaction; connection failures become DatabaseUnavailable."""
        with _lent(self.pool, self.description) as conn:
            yield conn

    def ping(self, timeout_s: float = 2.0) -> None:
        """A round trip on a new connection within `timeout_s`: DatabaseUnavailable now, not when a cache expires.

        Not a pooled connection: a query on one has no client-side deadline, so a server that stopped
        answering (frozen, or a network that drops packets) would hang the caller instead of failing.
        """
        try:
            with psycopg.connect(self.url, connect_timeout=max(1, round(timeout_s)), autocommit=True) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError:
            raise DatabaseUnavailable(f"Cannot reach the database at {self.description}; check that it is running and reachable.") from None

    def query(self, name: str, params: dict | None = None, *, rows: bool = True) -> list[dict]:
        with self.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            cur.execute(named_queries()[name], params or {})
            return cur.fetchall() if rows and cur.description else []

    # -- schema -----------------------------------------------------------------------------------

    def _index_name(self, embedding_model: str) -> str:
        return _index_name(embedding_model, self.index_type)

    def check_index_type(self) -> None:
        """ConfigError when the index type needs a newer pgvector than the server's."""
        if self.index_type != "halfvec":
            return
        version = self.pgvector_version()
        if _version(version) < HALFVEC_SINCE:
            raise ConfigError(f"RAIOX_INDEX_TYPE=halfvec needs pgvector 0.7 or newer, and the database at "
                              f"{self.description} has {version}; unset it to index full vectors.")

    def ensure_model_index(self, embedding_model: str, dim: int) -> None:
        """One partial HNSW cosine index per embedding_model, so searches of one model never wade through another's."""
        if embedding_model in self._indexed_models or embedding_model in self._deferred:
            return
        name = self._index_name(embedding_model)
        with self.connection() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            if _index_options(conn, name) is None:  # a build over vectors already there (a migrated or bulk-loaded table): size it
                (rows,) = conn.execute("SELECT count(*) FROM embeddings WHERE embedding_model = %s",
                                       (embedding_model,)).fetchone()
                _size_index_build(conn, _graph_bytes(rows, dim, self.index_type), local=True)
            conn.execute(
                sql.SQL(
                    "CREATE INDEX IF NOT EXISTS {name} ON embeddings USING hnsw ((embedding::{kind}({dim}))"
                    " {opclass}) WITH (m = {m}, ef_construction = {ef}) WHERE embedding_model = {embedding_model}"
                ).format(
                    name=sql.Identifier(name), dim=sql.Literal(dim), m=sql.Literal(HNSW_M),
                    kind=sql.SQL(self.index_type), opclass=sql.SQL(INDEX_TYPES[self.index_type][1]),
                    ef=sql.Literal(HNSW_EF_CONSTRUCTION), embedding_model=sql.Literal(embedding_model),
                )
            )
        with self._lock:
            self._indexed_models.add(embedding_model)

    @contextmanager
    def bulk_load(self, incoming: dict[str, int]) -> Iterator[None]:
        """A block that writes many vectors (embedding model -> how many): a model for which they are at least
        BULK_MIN_VECTORS and BULK_SHARE of its vectors after the write has its index dropped first and built
        once when the block ends, failed or not (or nested in another bulk_load: when the outermost ends).

        The block's own transactions stay all or nothing per reference. Meanwhile searches of that model scan
        exactly (right answers, slower) and other models keep their indexes. Killed before its end, the block
        leaves the model without an index: `raiox doctor` says so and `--repair` (or the next write) builds it.
        """
        deferred = [m for m, n in incoming.items() if m in self._deferred or self._worth_rebuilding(m, n)]
        deferred = [m for m in deferred if m in self._deferred or self._drop_index(m)]
        with self._lock:
            for embedding_model in deferred:
                self._deferred[embedding_model] = self._deferred.get(embedding_model, 0) + 1
        try:
            yield
        finally:
            for embedding_model in deferred:
                with self._lock:
                    self._deferred[embedding_model] -= 1
                    last = not self._deferred[embedding_model]
                    if last:
                        del self._deferred[embedding_model]
                if last:
                    self.build_missing_index(embedding_model)

    def _worth_rebuilding(self, embedding_model: str, incoming: int) -> bool:
        if incoming < BULK_MIN_VECTORS:
            return False
        (have,) = self.query("vector-count", {"embedding_model": embedding_model})
        return incoming >= BULK_SHARE * (int(have["n"]) + incoming)

    def _drop_index(self, embedding_model: str) -> bool:
        """Drop the model's index for a bulk write; False (the write goes through the live index) when a long
        transaction holds the table past BULK_DROP_LOCK_TIMEOUT."""
        try:
            with self.connection() as conn:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(BULK_DROP_LOCK_TIMEOUT)))
                conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(self._index_name(embedding_model))))
        except psycopg.errors.LockNotAvailable:
            return False
        with self._lock:
            self._indexed_models.discard(embedding_model)
        return True

    def build_missing_index(self, embedding_model: str) -> None:
        """Build the model's index if it has vectors and no index (after a bulk load, or one that was killed)."""
        with self._lock:
            self._indexed_models.discard(embedding_model)
        rows = self.query("vector-dim", {"embedding_model": embedding_model})
        if rows:
            self.ensure_model_index(embedding_model, rows[0]["dim"])

    def unindexed_models(self) -> dict[str, int]:
        """embedding_model -> vector count of each model with vectors but no index (not during this process's
        own bulk loads)."""
        counts = {r["embedding_model"]: r["count"] for r in self.query("count-by-embedding-model")}
        with self.connection() as conn:
            return {m: n for m, n in counts.items()
                    if m not in self._deferred and _index_options(conn, self._index_name(m)) is None}

    def index_params(self, embedding_model: str) -> dict[str, int] | None:
        """The model's HNSW index build parameters ({"m", "ef_construction"}), or None if it has no index."""
        with self.connection() as conn:
            options = _index_options(conn, self._index_name(embedding_model))
        if options is None:
            return None
        given = dict(option.split("=", 1) for option in options)
        return {key: int(given.get(key, default)) for key, default in PGVECTOR_HNSW_DEFAULTS.items()}

    def outdated_indexes(self) -> dict[str, dict[str, int]]:
        """embedding_model -> build parameters of each index built with other parameters than HNSW_PARAMS (an
        index is never rebuilt on its own: an older database keeps its graph until `rebuild_index`)."""
        found = {r["embedding_model"]: self.index_params(r["embedding_model"]) for r in self.query("count-by-embedding-model")}
        return {embedding_model: params for embedding_model, params in found.items() if params and params != HNSW_PARAMS}

    def rebuild_index(self, embedding_model: str) -> None:
        """Rebuild the model's index with the current parameters; searches and inserts go on meanwhile.

        The parameters are set on the index first (REINDEX builds with them) and put back if the rebuild
        fails, so `index_params` never claims a graph that was not built.
        """
        index = self._index_name(embedding_model)
        name = sql.Identifier(index)
        before = self.index_params(embedding_model)

        def set_params(conn, params: dict[str, int]) -> None:
            conn.execute(sql.SQL("ALTER INDEX {} SET (m = {}, ef_construction = {})").format(
                name, sql.Literal(params["m"]), sql.Literal(params["ef_construction"])))

        try:  # REINDEX CONCURRENTLY cannot run in a transaction block: its own autocommit connection
            with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
                (index_bytes,) = conn.execute("SELECT pg_relation_size(%s::regclass)", (index,)).fetchone()
                _size_index_build(conn, index_bytes, local=False)
                set_params(conn, HNSW_PARAMS)
                try:
                    conn.execute(sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(name))
                except psycopg.Error:
                    if not conn.closed:
                        set_params(conn, before)
                        # A failed concurrent rebuild leaves its unfinished copy behind, invalid: drop it.
                        conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                            sql.Identifier(index + "_ccnew")))
                    raise
        except psycopg.errors.QueryCanceled:
            raise DatabaseUnavailable("The database stopped the rebuild (a statement timeout?); the index is unchanged.") from None
        except psycopg.OperationalError:
            raise DatabaseUnavailable(f"Lost the connection to the database at {self.description}; try again.") from None

    # -- references ---------------------------------------------------------------------------------

    def existing(self, shas: list[str]) -> dict[str, int]:
        """sha256 -> reference id for the hashes already stored."""
        return {r["sha256"]: r["id"] for r in self.query("existing-shas", {"shas": list(shas)})}

    @contextmanager
    def inserting(self, reference: dict, vectors: dict[str, np.ndarray]) -> Iterator[int]:
        """Insert a reference and its vectors (embedding model -> vector), yield its id, commit when the
        caller's block succeeds.

        The caller stores the image inside the block, so a storage failure rolls the row back, and a
        concurrent insert of the same image waits on the image's lock and then raises DuplicateReference.
        The lock (see `image_lock`) is held until the commit, so a delete of the same image's stored object
        happens either before the block (and the block stores it again) or after the commit (and sees the row).
        """
        for embedding_model, v in vectors.items():
            self.ensure_model_index(embedding_model, len(v))
        try:
            with self.connection() as conn:
                conn.execute(named_queries()["lock-image"], {"sha256": reference["sha256"]})
                (ref_id,) = conn.execute(named_queries()["insert-reference"], {"group_id": None, **reference}).fetchone()
                conn.cursor().executemany(named_queries()["upsert-embedding"], [
                    {"reference_id": ref_id, "embedding_model": embedding_model, "dim": len(v), "embedding": v}
                    for embedding_model, v in vectors.items()])
                yield ref_id
        except psycopg.errors.UniqueViolation:
            found = self.existing([reference["sha256"]])
            raise DuplicateReference(found.get(reference["sha256"], -1)) from None

    def insert_many(self, references: list[dict], vectors: list[dict[str, np.ndarray]]) -> dict[str, int]:
        """Insert references and their vectors in one transaction, rows and vectors each with one binary
        COPY; returns sha256 -> id of those inserted (an image already a reference is skipped).

        The images' locks are taken first, in key order (two bulk inserts never wait on each other in a
        cycle), so that a concurrent delete or restore of one of these images does not interleave.
        """
        with self.bulk_load(Counter(m for vs in vectors for m in vs)):
            return self._insert_many(references, vectors)

    def _insert_many(self, references: list[dict], vectors: list[dict[str, np.ndarray]]) -> dict[str, int]:
        for embedding_model, dim in {(m, len(v)) for vs in vectors for m, v in vs.items()}:
            self.ensure_model_index(embedding_model, dim)
        queries = named_queries()
        columns = ("manufacturer", "model", "diameter_mm", "source_filename", "sha256", "object_key", "width",
                   "height", "source", "group_id")
        with self.connection() as conn:
            cur = conn.cursor()
            cur.execute(queries["lock-images"], {"shas": [r["sha256"] for r in references]})
            cur.execute(queries["create-incoming-references"])
            with cur.copy(queries["copy-incoming-references"]) as copy:
                copy.set_types(["text", "text", "float8", "text", "text", "text", "int4", "int4", "text", "text"])
                for r in references:
                    copy.write_row([r.get(c) for c in columns])  # group_id is optional
            inserted = dict(cur.execute(queries["insert-incoming-references"]).fetchall())
            self._copy_vectors(cur, [(inserted[r["sha256"]], embedding_model, v) for r, vs in zip(references, vectors)
                                     if r["sha256"] in inserted for embedding_model, v in vs.items()])
        return inserted

    def _copy_vectors(self, cur: psycopg.Cursor, rows: list[tuple[int, str, np.ndarray]]) -> None:
        """Upsert (reference id, embedding model, vector) rows through a binary COPY into a temporary table."""
        queries = named_queries()
        cur.execute(queries["create-incoming-vectors"])
        with cur.copy(queries["copy-incoming-vectors"]) as copy:
            copy.set_types(["int8", "text", "vector"])
            for row in rows:
                copy.write_row(row)
        cur.execute(queries["upsert-incoming-vectors"])

    @contextmanager
    def image_lock(self, sha256: str) -> Iterator[int | None]:
        """Hold the lock of one image hash for the block; yield the id of the reference of that image, or None.

        `inserting` takes the same lock before it adds a row, so during the block no row of this image is
        being added: the block may delete the image's stored object when None came (no reference needs
        it), or put it back when an id came, without racing an ingestion of the same image.
        """
        with self.connection() as conn:
            conn.execute(named_queries()["lock-image"], {"sha256": sha256})
            row = conn.execute(named_queries()["existing-shas"], {"shas": [sha256]}).fetchone()
            yield row[1] if row else None

    def reference_images(self) -> list[dict]:
        """id, sha256 and object_key of every reference, by id (to compare with what storage holds)."""
        return self.query("reference-images")

    def add_embeddings(self, embedding_model: str, vectors: dict[int, np.ndarray]) -> None:
        """Store (or replace) one embedding model's vectors for existing references, with one binary COPY;
        vectors of references deleted meanwhile are dropped."""
        if not vectors:
            return
        with self.bulk_load({embedding_model: len(vectors)}):
            self.ensure_model_index(embedding_model, len(next(iter(vectors.values()))))
            with self.connection() as conn:
                self._copy_vectors(conn.cursor(), [(i, embedding_model, v) for i, v in vectors.items()])

    def get(self, reference_id: int) -> dict:
        rows = self.query("get-reference", {"id": reference_id})
        if not rows:
            raise NotFound(f"There is no reference with id {reference_id}.")
        return rows[0]

    def list(self, filters: Filters = Filters(), limit: int = 100, offset: int = 0) -> list[dict]:
        return self.query("list-references", {**filters.params(), "limit": limit, "offset": offset})

    def label_variety(self, embedding_model: str, filters: Filters = Filters(),
                      seen: Iterable[tuple[str, str]] = ()) -> tuple[int, int]:
        """(manufacturers, manufacturer + model pairs), each counted up to 2, among the references a search of
        this model would see: a vote over only one of them is decided before the search.

        `seen`: (manufacturer, model) labels known to be among them (a search's neighbours). What they already
        show needs no query: two manufacturers answer (2, 2) at once, two models under a manufacturer filter
        (1, 2). Otherwise from the least and the greatest label (sql/queries.sql, label-bound), an index walk
        that is short unless few of the references have this model's vectors (README, "Search recall you can state").
        """
        seen = set(seen)
        seen_manufacturers = len({manufacturer for manufacturer, _ in seen})
        if seen_manufacturers > 1:
            return 2, 2
        if seen_manufacturers and filters.manufacturer and len(seen) > 1:
            return 1, 2
        params = {**filters.params(), "embedding_model": embedding_model, "only": None}

        def bounds(conn, column: str) -> tuple:
            return tuple(conn.execute(sql.SQL(named_queries()["label-bound"]).format(
                column=sql.Identifier(column), order=sql.SQL(order)), params).fetchone() or (None,)
                for order in ("ASC", "DESC"))

        with self.connection() as conn:
            (least,), (greatest,) = bounds(conn, "manufacturer")
            if least is None:
                return 0, 0
            if least != greatest:
                return 2, 2  # two manufacturers: two labels as well
            if len(seen) > 1:
                return 1, 2
            params["only"] = least
            (least,), (greatest,) = bounds(conn, "model")
        return 1, 1 if least == greatest else 2

    def count(self, filters: Filters = Filters()) -> int:
        return self.query("count-references", filters.params())[0]["count"]

    def delete(self, reference_id: int) -> str:
        """Delete a reference (its vectors cascade) and return its object key for the caller to remove."""
        rows = self.query("delete-reference", {"id": reference_id})
        if not rows:
            raise NotFound(f"There is no reference with id {reference_id}.")
        return rows[0]["object_key"]

    def update_labels(self, reference_id: int, manufacturer: str, model: str, diameter_mm: float) -> None:
        params = {"id": reference_id, "manufacturer": manufacturer, "model": model, "diameter_mm": diameter_mm}
        if not self.query("update-labels", params):
            raise NotFound(f"There is no reference with id {reference_id}.")

    def object_keys(self) -> set[str]:
        return {r["object_key"] for r in self.query("object-keys")}

    def stats(self) -> dict:
        """Counts for `raiox stats` and the sidebar."""
        by_manufacturer = {r["manufacturer"]: r["count"] for r in self.query("count-by-manufacturer")}
        return {
            "references": sum(by_manufacturer.values()),
            "by_manufacturer": by_manufacturer,
            "by_label": [(r["manufacturer"], r["model"], r["count"]) for r in self.query("count-by-label")],
            "embedding_models": {r["embedding_model"]: r["count"] for r in self.query("count-by-embedding-model")},
        }

    def missing_embeddings(self, embedding_model: str) -> list[dict]:
        return self.query("missing-embeddings", {"embedding_model": embedding_model})

    def embeddings(self, embedding_model: str) -> list[dict]:
        """Every reference with its vector for one model (for the explorer and evaluation).

        Fetched in binary: each vector arrives as raw float32 instead of 512 numbers in text parsed one by
        one, several times faster for the explorer's 10k-100k rows (see bench/README.md).
        """
        with self.connection() as conn:
            cur = conn.cursor(row_factory=dict_row, binary=True)
            cur.execute(named_queries()["embeddings-for-model"], {"embedding_model": embedding_model})
            return cur.fetchall()

    def vector(self, reference_id: int, embedding_model: str) -> np.ndarray | None:
        """One reference's stored vector for a model; None when it has none (not embedded by that model)."""
        rows = self.query("reference-vector", {"id": reference_id, "embedding_model": embedding_model})
        if not rows:
            return None
        return rows[0]["embedding"]

    # -- search -------------------------------------------------------------------------------------

    def search(self, vector: np.ndarray, embedding_model: str, k: int = 3, filters: Filters = Filters(), *,
               ef_search: int | None = None, exact: bool = False) -> list[dict]:
        """The k nearest references by cosine similarity among one model's vectors.

        `ef_search` overrides the HNSW candidate list size (recall against speed; the benchmark measures
        it); `exact` forces a full scan (ground truth for recall, and evaluation). A filtered index search
        that finds fewer than k rows is repeated exactly (see FILTERED_EF_SEARCH).
        """
        params = {**filters.params(), "q": np.asarray(vector, dtype=np.float32), "k": k}
        active = filters.active()
        exact = exact or bool(active) and self.count(filters) <= EXACT_SEARCH_MAX_ROWS
        tuned = None if exact or ef_search else self._tuning(embedding_model)  # the recall probe's choice
        exact = exact or bool(tuned and tuned["exact"])
        # An exact scan orders by the full vectors (the ground truth); the index's order is its own type's.
        query = sql.SQL(named_queries()["search"]).format(
            dim=sql.Literal(len(vector)), embedding_model=sql.Literal(embedding_model),
            kind=sql.SQL("vector" if exact else self.index_type))
        needed = (tuned or {}).get("ef_search") or DEFAULT_EF_SEARCH
        ef = max(ef_search or (max(FILTERED_EF_SEARCH, needed) if active else needed), k)

        def run(connection) -> list[dict]:
            with connection() as conn:
                if exact:
                    conn.execute("SET LOCAL enable_indexscan = off")
                else:
                    conn.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(ef)))
                cur = conn.cursor(row_factory=dict_row)
                cur.execute(query, params)
                return cur.fetchall()

        rows = self._on_replica(run)
        if active and not exact and len(rows) < k:
            return self.search(vector, embedding_model, k, filters, exact=True)
        return rows

    def _on_replica(self, run):
        """run(connection) on the read replica when there is one, else (or while it cannot be reached) on
        the primary. A replica that fails is passed over for REPLICA_RETRY_S; a search a standby cancels
        for a conflict with its replay (SQLSTATE 40001) is answered by the primary too."""
        if self.read_pool is None or time.monotonic() - self._replica_failed_at < REPLICA_RETRY_S:
            return run(self.connection)
        try:
            return run(lambda: _lent(self.read_pool, self.read_description))
        except ReplayConflict as exc:  # the replica works: only this search goes to the primary
            log.info("The replica cancelled a search, answered by the primary: %s", exc)
            return run(self.connection)
        except DatabaseUnavailable as exc:
            self._replica_failed_at = time.monotonic()
            log.warning("Searching on the primary for %.0f s: %s", REPLICA_RETRY_S, exc)
            return run(self.connection)

    def _tuning(self, embedding_model: str) -> dict | None:
        """The recall probe's row for the model, re-read at most every TUNING_TTL_S (another process may probe)."""
        now = time.monotonic()
        read_at, row = self._tunings.get(embedding_model, (-math.inf, None))
        if now - read_at > TUNING_TTL_S:
            rows = self.query("search-tuning", {"embedding_model": embedding_model})
            row = rows[0] if rows else None
            self._tunings[embedding_model] = (now, row)
        return row

    def forget_tuning(self) -> None:
        self._tunings.clear()

    def sample_vectors(self, embedding_model: str, n: int) -> list[tuple[int, np.ndarray]]:
        """(reference id, vector) of up to n stored vectors of the model, drawn at random."""
        with self.connection() as conn:
            cur = conn.cursor(binary=True)
            cur.execute(named_queries()["sample-vectors"], {"embedding_model": embedding_model, "n": n})
            return [(int(i), v) for i, v in cur.fetchall()]

    # -- match log ----------------------------------------------------------------------------------

    def log_match(self, *, query_sha256: str, embedding_model: str, k: int, filters: dict, results: list, confidence: float,
                  confident: bool, confidence_of: str | None = None, answer: str | None = None) -> int:
        rows = self.query("insert-match-log", {
            "query_sha256": query_sha256, "embedding_model": embedding_model, "k": k, "filters": Jsonb(filters),
            "results": Jsonb(results), "confidence": confidence, "confident": confident,
            "confidence_of": confidence_of, "answer": answer,
        })
        return rows[0]["id"]

    def set_feedback(self, log_id: int, feedback: str, feedback_label: str | None = None) -> None:
        if feedback not in ("correct", "wrong"):
            raise InvalidInput(f"Feedback is 'correct' or 'wrong', not {feedback!r}.")
        if not self.query("set-feedback", {"id": log_id, "feedback": feedback, "feedback_label": feedback_label}):
            raise NotFound(f"There is no match with id {log_id}.")

    def match_log(self, log_id: int) -> dict:
        rows = self.query("get-match-log", {"id": log_id})
        if not rows:
            raise NotFound(f"There is no match with id {log_id}.")
        return rows[0]

    def pgvector_version(self) -> str:
        with self.connection() as conn:
            row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        return row[0] if row else "not installed"


    def replica_state(self) -> str | None:
        """What `raiox doctor` says of the read replica: None without one; raises DatabaseUnavailable when it
        cannot be reached (searches then use the primary)."""
        if self.read_pool is None:
            return None
        with _lent(self.read_pool, self.read_description) as conn:
            standby, lag = conn.execute("SELECT pg_is_in_recovery(), "
                                        "extract(epoch FROM now() - pg_last_xact_replay_timestamp())").fetchone()
        if not standby:
            return f"{self.read_description}: not a standby (searches go there all the same)"
        since = "nothing replayed yet" if lag is None else f"last change replayed {float(lag):.1f} s ago"
        return f"{self.read_description}, a standby taking the searches ({since})"


def _check_url(name: str, url: str) -> None:
    try:
        conninfo_to_dict(url)
    except psycopg.ProgrammingError:  # psycopg's message quotes the URL, password included: never shown
        raise ConfigError(f"{name} is not a valid PostgreSQL URL; use postgresql://user:password@host:port/database.") from None


def open_database(settings) -> Database:
    """Connect (starting the embedded server when no URL is set) and bring the schema up to date."""
    read_url = settings.database_read_url
    if read_url and not settings.database_url:
        raise ConfigError("RAIOX_DATABASE_READ_URL is a replica of RAIOX_DATABASE_URL's database: set that too "
                          "(the embedded database has no replica).")
    if read_url:
        _check_url("RAIOX_DATABASE_READ_URL", read_url)
    if settings.database_url:
        url, server = settings.database_url, None
        _check_url("RAIOX_DATABASE_URL", url)
        description = redact_url(url)
    else:
        server = embedded_pg.start(settings.data_dir)
        url = server.get_uri()
        description = f"embedded PostgreSQL in {Path(settings.data_dir) / 'pg'}"
    try:
        migrate(url, settings.db_timeout_s)
    except psycopg.OperationalError:
        raise DatabaseUnavailable(f"Cannot reach the database at {description}; check that it is running and reachable.") from None
    except psycopg.Error as exc:  # e.g. no pgvector on the server, or no right to create tables
        reason = (exc.diag.message_primary or type(exc).__name__).rstrip(".")
        raise DatabaseUnavailable(f"The database at {description} refused to set up Raiox's tables ({reason}).") from None
    db = Database(url, description=description, max_size=settings.pool_max_size, timeout_s=settings.db_timeout_s,
                  server=server, index_type=settings.index_type, read_url=read_url,
                  read_description=redact_url(read_url) if read_url else None)
    try:
        db.check_index_type()
    except ConfigError:
        db.close()
        raise
    return db
