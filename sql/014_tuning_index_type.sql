-- The index type (RAIOX_INDEX_TYPE: vector or halfvec) a recall probe measured: a figure measured on one
-- index says nothing about the other, so a probe of another type is stale.
ALTER TABLE search_tuning ADD COLUMN index_type text NOT NULL DEFAULT 'vector';
