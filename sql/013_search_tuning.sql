-- The ef_search each embedding model's HNSW index needs to reach the target recall, measured by the recall
-- probe (raiox_core/recall.py, `raiox doctor --repair`): sampled stored vectors searched through the index
-- and exactly. exact = true: no ef_search tried reached it (or the set is small), so searches scan exactly.
CREATE TABLE search_tuning (
    embedding_model text PRIMARY KEY,
    ef_search       integer,
    exact           boolean NOT NULL DEFAULT false,
    recall          real NOT NULL,
    target          real NOT NULL,
    samples         integer NOT NULL,
    vectors         integer NOT NULL,
    ladder          jsonb NOT NULL,  -- [{"ef_search": 40, "recall": 0.93}, ...]
    measured_at     timestamptz NOT NULL DEFAULT now()
);
