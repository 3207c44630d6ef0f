"""Privacy: no patient name or identifier reaches a table or a stored object, whatever the files carry."""

from __future__ import annotations

from raiox_core.images import ImageLimits
from raiox_core.ingest import Source, ingest
from raiox_core.match import match_bytes
from raiox_core.storage import REFERENCE_PREFIX, open_storage
from tests.reliability.conftest import (
    PERSONAL,
    all_text_in_database,
    assert_no_personal_data,
    dicom_with_patient,
    exif_rotated_jpeg,
    labelled_pngs,
)

# Only hashes, results and feedback: a new column here must be a deliberate, reviewed decision.
MATCH_LOG_COLUMNS = {"id", "created_at", "query_sha256", "embedding_model", "k", "filters", "results", "confidence",
                     "confident", "confidence_of", "answer", "feedback", "feedback_label", "feedback_at"}


def test_patient_data_in_dicom_and_exif_is_never_stored(db, settings, embedder):
    storage = open_storage(settings)
    dicom, jpeg = dicom_with_patient(50), exif_rotated_jpeg(51)[0]
    for data in (dicom, jpeg):
        assert any(p.encode() in data for p in PERSONAL)  # the inputs do carry them
    batch = [Source.from_bytes("NEODENT_DRIVE_3.5mm_07.dcm", dicom), Source.from_bytes("NEODENT_DRIVE_3.5mm_08.jpg", jpeg)]
    batch += [Source.from_bytes(n, d) for n, d in labelled_pngs(4, start=500)]
    assert len(ingest(batch, db=db, storage=storage, embedder=embedder, limits=ImageLimits()).ingested) == 6

    # Queries named after the patient, from a DICOM that names them too, with feedback.
    for name, data in [("Maria Silva 1970-01-01.dcm", dicom_with_patient(52)), ("Silva^Maria PID-98765.jpg", jpeg)]:
        result = match_bytes(data, limits=ImageLimits.from_settings(settings), file=name, db=db, embedder=embedder,
                             threshold=0.6, k=3)
        db.set_feedback(result.log_id, "wrong", "Straumann BLT 4.1")

    assert_no_personal_data(all_text_in_database(db), "the database")
    for key in storage.list_keys(""):
        assert_no_personal_data(storage.get(key), key)
    assert len(storage.list_keys(REFERENCE_PREFIX)) == 6  # queries are never stored
    with db.connection() as conn:
        columns = {c for (c,) in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'match_log'")}
        assert conn.execute("SELECT count(*) FROM match_log").fetchone()[0] == 2
    assert columns == MATCH_LOG_COLUMNS
