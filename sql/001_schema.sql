-- Reference implants, their embeddings per model, and the match log.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE reference_implants (
    id              bigserial PRIMARY KEY,
    manufacturer    text NOT NULL CHECK (manufacturer <> ''),
    model           text NOT NULL CHECK (model <> ''),
    diameter_mm     real NOT NULL CHECK (diameter_mm > 0),
    source_filename text NOT NULL,
    sha256          char(64) NOT NULL UNIQUE,
    object_key      text NOT NULL,
    width           integer NOT NULL CHECK (width > 0),
    height          integer NOT NULL CHECK (height > 0),
    source          text NOT NULL DEFAULT 'upload' CHECK (source IN ('upload', 'synthetic', 'restore')),
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reference_implants_manufacturer_idx ON reference_implants (manufacturer);
CREATE INDEX reference_implants_model_idx ON reference_implants (model);

-- One row per (reference, model): vectors of different models are never compared. The column has no
-- fixed dimension so that models of any width fit; each model_id gets its own partial HNSW index
-- (created by db.ensure_model_index) over embedding::vector(dim).
CREATE TABLE embeddings (
    reference_id bigint NOT NULL REFERENCES reference_implants (id) ON DELETE CASCADE,
    model_id     text NOT NULL,
    dim          integer NOT NULL,
    embedding    vector NOT NULL,
    PRIMARY KEY (reference_id, model_id)
);
CREATE INDEX embeddings_model_id_idx ON embeddings (model_id);

-- No personal data: the query is kept only as a hash of its normalised pixels.
CREATE TABLE match_log (
    id             bigserial PRIMARY KEY,
    created_at     timestamptz NOT NULL DEFAULT now(),
    query_sha256   char(64) NOT NULL,
    model_id       text NOT NULL,
    k              integer NOT NULL,
    filters        jsonb NOT NULL DEFAULT '{}',
    results        jsonb NOT NULL,
    confidence     real NOT NULL,
    confident      boolean NOT NULL,
    feedback       text CHECK (feedback IN ('correct', 'wrong')),
    feedback_label text,
    feedback_at    timestamptz
);
CREATE INDEX match_log_created_at_idx ON match_log (created_at);
