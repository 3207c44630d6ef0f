"""The hostile corpus through the dashboard's upload widgets (AppTest): the match and ingest pages.

Uploads are injected as the pages' own tests do (tests/app): file_uploader.upload / set_value.
"""

from __future__ import annotations

import pytest

from raiox_core.images import ImageLimits
from raiox_core.ingest import Source, ingest
from tests.app.conftest import STAFF_PASSWORD, app_env, page_test  # noqa: F401  (app_env is a fixture)
from tests.reliability.conftest import (
    all_text_in_database,
    assert_consistent,
    assert_no_personal_data,
    assert_sentence,
    labelled_pngs,
)

pytestmark = pytest.mark.slow


def corpus_uploads(corpus) -> list[tuple[str, bytes, bool]]:
    """(name, bytes, is an image) for every corpus file and the zip."""
    return [(c.name, c.data, c.accept) for c in corpus.cases] + [(corpus.zip_name, corpus.zip_data, False)]


def test_match_page_answers_or_refuses_every_hostile_upload(app_env, db, corpus):  # noqa: F811
    from raiox_dashboard import resources

    references = [Source.from_bytes(n, d) for n, d in labelled_pngs(4, start=800)]
    ingest(references, db=resources.get_db(), storage=resources.get_storage(), embedder=resources.get_embedder(), limits=ImageLimits())
    at = page_test("match").run()
    assert not at.exception
    matched = 0
    for name, data, is_image in corpus_uploads(corpus):
        at.file_uploader(key="match_upload").upload(name, data, "application/octet-stream")
        at.run()
        assert not at.exception, (name, at.exception)
        errors = [e.value for e in at.error]
        similarities = [m for m in at.metric if m.label == "Similarity"]
        if is_image:
            assert not errors and similarities, (name, errors)
            matched += 1
        else:
            assert len(errors) == 1 and not similarities, (name, errors)
            assert_sentence(errors[0])
    with db.connection() as conn:
        assert conn.execute("SELECT count(*) FROM match_log").fetchone()[0] == matched
    assert_no_personal_data(all_text_in_database(db), "the database")
    assert len(assert_consistent(db, resources.get_storage())) == 4  # matching stored nothing


def test_ingest_page_validates_and_ingests_a_hostile_batch(app_env, db, corpus):  # noqa: F811
    from raiox_dashboard import resources

    at = page_test("ingest").run()
    at.text_input(key="ingest_password").input(STAFF_PASSWORD)
    at.button[[b.label for b in at.button].index("Sign in")].click()
    at.run()
    at.file_uploader[0].set_value([(n, d, "application/octet-stream") for n, d, _ in corpus_uploads(corpus)]).run()
    assert not at.exception, at.exception
    table = at.dataframe[-1].value  # the validation table, beside the label editor
    statuses = dict(zip(table["file"], table["status"]))
    expected = corpus.expected(with_labels=False)  # the table starts with the labels the names give
    assert statuses.keys() == expected.keys()
    for name, ok in expected.items():
        if ok:
            assert statuses[name] == "ok", (name, statuses[name])
        else:
            assert statuses[name].startswith("rejected: "), (name, statuses[name])
            assert_sentence(statuses[name].removeprefix("rejected: "))

    at.button(key="ingest_go").click().run()
    assert not at.exception and not at.error, at.exception
    report = at.dataframe[0].value
    assert dict(zip(report["file"], report["status"])) == {n: "ingested" if ok else "rejected" for n, ok in expected.items()}
    storage = resources.get_storage()
    rows = assert_consistent(db, storage)
    assert len(rows) == sum(expected.values())
    for row in rows:
        assert_no_personal_data(storage.get(row["object_key"]), row["source_filename"])
    assert_no_personal_data(all_text_in_database(db), "the database")
