"""Ingestion: files, folders and zip archives -> validated, deduplicated, stored, embedded references.

All or nothing per image: the row and its vector are inserted in a transaction that commits only after
the image is stored, and an image stored for a transaction that then fails is removed again.
"""

from __future__ import annotations

import io
import os
import re
import stat
import zipfile
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Iterable

from . import references
from .db import Database
from .embedder import Embedder
from .errors import DatabaseUnavailable, DuplicateReference, ImageRejected, NamingError, StorageError
from .images import ImageLimits, PreparedImage, prepare_image
from .naming import Labels, resolve_labels
from .storage import Storage

MAX_NAME_CHARS = 255
Progress = Callable[[int, int, str], None]  # (done, total, stage)
_SURROGATES = re.compile("[\ud800-\udfff]")


def as_text(name: str) -> str:
    """A file name as text that can be printed, stored in PostgreSQL and written as JSON.

    Python hands over the bytes of a name that is not valid UTF-8 as lone surrogates (os.fsdecode);
    each becomes the replacement character, so the file is shown, judged and stored like any other.
    """
    return _SURROGATES.sub("\ufffd", name)


@dataclass
class LabelOverride:
    """Labels given explicitly (CLI flags, the dashboard's table); each one overrides the file name."""

    manufacturer: str | None = None
    model: str | None = None
    diameter_mm: float | None = None
    group_id: str | None = None  # the files show one physical implant (see grouping.py); not a label

    def __post_init__(self):
        self.group_id = as_text(self.group_id or "").strip()[:200] or None  # as typed; blank is none

    def resolve(self, filename: str) -> Labels:
        return resolve_labels(filename, self.manufacturer, self.model, self.diameter_mm)


@dataclass
class Source:
    """One candidate file: a display name, a reader, and optional explicit labels."""

    name: str
    read: Callable[[int], bytes]  # read(max_bytes): at most max_bytes + 1 bytes, so oversize is detectable
    labels: LabelOverride = field(default_factory=LabelOverride)
    filename: str = ""  # the bare file name, for labels and display; defaults to the last part of name
    size: int = 0  # the whole file's size in bytes, when known (0: unknown), for the oversize message

    def __post_init__(self):
        self.name = as_text(self.name)
        self.filename = as_text(self.filename or PurePosixPath(self.name.replace("\\", "/")).name)[-MAX_NAME_CHARS:]

    @classmethod
    def from_bytes(cls, name: str, data: bytes, labels: LabelOverride | None = None) -> "Source":
        return cls(name, lambda limit: data[: limit + 1], labels or LabelOverride(), size=len(data))


@dataclass
class FileReport:
    """What happened to one file."""

    file: str
    status: str  # "ingested", "duplicate" or "rejected"
    id: int | None = None
    reason: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    diameter_mm: float | None = None

    def __post_init__(self):
        self.file = as_text(self.file)
        self.reason = None if self.reason is None else as_text(self.reason)


@dataclass
class IngestReport:
    items: list[FileReport] = field(default_factory=list)

    def of(self, status: str) -> list[FileReport]:
        return [i for i in self.items if i.status == status]

    @property
    def ingested(self) -> list[FileReport]:
        return self.of("ingested")

    @property
    def duplicates(self) -> list[FileReport]:
        return self.of("duplicate")

    @property
    def rejected(self) -> list[FileReport]:
        return self.of("rejected")

    def to_json(self) -> dict:
        """The stable shape documented in the README for `raiox ingest --json`."""
        return {
            "ingested": [
                {"id": i.id, "file": i.file, "manufacturer": i.manufacturer, "model": i.model, "diameter_mm": i.diameter_mm}
                for i in self.ingested
            ],
            "duplicates": [{"file": i.file, "id": i.id} for i in self.duplicates],
            "rejected": [{"file": i.file, "reason": i.reason} for i in self.rejected],
        }


# -- collecting sources ---------------------------------------------------------------------------


def _file_source(path: Path, name: str, labels: LabelOverride) -> Source:
    def read(limit: int) -> bytes:
        with path.open("rb") as f:
            return f.read(limit + 1)

    try:
        size = path.stat().st_size
    except OSError:  # reported when it is read
        size = 0
    return Source(name, read, labels, size=size)


def _zip_sources(file: Path | BinaryIO, archive_name: str, labels: LabelOverride) -> tuple[list[Source], list[FileReport]]:
    """Members of a zip archive (a path or a seekable file object) as sources; unsafe entries are refused."""
    sources, refused = [], []
    try:
        archive = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError):
        return [], [FileReport(archive_name, "rejected", reason=f"{archive_name} is not a readable zip archive.")]
    except UnicodeDecodeError:  # zipfile decodes every name up front and cannot be told to replace
        return [], [FileReport(archive_name, "rejected", reason=f"{archive_name} marks its entry names as UTF-8, "
                               "but they are not; re-create the archive.")]
    for info in archive.infolist():
        if info.is_dir():
            continue
        member = PurePosixPath(info.filename.replace("\\", "/"))
        shown = f"{archive_name}:{info.filename}"
        if member.is_absolute() or ".." in member.parts or info.filename.startswith(("/", "\\")) or ":" in member.parts[0]:
            refused.append(FileReport(shown, "rejected", reason="The archive entry has an absolute or '..' path and was not extracted."))
            continue

        def read(limit: int, info=info) -> bytes:
            try:
                with archive.open(info) as f:  # read at most limit+1 bytes: a zip bomb cannot fill memory
                    return f.read(limit + 1)
            except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError):
                # Corrupt, encrypted (RuntimeError) or unsupported compression: a refusal, not a crash.
                raise ImageRejected("The archive entry is corrupt, encrypted or compressed in a way we cannot read.") from None

        sources.append(Source(shown, read, labels, filename=member.name, size=info.file_size))
    return sources, refused


def collect_sources(paths: Iterable[str | os.PathLike], labels: LabelOverride | None = None) -> tuple[list[Source], list[FileReport]]:
    """Expand files, folders (recursively) and .zip archives into sources; unreadable paths are reported."""
    labels = labels or LabelOverride()
    sources: list[Source] = []
    refused: list[FileReport] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for p in sorted(p for p in path.rglob("*") if not p.is_dir()):
                name = str(p.relative_to(path.parent))
                found, bad = _expand_file(p, name, labels) if p.is_file() else ([], [_not_a_file(p, name)])
                sources += found
                refused += bad
        elif path.is_file():
            found, bad = _expand_file(path, path.name, labels)
            sources += found
            refused += bad
        elif path.is_symlink() or path.exists():
            refused.append(_not_a_file(path, str(raw)))
        else:
            refused.append(FileReport(str(raw), "rejected", reason=f"{raw} does not exist."))
    return sources, refused


def _not_a_file(path: Path, name: str) -> FileReport:
    """A refusal for something that is neither a folder nor a regular file; it is never opened, since
    opening a FIFO or a device could wait forever or read without end."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return FileReport(name, "rejected", reason="It is a link to something that does not exist.")
    kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
    return FileReport(name, "rejected", reason=f"It is {kind}, not an image file, and was not read.")


def _expand_file(path: Path, name: str, labels: LabelOverride) -> tuple[list[Source], list[FileReport]]:
    if path.suffix.lower() == ".zip":
        return _zip_sources(path, path.name, labels)
    return [_file_source(path, name, labels)], []


def sources_from_upload(name: str, data: bytes, labels: LabelOverride | None = None) -> tuple[list[Source], list[FileReport]]:
    """An uploaded file as sources: a .zip is expanded in memory under the same rules as on disk."""
    labels = labels or LabelOverride()
    name = PurePosixPath(name.replace("\\", "/")).name or "upload"  # browsers send a bare name; never trust a path
    if name.lower().endswith(".zip"):
        return _zip_sources(io.BytesIO(data), name, labels)
    return [Source.from_bytes(name, data, labels)], []


# -- the pipeline ---------------------------------------------------------------------------------


@dataclass
class _Candidate:
    report: FileReport
    filename: str
    labels: Labels | None  # None for a duplicate, whose name need not give labels
    image: PreparedImage
    group_id: str | None = None


def check_image(source: Source, limits: ImageLimits) -> PreparedImage | str:
    """Read and prepare one source's image: the PreparedImage, or the one-sentence reason it is refused."""
    try:
        return prepare_image(source.read(limits.max_bytes), limits, size=source.size)
    except ImageRejected as exc:
        return str(exc)
    except OSError as exc:
        return f"The file could not be read ({exc.strerror or type(exc).__name__})."


@dataclass(frozen=True)
class Verdict:
    """What ingesting one file will do, decided before anything is stored."""

    status: str  # "ok", "duplicate" or "rejected"
    reason: str | None = None  # why it is rejected: every reason that applies
    labels: Labels | None = None  # for "ok"
    duplicate_id: int | None = None  # the stored reference a duplicate copies...
    duplicate_of: str | None = None  # ...or the earlier file of this set it copies


class Planner:
    """The per-file rule, shared by ingestion and the dashboard's preview so that they cannot disagree.

    Files are judged in order. The image comes first (format, size, limits, contrast): an exact copy of
    a stored reference, or of an earlier accepted file, is a duplicate whatever its name, since nothing
    of it is stored. Only then is the name (or the explicit labels) checked; a refusal gives the
    image's reason and the name's, when both apply.
    """

    def __init__(self) -> None:
        self._firsts: dict[str, str] = {}  # sha256 -> name of the first accepted copy

    def judge(self, source: Source, sha256: str | None, refusal: str | None, known: dict[str, int]) -> Verdict:
        """`sha256` of the prepared image, or the image's `refusal`; `known`: sha256 -> stored reference id."""
        if refusal is None:
            if sha256 in known:
                return Verdict("duplicate", duplicate_id=known[sha256])
            if sha256 in self._firsts:
                return Verdict("duplicate", duplicate_of=self._firsts[sha256])
        try:
            labels = source.labels.resolve(source.filename)
        except NamingError as exc:
            return Verdict("rejected", reason=f"{refusal} {exc}" if refusal else str(exc))
        if refusal is not None:
            return Verdict("rejected", reason=refusal)
        self._firsts[sha256] = source.name
        return Verdict("ok", labels=labels)


def plan(sources: list[Source], images: list[tuple[str | None, str | None]], known: dict[str, int]) -> list[Verdict]:
    """One Verdict per source, from its image's (sha256, refusal) and the stored references' hashes."""
    planner = Planner()
    return [planner.judge(source, sha, refusal, known) for source, (sha, refusal) in zip(sources, images)]


def _store_one(candidate: _Candidate, vectors: dict, *, db: Database, storage: Storage, source: str) -> None:
    """One image with its vectors (embedding model -> vector), all or nothing (references.add); a copy added
    meanwhile makes it a duplicate."""
    new = references.NewReference.of_image(candidate.image, candidate.labels, source_filename=candidate.filename,
                                           source=source, vectors=vectors, group_id=candidate.group_id)
    try:
        candidate.report.id = references.add(db, storage, new)
    except DuplicateReference as dup:
        candidate.report.status, candidate.report.id = "duplicate", dup.reference_id


@dataclass
class _Batch:
    """One batch on its way through the pipeline: what was read, and what still needs embedding."""

    sources: list[Source]
    entries: list[FileReport]  # one per source, in order; filled in as the batch moves along
    new: list[_Candidate]  # first copies not yet in the database, in order
    copies: list[tuple[FileReport, FileReport]]  # later copies (this run) and the first copy's report
    pixels: object = None  # the model's input tensor for `new`
    known: list[_Candidate] = field(default_factory=list)  # already references: their image is put back if lost


def _read_batch(batch: list[Source], planner: Planner, firsts: dict[str, FileReport], *, db: Database,
                embedder: Embedder, limits: ImageLimits) -> _Batch:
    """Decode, normalise and judge one batch, and make the model's input for its new images.

    Runs in the reader thread, one batch at a time and in order, so `planner` and `firsts` (sha -> report
    of the first copy in this run; reports only, so images are freed once written) need no lock. A copy
    of an image from an earlier batch is resolved once that batch is stored.
    """
    images = [check_image(s, limits) for s in batch]
    hashes = [i.sha256 for i in images if isinstance(i, PreparedImage)]
    known = db.existing(hashes) if hashes else {}
    out = _Batch(batch, [], [], [])
    for source, image in zip(batch, images):
        name = source.name[-MAX_NAME_CHARS:]
        if isinstance(image, str):
            verdict = planner.judge(source, None, image, known)
        else:
            verdict = planner.judge(source, image.sha256, None, known)
        if verdict.status == "rejected":
            report = FileReport(name, "rejected", reason=verdict.reason)
        elif verdict.duplicate_id is not None:
            report = FileReport(name, "duplicate", id=verdict.duplicate_id)
            out.known.append(_Candidate(report, source.filename, None, image))
        elif verdict.status == "duplicate":  # of a file of this run: its id once that one is stored
            report = FileReport(name, "duplicate")
            out.copies.append((report, firsts[image.sha256]))
        else:
            labels = verdict.labels
            report = FileReport(name, "ingested", manufacturer=labels.manufacturer, model=labels.model,
                                diameter_mm=labels.diameter_mm)
            firsts[image.sha256] = report
            out.new.append(_Candidate(report, source.filename, labels, image, source.labels.group_id))
        out.entries.append(report)
    if out.new:
        out.pixels = embedder.to_tensor([c.image.image for c in out.new])
    return out


def _write_batch(batch: _Batch, vectors: dict, *, db: Database, storage: Storage, source: str) -> str | None:
    """Store and insert the new images of one batch, each all or nothing; returns a failure that stops the run.
    `vectors`: embedding model -> (n, dim), every model the embedder stores (see Embedder.stored_vectors).

    Runs in the writer thread, one batch at a time and in order.
    """
    failure: str | None = None
    for row, candidate in enumerate(batch.new):
        vector = {model: v[row] for model, v in vectors.items()}
        if failure:
            candidate.report.status, candidate.report.reason = "rejected", failure
            continue
        try:
            _store_one(candidate, vector, db=db, storage=storage, source=source)
        except (StorageError, DatabaseUnavailable) as exc:
            candidate.report.status, candidate.report.reason = "rejected", str(exc)
            # The store or the database is down: stop rather than fail every remaining file slowly.
            failure = f"Not attempted after an earlier failure: {exc}"
    for candidate in batch.known:  # a reference whose stored image was lost gets this identical copy
        try:
            if not failure and references.restore_missing_image(db, storage, candidate.image.sha256, candidate.image.png):
                candidate.report.reason = "Its stored image was missing and has been restored from this file."
        except (StorageError, DatabaseUnavailable) as exc:  # still a duplicate; only the check failed
            candidate.report.reason = f"Whether its stored image is intact could not be checked: {exc}"
    for entry, first in batch.copies:  # the first copy is stored by now (same or earlier batch)
        entry.id, entry.reason = first.id, first.reason
        entry.status = "rejected" if first.status == "rejected" else "duplicate"
    return failure


def ingest(
    sources: list[Source],
    *,
    db: Database,
    storage: Storage,
    embedder: Embedder,
    limits: ImageLimits,
    source: str = "upload",
    batch_size: int = 16,
    progress: Progress | None = None,
) -> IngestReport:
    """Validate, dedupe, embed, store and insert each source; running it again changes nothing.

    A three-stage pipeline over batches: a reader thread decodes and preprocesses batch i+1 while this
    thread runs the model on batch i (torch releases the GIL) and a writer thread stores batch i-1. On a
    2-core machine that keeps both cores on the model instead of idling through PNG decoding, fsyncs
    and commits. Each image is still all or nothing (see _store_one), batches are written in order, and
    `progress` is only ever called from the calling thread (Streamlit needs that).
    """
    report = IngestReport()
    total = len(sources)
    batches = [sources[start : start + batch_size] for start in range(0, total, batch_size)]
    done = 0
    failure: str | None = None
    read = partial(_read_batch, planner=Planner(), firsts={}, db=db, embedder=embedder, limits=limits)
    write = partial(_write_batch, db=db, storage=storage, source=source)
    # A large folder into a small set: one index build at the end instead of a graph insert per image.
    with db.bulk_load({m: total for m in embedder.stored_models()}), \
            ThreadPoolExecutor(1, thread_name_prefix="raiox-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="raiox-write") as writer:
        ahead = reader.submit(read, batches[0]) if batches else None
        writing: tuple[Future, _Batch] | None = None

        def finish_write() -> str | None:
            nonlocal done
            future, written = writing
            failed = future.result()
            report.items.extend(written.entries)
            done += len(written.sources)
            if progress:
                progress(done, total, "done" if done == total else "reading")
            return failed

        for index in range(len(batches)):
            batch = ahead.result()
            ahead = reader.submit(read, batches[index + 1]) if index + 1 < len(batches) else None
            if progress:
                progress(done, total, "embedding")
            vectors = embedder.stored_vectors(batch.pixels, batch_size) if batch.new else {}
            if writing and (failure := finish_write()):
                break
            if progress:
                progress(done, total, "storing")
            writing = (writer.submit(write, batch, vectors), batch)
        else:
            if writing:
                failure = finish_write()
        if ahead is not None:
            ahead.cancel()
    if failure:
        for rest in sources[done:]:
            report.items.append(FileReport(rest.name[-MAX_NAME_CHARS:], "rejected", reason=failure))
    return report


def ingest_paths(paths: Iterable[str | os.PathLike], labels: LabelOverride | None = None, **kwargs) -> IngestReport:
    """collect_sources + ingest, with unreadable paths and unsafe archive entries in the same report."""
    sources, refused = collect_sources(paths, labels)
    report = ingest(sources, **kwargs)
    report.items = refused + report.items
    return report


def ingest_uploads(uploads: Iterable[tuple[str, bytes]], labels: LabelOverride | None = None, **kwargs) -> IngestReport:
    """sources_from_upload for each (file name, bytes) + ingest: uploaded images and zips (the HTTP API)."""
    sources, refused = [], []
    for name, data in uploads:
        found, bad = sources_from_upload(name, data, labels)
        sources += found
        refused += bad
    report = ingest(sources, **kwargs)
    report.items = refused + report.items
    return report


def report_dicts(report: IngestReport) -> list[dict]:
    """One flat dict per file, for tables."""
    return [asdict(i) for i in report.items]
