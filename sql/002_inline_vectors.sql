-- A 512-d vector (2 KB) is just over PostgreSQL's in-row limit, so by default every vector is stored out of
-- line (TOAST). Keeping it in the row makes exact scans (filtered searches) about 3.5x faster.
-- Applies to rows written after this migration (SET STORAGE does not rewrite the table).
ALTER TABLE embeddings ALTER COLUMN embedding SET STORAGE MAIN;
