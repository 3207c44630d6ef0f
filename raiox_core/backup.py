"""Backup and restore: references, their vectors (every embedding_model) and images in one portable zip archive.

Archive layout (format "raiox-backup", version 1), readable with any zip tool, json and numpy:
  manifest.json        format, version, created_at, counts, one entry per embedding_model, and missing_images: the
                       references left out because their stored image was missing (labels, sha256, old id)
  references.jsonl     one reference per line: labels, file name, sha256, size, source; line n is reference n
  vectors/NNN.npy      float32 (count, dim) of one embedding_model; vectors/NNN.refs.npy: int32 line numbers
  images/<sha256>.png  the stored, normalised image
No pg_dump and no database ids: restore works into the embedded or an external PostgreSQL, any storage,
and assigns new ids. Restore checks the whole archive first (every member inflated only as far as it can
legitimately be, every image against its sha256), then adds the references in bulk through
references.add_many: rows and vectors are committed only after their images are stored; references
already present are skipped (their image is put back if it was lost), so running it again changes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import re
import zipfile
import zlib
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from psycopg.rows import dict_row

from .db import Database, Filters, named_queries
from .errors import BackupError, StorageError
from .files import atomic_file
from .images import NORMALISED_SIDE, _encode_png, _pixel_hash  # the exact hash and clean encoding ingestion uses
from .naming import Labels
from .references import BULK_ROWS, NewReference, add_many, restore_missing_image
from .storage import REFERENCE_PREFIX, Storage, reference_key

Progress = Callable[[int, int, str], None]  # (done, total, stage)

FORMAT, VERSION = "raiox-backup", 1
MANIFEST, REFERENCES = "manifest.json", "references.jsonl"
SOURCES = ("upload", "synthetic", "restore")  # the schema's CHECK on reference_implants.source
MAX_DIM = 2_000  # pgvector's limit for an HNSW-indexed vector: restore indexes every model
# What each member can legitimately hold, so that a hostile archive cannot fill memory: every member is
# read through a stream that stops one byte past its bound (its header's size may lie). A normalised
# 512x512 grey PNG is well under 1 MB even when incompressible; a manifest is a few kB plus one record
# per missing image; a record is a few hundred bytes (labels, a file name of at most 255 characters).
MAX_IMAGE_BYTES, MAX_MANIFEST_BYTES, MAX_RECORD_BYTES, NPY_HEADER_BYTES = 8 << 20, 16 << 20, 8 << 10, 4096
# float32 embeddings barely deflate (about 1.1x): a vectors member inflating far more than that is a bomb,
# however many references the manifest claims. This bounds the memory vectors take by the archive's size.
MAX_VECTOR_RATIO = 8
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TEXT_FIELDS = ("manufacturer", "model", "source_filename", "source")


def _image_member(sha256: str) -> str:
    return f"images/{sha256}.png"


# -- backup ---------------------------------------------------------------------------------------


def _snapshot(db: Database) -> tuple[list[dict], dict[str, list[dict]]]:
    """All references and every model's vectors, read in one REPEATABLE READ transaction (a consistent cut)."""
    queries = named_queries()
    with db.connection() as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cur = conn.cursor(row_factory=dict_row)
        cur.execute(queries["list-references"], {**Filters().params(), "limit": None, "offset": 0})
        references = cur.fetchall()
        embedding_models = [r["embedding_model"] for r in cur.execute(queries["count-by-embedding-model"]).fetchall()]
        vectors = {m: cur.execute(queries["embeddings-for-model"], {"embedding_model": m}).fetchall() for m in embedding_models}
    return references, vectors


def backup(db: Database, storage: Storage, path: Path, progress: Progress | None = None) -> dict:
    """Write every reference, its vectors and its image to the zip archive `path`.

    The archive is written beside `path` and renamed into place at the end, so a failed backup never
    leaves a partial file under that name. A reference whose stored image is missing is left out and
    listed in the manifest's missing_images, so the archive restores the rest. Returns
    {"references": n, "vectors": m, "missing": [ids of the references left out]}.
    """
    path = Path(path)
    if path.is_dir():
        raise BackupError(f"{path} is a folder; give a file name for the backup, e.g. raiox-backup.zip.")
    references, by_model = _snapshot(db)
    total = len(references)
    if progress:
        progress(0, total, "images")
    try:
        with atomic_file(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as archive:
            kept, missing = [], []
            for done, ref in enumerate(references, 1):
                stored = _stored_image(storage, ref["object_key"])
                if stored is None:
                    missing.append(ref)
                else:
                    # Checked on the way out too: a corrupt stored image is found now, not at restore time.
                    png = _verified_png(stored, ref["sha256"], f"storage ({ref['object_key']})")
                    archive.writestr(_image_member(ref["sha256"]), png, zipfile.ZIP_STORED)  # PNG: compressed already
                    kept.append(ref)
                if progress:
                    progress(done, total, "images")
            line_of = {r["id"]: n for n, r in enumerate(kept)}
            models = []
            for embedding_model, rows in sorted(by_model.items()):
                rows = [r for r in rows if r["id"] in line_of]
                if not rows:
                    continue
                number = len(models)
                matrix = np.stack([r["embedding"] for r in rows])
                refs = np.array([line_of[r["id"]] for r in rows], dtype=np.int32)
                entry = {"model_id": embedding_model,  # the archive format's name (version 1)
                         "dim": int(matrix.shape[1]), "count": len(rows),
                         "vectors": f"vectors/{number:03d}.npy", "refs": f"vectors/{number:03d}.refs.npy"}
                archive.writestr(entry["vectors"], _npy(matrix))
                archive.writestr(entry["refs"], _npy(refs))
                models.append(entry)
            archive.writestr(REFERENCES, "".join(json.dumps(_record(r), ensure_ascii=False) + "\n" for r in kept))
            counts = {"references": len(kept), "vectors": sum(m["count"] for m in models)}
            manifest = {"format": FORMAT, "version": VERSION, "created_at": datetime.now(timezone.utc).isoformat(),
                        "counts": counts, "models": models,
                        "missing_images": [{"id": r["id"]} | _record(r) for r in missing]}
            archive.writestr(MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False))
    except OSError as exc:
        raise BackupError(f"Cannot write {path}: {exc.strerror or exc}.") from None
    if progress:
        progress(total, total, "done")
    return counts | {"missing": [r["id"] for r in missing]}


def _stored_image(storage: Storage, key: str) -> bytes | None:
    """The stored bytes under `key`, or None when there is no such object (storage that is down still raises)."""
    try:
        return storage.get(key)
    except StorageError:
        if storage.exists(key):
            raise
        return None


def _record(ref: dict) -> dict:
    return {
        "sha256": ref["sha256"], "manufacturer": ref["manufacturer"], "model": ref["model"],
        "diameter_mm": float(ref["diameter_mm"]), "source_filename": ref["source_filename"],
        "width": ref["width"], "height": ref["height"], "source": ref["source"],
        "created_at": ref["created_at"].isoformat(),  # for the record; restored rows get the restore time
        "group_id": ref["group_id"],  # absent in archives made before groups: read as none
    }


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _verified_png(png: bytes, sha256: str, where: str) -> bytes:
    """The normalised image re-encoded without any metadata, after checking its pixels hash to `sha256`."""
    try:
        with Image.open(io.BytesIO(png), formats=["PNG"]) as img:
            # Stored images are square 8-bit grey of at most NORMALISED_SIDE: anything else is not one of ours,
            # and checking the header first keeps a hostile archive from making us decode a huge image.
            if img.mode != "L" or img.width != img.height or not 0 < img.width <= NORMALISED_SIDE:
                raise ValueError("not a normalised image")
            img.load()
            matches = _pixel_hash(img) == sha256
            clean = _encode_png(img)
    except Exception:  # untrusted bytes: PIL raises many types
        matches = False
    if not matches:
        raise BackupError(f"The image of reference {sha256[:12]} in {where} is damaged: it does not match its checksum.")
    return clean


# -- restore --------------------------------------------------------------------------------------


def restore(db: Database, storage: Storage, path: Path, progress: Progress | None = None) -> dict:
    """Load an archive written by `backup`; returns {"restored": n, "skipped": m, "images_restored": k}
    (m: already present; k of them had lost their stored image, which the archive's copy put back).

    The whole archive is checked before anything is written: manifest, records, vectors, every member's
    zip checksum and every image against its sha256, each member inflated only as far as it can
    legitimately be. Then references are restored in bulk transactions (COPY), each all or nothing; a
    failure (storage or database down) stops the restore with a one-sentence error, and running it
    again resumes where it stopped.
    """
    path = Path(path)
    with _open_archive(path) as archive:
        name = path.name
        references, vectors = _read_archive(archive, name)
        total, restored, skipped, repaired = len(references), 0, 0, 0
        checked: dict[str, bytes] = {}  # sha256 -> digest of its member's bytes, when they are the clean PNG
        for done, record in enumerate(references, 1):  # one image in memory at a time
            png = _member(archive, _image_member(record["sha256"]), MAX_IMAGE_BYTES, name)
            if _verified_png(png, record["sha256"], name) == png:
                checked[record["sha256"]] = hashlib.sha256(png).digest()
            if progress:
                progress(done, total, "checking")
        stored = None  # the keys in storage, listed once if some reference is present already
        # One index build at the end instead of one graph insert per vector, when the archive is big enough.
        with db.bulk_load(Counter(m for vs in vectors for m in vs)):
            for start in range(0, total, BULK_ROWS):
                chunk = references[start : start + BULK_ROWS]
                known = db.existing([r["sha256"] for r in chunk])
                new = []
                for number, record in enumerate(chunk, start):
                    sha = record["sha256"]
                    if sha in known:
                        skipped += 1
                        stored = set(storage.list_keys(REFERENCE_PREFIX)) if stored is None else stored
                        if reference_key(sha) not in stored:  # lost its image: the archive's copy puts it back
                            repaired += restore_missing_image(db, storage, sha, _image(archive, sha, name, checked))
                    else:
                        new.append(_new_reference(record, vectors[number], _image(archive, sha, name, checked)))
                added = len(add_many(db, storage, new))  # one bulk transaction, all or nothing
                restored, skipped = restored + added, skipped + len(new) - added  # the rest restored meanwhile
                if progress:
                    progress(start + len(chunk), total, "restoring" if start + len(chunk) < total else "done")
    return {"restored": restored, "skipped": skipped, "images_restored": repaired}


def _new_reference(record: dict, vectors: dict[str, np.ndarray], png: bytes) -> NewReference:
    return NewReference(Labels(record["manufacturer"], record["model"], record["diameter_mm"]), record["sha256"],
                        record["width"], record["height"], png, record["source_filename"], record["source"], vectors,
                        record.get("group_id"))


def _image(archive: zipfile.ZipFile, sha256: str, name: str, checked: dict[str, bytes]) -> bytes:
    """The image to store: the member itself when its bytes are those the check found clean (no second
    decode), else decoded, checked and re-encoded again."""
    png = _member(archive, _image_member(sha256), MAX_IMAGE_BYTES, name)
    if checked.get(sha256) == hashlib.sha256(png).digest():
        return png
    return _verified_png(png, sha256, name)


@contextlib.contextmanager
def _open_archive(path: Path):
    if not path.is_file():
        raise BackupError(f"{path} does not exist or is not a file.")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise BackupError(f"{path.name} is not a Raiox backup: it is not a readable zip archive.") from None
    with archive:
        yield archive


def _damaged(name: str, detail: str) -> BackupError:
    return BackupError(f"{name} is damaged: {detail}.")


def _member(archive: zipfile.ZipFile, member: str, cap: int, name: str) -> bytes:
    """A member's bytes, checked against its zip checksum, never inflated past `cap` bytes.

    The size in the member's header is checked first (a bomb is refused without inflating it), but it
    can lie, so the stream is read only to cap + 1 bytes: what comes out is bounded either way.
    """
    with _reading(archive, member, cap, name) as f:
        data = f.read(cap + 1)
    if len(data) > cap:
        raise _damaged(name, f"{member[:80]!r} is implausibly large")
    return data


@contextlib.contextmanager
def _reading(archive: zipfile.ZipFile, member: str, cap: int, name: str):
    """An open member whose header claims at most `cap` bytes; read errors (a bad checksum) become BackupError."""
    try:
        info = archive.getinfo(member)
    except KeyError:
        raise _damaged(name, f"{member[:80]!r} is missing") from None
    if info.file_size > cap:
        raise _damaged(name, f"{member[:80]!r} is implausibly large")
    try:
        with archive.open(info) as f:
            yield f
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError):
        # A bad CRC, a truncated file, encryption or an unknown compression method.
        raise _damaged(name, f"{member[:80]!r} is corrupt or cannot be read") from None


def _read_archive(archive: zipfile.ZipFile, name: str) -> tuple[list[dict], list[dict[str, np.ndarray]]]:
    """Validated references and, per reference, {embedding_model: vector}; BackupError naming the first problem."""

    def damaged(detail: str) -> BackupError:
        return _damaged(name, detail)

    members = set(archive.namelist())
    if MANIFEST not in members:
        raise BackupError(f"{name} is not a Raiox backup: it has no {MANIFEST}.")
    try:
        manifest = json.loads(_member(archive, MANIFEST, MAX_MANIFEST_BYTES, name))
    except (ValueError, RecursionError):
        raise damaged(f"its {MANIFEST} cannot be read") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{name} is not a Raiox backup: its {MANIFEST} is of another format.")
    if manifest.get("version") != VERSION:
        raise BackupError(f"{name} is a Raiox backup of format version {manifest.get('version')!r}; "
                          f"this Raiox reads version {VERSION}.")
    counts = manifest.get("counts") if isinstance(manifest.get("counts"), dict) else {}
    claimed = counts.get("references")
    # Each reference has its own image member, so the count is bounded by what the zip's directory holds.
    if isinstance(claimed, bool) or not isinstance(claimed, int) or not 0 <= claimed <= len(members):
        raise damaged(f"{MANIFEST} counts {claimed!r} references")
    references = _read_records(archive, claimed, name)
    if claimed != len(references):
        raise damaged(f"{MANIFEST} counts {claimed!r} references, {REFERENCES} holds {len(references)}")
    if len({r["sha256"] for r in references}) != len(references):
        raise damaged("it lists the same image twice")
    missing = [r["sha256"] for r in references if _image_member(r["sha256"]) not in members]
    if missing:
        raise damaged(f"the image of reference {missing[0][:12]} is missing")
    vectors: list[dict[str, np.ndarray]] = [{} for _ in references]
    models = manifest.get("models")
    if not isinstance(models, list):
        raise damaged(f"{MANIFEST} has no list of models")
    for entry in models:
        embedding_model, matrix, refs = _read_model(archive, entry, len(references), name)
        for line, vector in zip(refs.tolist(), matrix):
            vectors[line][embedding_model] = vector
    if sum(len(v) for v in vectors) != counts.get("vectors"):
        raise damaged(f"{MANIFEST} counts {counts.get('vectors')!r} vectors, the archive holds {sum(len(v) for v in vectors)}")
    without = [r["sha256"] for r, v in zip(references, vectors) if not v]
    if without:
        raise damaged(f"reference {without[0][:12]} has no vector")
    return references, vectors


def _read_records(archive: zipfile.ZipFile, count: int, name: str) -> list[dict]:
    """The checked lines of references.jsonl, streamed: at most `count` records of MAX_RECORD_BYTES each."""
    records = []
    with _reading(archive, REFERENCES, (count + 1) * MAX_RECORD_BYTES, name) as f:
        while line := f.readline(MAX_RECORD_BYTES + 1):
            if len(line) > MAX_RECORD_BYTES or len(records) > count:
                raise _damaged(name, f"{REFERENCES} holds more or longer records than {MANIFEST} allows")
            if line.strip():
                try:
                    records.append(_check_record(json.loads(line)))
                except (ValueError, TypeError, KeyError, RecursionError) as exc:
                    raise _damaged(name, f"a record in {REFERENCES} is invalid ({exc})") from None
    return records


def _check_record(record) -> dict:
    """One references.jsonl line, with the types and ranges the database will accept; ValueError otherwise."""
    if not isinstance(record, dict):
        raise ValueError("not an object")
    sha = record["sha256"]
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise ValueError("sha256 is not 64 lowercase hex digits")
    for field in _TEXT_FIELDS:
        value = record[field]
        if not isinstance(value, str) or "\x00" in value:  # PostgreSQL text cannot hold NUL
            raise ValueError(f"{field} is not a text")
        if field != "source_filename" and not value.strip():
            raise ValueError(f"{field} is empty")
    if record["source"] not in SOURCES:
        raise ValueError(f"source {record['source']!r} is not one of {', '.join(SOURCES)}")
    diameter = record["diameter_mm"]
    if isinstance(diameter, bool) or not isinstance(diameter, (int, float)) or not 0 < diameter < math.inf:
        raise ValueError("diameter_mm is not a positive number")
    for field in ("width", "height"):
        if isinstance(record[field], bool) or not isinstance(record[field], int) or record[field] <= 0:
            raise ValueError(f"{field} is not a positive whole number")
    group = record.get("group_id")
    if group is not None and not (isinstance(group, str) and 0 < len(group) <= 200 and "\x00" not in group):
        raise ValueError("group_id is not a text of 1 to 200 characters")
    return record


def _read_model(archive: zipfile.ZipFile, entry, n_references: int, name: str) -> tuple[str, np.ndarray, np.ndarray]:
    """(embedding_model, float32 (count, dim) matrix, line numbers) of one manifest model entry, checked.

    Both files are read only as far as `count` vectors of `dim` floats (and `count` line numbers) go.
    """

    def damaged(detail: str) -> BackupError:
        return _damaged(name, detail)

    try:
        embedding_model, dim, count, vectors, refs_name = (entry[k] for k in ("model_id", "dim", "count", "vectors", "refs"))
    except (KeyError, TypeError):
        raise damaged("a model entry cannot be read") from None
    if not isinstance(embedding_model, str) or not embedding_model or type(dim) is not int or not 0 < dim <= MAX_DIM:
        raise damaged("a model entry has no valid embedding_model or dimension")
    if type(count) is not int or not 0 <= count <= n_references or not isinstance(vectors, str) \
            or not isinstance(refs_name, str):
        raise damaged(f"the entry of {embedding_model} names no valid count or files")
    info = archive.getinfo(vectors) if vectors in archive.namelist() else None
    if info is not None and info.file_size > MAX_VECTOR_RATIO * info.compress_size + NPY_HEADER_BYTES:
        raise damaged(f"{vectors[:80]!r} is implausibly large")
    try:
        matrix = np.load(io.BytesIO(_member(archive, vectors, count * dim * 4 + NPY_HEADER_BYTES, name)), allow_pickle=False)
        refs = np.load(io.BytesIO(_member(archive, refs_name, count * 8 + NPY_HEADER_BYTES, name)), allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise damaged(f"the vector files of {embedding_model} cannot be read") from None
    if matrix.dtype.kind != "f" or matrix.shape != (count, dim) or not np.isfinite(matrix).all():
        raise damaged(f"the vectors of {embedding_model} are not {count} finite {dim}-dimensional vectors")
    if refs.dtype.kind not in "iu" or refs.shape != (count,) or len(np.unique(refs)) != count or (
        count and not (0 <= refs.min() and refs.max() < n_references)
    ):
        raise damaged(f"the vectors of {embedding_model} point to references that are not in the archive")
    return embedding_model, matrix.astype(np.float32, copy=False), refs
