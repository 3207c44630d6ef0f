-- Groups and calibration (raiox_core/grouping.py, calibration.py).
-- group_id: references given one id at ingestion show one physical implant (several X-rays of it); the
-- leave-one-out evaluation and the adapter's cross-validation hold such a group out together, as they do
-- references whose vectors are near-identical.
ALTER TABLE reference_implants ADD COLUMN group_id text CHECK (group_id IS NULL OR length(group_id) BETWEEN 1 AND 200);

-- One row per `raiox evaluate` run: the leave-one-out report and the precision/coverage curve of the
-- confidence, from which RAIOX_TARGET_PRECISION picks the threshold of that embedding model.
CREATE TABLE calibrations (
    id              bigserial PRIMARY KEY,
    embedding_model text NOT NULL,
    computed_at     timestamptz NOT NULL DEFAULT now(),
    n_references    integer NOT NULL,
    report          jsonb NOT NULL
);
CREATE INDEX calibrations_model_idx ON calibrations (embedding_model, computed_at DESC);
