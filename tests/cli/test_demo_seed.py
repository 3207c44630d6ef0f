"""`raiox demo` seeding: a seed stopped half-way is finished by the next one, and real references are left alone."""

from raiox_core.cli import Session, seed_demo
from raiox_core.images import ImageLimits
from raiox_core.ingest import Source, ingest
from raiox_core.synthetic import demo_files


def test_an_interrupted_demo_seed_is_finished_by_the_next(db_settings, db, embedder):
    session = Session(db_settings)
    session._embedder = embedder  # the test run's model, not a second load
    try:
        files = demo_files()
        ingest([Source.from_bytes(n, d) for n, d in files[:5]], db=session.db, storage=session.storage,
               embedder=embedder, source="synthetic", limits=ImageLimits())  # what a killed seed left
        assert seed_demo(session) == len(files) - 5
        assert seed_demo(session) == 0 and db.count() == len(files)
    finally:
        session.close()


def test_a_database_with_references_of_its_own_is_not_seeded(db_settings, db, embedder):
    session = Session(db_settings)
    session._embedder = embedder
    try:
        name, data = demo_files(per_diameter=1, seed=3)[0]
        ingest([Source.from_bytes(name, data)], db=session.db, storage=session.storage, embedder=embedder, limits=ImageLimits())
        assert seed_demo(session) == 0 and db.count() == 1
    finally:
        session.close()
