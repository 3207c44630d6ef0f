"""Shared pieces of the reliability tests: a hostile-file corpus, consistency checks, the CLI as a
subprocess, a dedicated S3 server and a dedicated PostgreSQL that tests may stop and start.

Everything binary is generated here; nothing is committed.
"""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg
import pytest
from PIL import Image

from pngtools import png_chunk_types, png_with_header
from raiox_core.images import _pixel_hash
from raiox_core.ingest import LabelOverride, Source, sources_from_upload
from raiox_core.storage import REFERENCE_PREFIX, LocalStorage, reference_key
from tests.ports import free_port
from tests.envs import subprocess_env

MODEL_ID = "ViT-B-32/untrained"
# What a patient's X-ray may carry: none of it may reach the database, storage, logs or output.
PERSONAL = ("Maria Silva", "1970-01-01", "Silva^Maria", "PID-98765", "19700101")
SQL_NAME = "'; DROP TABLE reference_implants; --.png"
LABELS = LabelOverride("Zimmer", "TSV", 4.7)  # for files whose names carry no labels


# -- pictures -------------------------------------------------------------------------------------


def picture(seed: int, width: int = 96, height: int = 96) -> Image.Image:
    """A distinct, non-flat grey picture per seed: smooth noise plus a bright bar (an 'implant')."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((6, 6)) * 150
    arr = np.asarray(Image.fromarray(coarse.astype(np.float32)).resize((width, height), Image.BILINEAR))
    arr = arr + rng.random((height, width)) * 40
    x0 = int(rng.integers(0, width // 2))
    arr[height // 4 : 3 * height // 4, x0 : x0 + max(4, width // 8)] = 250
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def labelled_pngs(count: int, start: int = 0) -> list[tuple[str, bytes]]:
    """`count` distinct PNGs named by the convention (MANUFACTURER_MODEL_DIAMETERmm_NN.png)."""
    kinds = [("NOBEL", "REPLACE", "4.3"), ("STRAUMANN", "BL", "4.1"), ("NEODENT", "DRIVE", "3.5"), ("ZIMMER", "TSV", "4.7")]
    out = []
    for i in range(start, start + count):
        maker, model, diameter = kinds[i % len(kinds)]
        out.append((f"{maker}_{model}_{diameter}mm_{i:02d}.png", encode(picture(10_000 + i), "PNG")))
    return out


png_claiming = png_with_header



def dicom_with_patient(seed: int) -> bytes:
    """A 16-bit DICOM radiograph whose header names a patient (the strings of PERSONAL)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Silva^Maria", "PID-98765", "19700101"
    ds.InstitutionName = "Clinic of Maria Silva, 1970-01-01"
    ds.Modality = "DX"
    pixels = (np.asarray(picture(seed, 80, 64), dtype=np.uint16) * 200).astype(np.uint16)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def exif_rotated_jpeg(seed: int) -> tuple[bytes, Image.Image]:
    """A 160x96 JPEG whose EXIF says 'rotate 90° clockwise' and names a patient; also the upright picture."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the viewer must rotate 90° clockwise
    exif[0x013B] = "Maria Silva, DOB 1970-01-01"  # Artist
    exif[0x010E] = "Maria Silva, DOB 1970-01-01"  # ImageDescription
    data = encode(picture(seed, 160, 96).convert("RGB"), "JPEG", quality=95, exif=exif.tobytes())
    with Image.open(io.BytesIO(data)) as decoded:
        upright = decoded.convert("L").transpose(Image.Transpose.ROTATE_270)  # what orientation 6 means
    return data, upright


# -- the hostile corpus ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One file of the corpus: its name, bytes, whether it must be ingested, and labels if its name has none."""

    name: str
    data: bytes
    accept: bool
    labels: LabelOverride | None = None


@dataclass
class Corpus:
    cases: list[Case]
    zip_name: str
    zip_data: bytes
    zip_expected: dict[str, bool]  # "archive.zip:member" -> accepted
    upright: Image.Image  # the EXIF-rotated JPEG as it must be stored

    def expected(self, *, with_labels: bool = True) -> dict[str, bool]:
        """Display name (as ingestion reports it) -> accepted; names without labels are refused without them."""
        out = {c.name[-255:]: c.accept and (with_labels or c.labels is None) for c in self.cases}
        return out | self.zip_expected

    def sources(self) -> tuple[list[Source], list]:
        """The corpus as ingestion sources (the zip expanded as an upload); refused zip entries come back too."""
        sources = [Source.from_bytes(c.name, c.data, c.labels) for c in self.cases]
        found, refused = sources_from_upload(self.zip_name, self.zip_data)
        return sources + found, refused

    def write(self, folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for case in self.cases:
            (folder / case.name).write_bytes(case.data)
            paths.append(folder / case.name)
        (folder / self.zip_name).write_bytes(self.zip_data)
        return paths + [folder / self.zip_name]


def build_corpus() -> Corpus:
    """Empty, text, truncated, disguised, oversized, tiny, odd formats, personal metadata, hostile names, a zip."""
    base = picture(1, 120, 90)
    jpeg, png = encode(base.convert("RGB"), "JPEG", quality=90), encode(base, "PNG")
    dicom = dicom_with_patient(2)
    rotated, upright = exif_rotated_jpeg(3)
    palette = picture(4).convert("P")
    gif_frames = [picture(5 + i).convert("P") for i in range(3)]
    noise = np.random.default_rng(6).integers(0, 256, (3000, 3000, 3), dtype=np.uint8)
    svg = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="64" height="64"/></svg>'
    named = "NOBEL_REPLACE_4.3mm_{:02d}.{}".format
    cases = [
        Case(named(1, "png"), b"", False),
        Case(named(2, "png"), "Notes about Maria Silva, DOB 1970-01-01.\n".encode() * 20, False),
        Case(named(3, "jpg"), jpeg[: len(jpeg) // 2], False),
        Case(named(4, "png"), png[: len(png) // 2], False),
        Case(named(5, "png"), b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>", False),
        Case(named(6, "jpg"), svg, False),
        Case(named(7, "png"), png_claiming(40_000, 40_000), False),
        Case(named(8, "png"), encode(Image.fromarray(noise), "PNG", compress_level=1), False),  # ~27 MB
        Case(named(9, "png"), encode(Image.new("L", (1, 1), 200), "PNG"), False),
        Case(named(10, "png"), encode(picture(7, 6000, 4), "PNG"), False),
        Case(named(11, "dcm"), dicom[: len(dicom) - 3000], False),
        Case("STRAUMANN_BL_4.1mm_01.tif", encode(Image.fromarray((np.asarray(picture(8), np.uint16) * 257)), "TIFF"), True),
        Case("STRAUMANN_BL_4.1mm_02.jpg", encode(picture(9).convert("RGB").convert("CMYK"), "JPEG"), True),
        Case("STRAUMANN_BL_4.1mm_03.png", encode(palette, "PNG", transparency=0), True),
        Case("STRAUMANN_BL_4.1mm_04.gif", encode(gif_frames[0], "GIF", save_all=True, append_images=gif_frames[1:], loop=0), True),
        Case("NEODENT_DRIVE_3.5mm_01.jpg", rotated, True),
        Case("NEODENT_DRIVE_3.5mm_02.jpg", encode(picture(10), "PNG"), True),  # PNG bytes behind a .jpg name
        Case("NEODENT_DRIVE_3.5mm_03.dcm", dicom, True),
        Case("ZIMMER \"TSV\" it's_1.png", encode(picture(11), "PNG"), True, LABELS),
        Case(SQL_NAME, encode(picture(12), "PNG"), True, LABELS),
        Case("implante_ñandú_种植体_🦷.png", encode(picture(13), "PNG"), True, LABELS),
        Case("NOBEL_REPLACE_4.3mm_" + "9" * 230 + ".png", encode(picture(14), "PNG"), True),  # 254 characters
    ]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("deep/nested/folder/STRAUMANN_BLT_3.3mm_01.png", encode(picture(15), "PNG"))
        z.writestr("../NOBEL_ACTIVE_4.3mm_01.png", encode(picture(16), "PNG"))
        z.writestr("/NOBEL_ACTIVE_4.3mm_02.png", encode(picture(17), "PNG"))
        z.writestr("docs/readme.txt", "not an image")
        z.writestr("deep/empty/", "")  # a folder entry: skipped, not reported
    zip_expected = {
        "hostile.zip:deep/nested/folder/STRAUMANN_BLT_3.3mm_01.png": True,
        "hostile.zip:../NOBEL_ACTIVE_4.3mm_01.png": False,
        "hostile.zip:/NOBEL_ACTIVE_4.3mm_02.png": False,
        "hostile.zip:docs/readme.txt": False,
    }
    return Corpus(cases, "hostile.zip", buf.getvalue(), zip_expected, upright)


@pytest.fixture(scope="session")
def corpus() -> Corpus:
    return build_corpus()


# -- checks ---------------------------------------------------------------------------------------


def assert_sentence(message: str) -> None:
    """A refusal a user can read: one sentence, no newline, no traceback."""
    assert isinstance(message, str) and message.endswith("."), message
    assert "\n" not in message and "Traceback" not in message, message


def assert_no_personal_data(data: bytes | str, where: str) -> None:
    raw = data.encode() if isinstance(data, str) else data
    for needle in PERSONAL:
        assert needle.encode() not in raw, f"{needle!r} found in {where}"


png_chunks = png_chunk_types



def assert_consistent(db, storage, embedding_models=(MODEL_ID,)) -> list[dict]:
    """No orphan, no half row: objects == rows' keys, every row has each model's vector, every object is
    the image its key names, no two rows share a vector, no temporary files. Returns the rows."""
    rows = db.list(limit=100_000)
    keys = set(storage.list_keys(REFERENCE_PREFIX))
    assert keys == {r["object_key"] for r in rows}, "orphan objects or rows without their image"
    for row in rows:
        assert row["object_key"] == reference_key(row["sha256"])
        with Image.open(io.BytesIO(storage.get(row["object_key"]))) as img:
            assert _pixel_hash(img) == row["sha256"], f"object {row['object_key']} is not the image it names"
    for embedding_model in embedding_models:
        assert db.missing_embeddings(embedding_model) == [], f"rows without a {embedding_model} vector"
    with db.connection() as conn:
        total, distinct = conn.execute("SELECT count(*), count(DISTINCT (embedding_model, embedding::text)) FROM embeddings").fetchone()
        dangling = conn.execute("SELECT count(*) FROM embeddings e LEFT JOIN reference_implants r"
                                " ON r.id = e.reference_id WHERE r.id IS NULL").fetchone()[0]
    assert total == distinct and dangling == 0, "duplicate or dangling vectors"
    if isinstance(storage, LocalStorage):
        assert not [p for p in storage.root.rglob("*") if p.name.endswith(".raiox-tmp")], "half-written files left"
    return rows


def all_text_in_database(db) -> str:
    """Every text, char and json value of every table in the schema, as one string (for privacy checks)."""
    with db.connection() as conn:
        columns = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'"
            " AND data_type IN ('text', 'character', 'character varying', 'json', 'jsonb')"
        ).fetchall()
        parts = []
        for table, column in columns:
            query = psycopg.sql.SQL("SELECT {}::text FROM {}").format(psycopg.sql.Identifier(column), psycopg.sql.Identifier(table))
            parts += [v for (v,) in conn.execute(query) if v is not None]
    assert ("reference_implants", "source_filename") in columns and ("match_log", "results") in columns
    return "\n".join(parts)


# -- the CLI as a subprocess ----------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path, pg_url, db) -> dict:
    """Environment of a `raiox` subprocess on the test database and a local store under tmp_path/data."""
    env = subprocess_env()
    env.update(RAIOX_DATABASE_URL=pg_url, RAIOX_DATA_DIR=str(tmp_path / "data"), RAIOX_PRETRAINED="none",
               RAIOX_DEVICE="cpu", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return env


def raiox_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "raiox_core.cli", *map(str, args)]


@pytest.fixture
def cli(cli_env, tmp_path):
    """run(*args, **env) -> CompletedProcess; never a traceback."""

    def run(*args, timeout: float = 300, **extra_env):
        proc = subprocess.run(raiox_command(*args), capture_output=True, text=True, env={**cli_env, **extra_env},
                              timeout=timeout, cwd=tmp_path)
        assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
        return proc

    return run


# -- services that tests may break --------------------------------------------------------------


class MotoS3:
    """A moto S3 server of one test's own, on a fixed port, that can be stopped and started again.

    moto keeps its buckets and objects in process memory, so a restarted server serves the same data.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


@pytest.fixture
def own_s3(s3_endpoint):  # s3_endpoint: sets the AWS test credentials in the environment
    import boto3

    server = MotoS3()
    server.start()
    bucket = f"raiox-own-{server.port}"
    boto3.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket=bucket)
    server.bucket = bucket
    yield server
    server.stop()


class SilentEndpoint:
    """A TCP port that accepts connections and never answers: a hung S3 endpoint."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.endpoint = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._held.append(conn)  # kept open, never read from or written to

    def close(self) -> None:
        self._sock.close()
        for conn in self._held:
            conn.close()


class OwnPostgres:
    """A pgserver PostgreSQL of one test module's own, stopped and started with its pg_ctl (same socket, same URL)."""

    def __init__(self) -> None:
        import pgserver

        # Not under pytest's tmp dir: pgserver runs postgres as another user, who cannot enter it.
        self.server = pgserver.get_server(tempfile.mkdtemp(prefix="raiox-own-pg-"), cleanup_mode="delete")
        self.url = self.server.get_uri()

    def stop(self) -> None:
        from pgserver._commands import pg_ctl

        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.server.pgdata, user=self.server.system_user)

    def start(self) -> None:
        self.server.ensure_postgres_running()
        assert self.server.get_uri() == self.url

    def close(self) -> None:
        self.server.cleanup()


@pytest.fixture(scope="module")
def own_pg():
    """A PostgreSQL that the module's tests may stop and start."""
    server = OwnPostgres()
    yield server
    server.close()
