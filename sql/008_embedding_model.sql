-- The embedding model's id is `embedding_model`: `model` alone is the implant's model.
ALTER TABLE embeddings RENAME COLUMN model_id TO embedding_model;
ALTER TABLE match_log RENAME COLUMN model_id TO embedding_model;
ALTER INDEX embeddings_model_id_idx RENAME TO embeddings_embedding_model_idx;
