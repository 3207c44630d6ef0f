-- Adapters learnt by `raiox train` (raiox_core/adapter.py): every run is kept, with its cross-validation
-- report and folds, adopted or not. An adopted adapter's vectors are stored in `embeddings` under its own
-- embedding_model ("<base>+adapter:<hash>"); at most one adapter is active per base model.
CREATE TABLE adapters (
    id              bigserial PRIMARY KEY,
    base_model      text NOT NULL,
    embedding_model text,               -- the adapter's id; NULL for a run that was not adopted (nothing fitted on all)
    residual        bytea,              -- the (d, d) float32 residual as a .npy file; NULL when not adopted
    n_references    integer NOT NULL,
    report          jsonb NOT NULL,
    adopted         boolean NOT NULL,
    active          boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (adopted = (residual IS NOT NULL) AND adopted = (embedding_model IS NOT NULL)),
    CHECK (adopted OR NOT active)
);
CREATE UNIQUE INDEX adapters_one_active_idx ON adapters (base_model) WHERE active;
CREATE INDEX adapters_base_idx ON adapters (base_model, created_at DESC);
