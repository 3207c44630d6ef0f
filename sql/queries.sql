-- Named queries, loaded by raiox_core/db.py. Parameters by name; a NULL filter means "any".

-- name: existing-shas
SELECT sha256, id FROM reference_implants WHERE sha256 = ANY(%(shas)s);

-- name: insert-reference
INSERT INTO reference_implants
    (manufacturer, model, diameter_mm, source_filename, sha256, object_key, width, height, source, group_id)
VALUES
    (%(manufacturer)s, %(model)s, %(diameter_mm)s, %(source_filename)s, %(sha256)s, %(object_key)s,
     %(width)s, %(height)s, %(source)s, %(group_id)s)
RETURNING id;

-- name: upsert-embedding
INSERT INTO embeddings (reference_id, embedding_model, dim, embedding)
VALUES (%(reference_id)s, %(embedding_model)s, %(dim)s, %(embedding)s)
ON CONFLICT (reference_id, embedding_model) DO UPDATE SET dim = EXCLUDED.dim, embedding = EXCLUDED.embedding;

-- ---- Bulk writes (db.insert_many, db.add_embeddings): binary COPY into a temporary table, then one
-- INSERT ... SELECT. The temporary tables live until the end of the transaction.

-- name: create-incoming-references
CREATE TEMP TABLE incoming_references (manufacturer text, model text, diameter_mm float8, source_filename text,
    sha256 text, object_key text, width integer, height integer, source text, group_id text) ON COMMIT DROP;

-- name: copy-incoming-references
COPY incoming_references (manufacturer, model, diameter_mm, source_filename, sha256, object_key, width, height, source,
    group_id)
FROM STDIN WITH (FORMAT BINARY);

-- name: insert-incoming-references
INSERT INTO reference_implants
    (manufacturer, model, diameter_mm, source_filename, sha256, object_key, width, height, source, group_id)
SELECT manufacturer, model, diameter_mm, source_filename, sha256, object_key, width, height, source, group_id
FROM incoming_references
ON CONFLICT (sha256) DO NOTHING
RETURNING sha256, id;

-- name: create-incoming-vectors
CREATE TEMP TABLE incoming_vectors (reference_id bigint, embedding_model text, embedding vector) ON COMMIT DROP;

-- name: copy-incoming-vectors
COPY incoming_vectors (reference_id, embedding_model, embedding) FROM STDIN WITH (FORMAT BINARY);

-- name: upsert-incoming-vectors
INSERT INTO embeddings (reference_id, embedding_model, dim, embedding)
SELECT v.reference_id, v.embedding_model, vector_dims(v.embedding), v.embedding
FROM incoming_vectors v JOIN reference_implants r ON r.id = v.reference_id
ON CONFLICT (reference_id, embedding_model) DO UPDATE SET dim = EXCLUDED.dim, embedding = EXCLUDED.embedding;

-- name: get-reference
SELECT id, manufacturer, model, diameter_mm, source_filename, sha256, object_key, width, height, source, created_at,
       group_id
FROM reference_implants WHERE id = %(id)s;

-- name: reference-filters
-- Not a query: the filters of every query below that says /* reference-filters */ over `r`, in its place.
-- A NULL filter means "any"; queries run unprepared, so the planner drops the filters that are NULL and
-- can use an index for the others.
(%(manufacturer)s::text IS NULL OR r.manufacturer = %(manufacturer)s)
AND (%(model)s::text IS NULL OR r.model = %(model)s)
AND (%(diameter_min)s::numeric IS NULL OR r.diameter_mm >= %(diameter_min)s)
AND (%(diameter_max)s::numeric IS NULL OR r.diameter_mm <= %(diameter_max)s)
AND (%(text)s::text IS NULL OR r.manufacturer || ' ' || r.model || ' ' || r.source_filename ILIKE '%%' || %(text)s || '%%')

-- name: list-references
SELECT r.id, r.manufacturer, r.model, r.diameter_mm, r.source_filename, r.sha256, r.object_key, r.width, r.height,
       r.source, r.created_at, r.group_id
FROM reference_implants r
WHERE /* reference-filters */
ORDER BY r.manufacturer, r.model, r.diameter_mm, r.id
LIMIT %(limit)s OFFSET %(offset)s;

-- name: count-references
SELECT count(*) FROM reference_implants r WHERE /* reference-filters */;

-- name: search
-- The k nearest references of one embedding model by cosine similarity. {dim} and {embedding_model} are
-- literals (db.search fills them in), so that the model's partial HNSW index over
-- embedding::{kind}({dim}) WHERE embedding_model = {embedding_model} matches the query ({kind}: vector, or
-- halfvec with RAIOX_INDEX_TYPE=halfvec); db.search chooses its ef_search, or an exact scan for a small
-- filtered set. The similarity is always computed from the full 32-bit vectors.
SELECT r.id, r.manufacturer, r.model, r.diameter_mm, r.source_filename, r.object_key, r.source,
       1 - (e.embedding::vector({dim}) <=> %(q)s::vector({dim})) AS similarity
FROM embeddings e JOIN reference_implants r ON r.id = e.reference_id
WHERE e.embedding_model = {embedding_model} AND /* reference-filters */
ORDER BY e.embedding::{kind}({dim}) <=> %(q)s::{kind}({dim})
LIMIT %(k)s;

-- name: label-bound
-- The least ({order} = ASC) or greatest (DESC) {column} among the references a search of one embedding
-- model would see, optionally within one manufacturer: ORDER BY ... LIMIT 1 on the (manufacturer, model)
-- index takes a few probes whatever the table's size, where min() or count(DISTINCT) would read every row.
SELECT r.{column} FROM reference_implants r
WHERE EXISTS (SELECT 1 FROM embeddings e WHERE e.reference_id = r.id AND e.embedding_model = %(embedding_model)s)
  AND (%(only)s::text IS NULL OR r.manufacturer = %(only)s)
  AND /* reference-filters */
ORDER BY r.manufacturer {order}, r.model {order}
LIMIT 1;

-- name: delete-reference
DELETE FROM reference_implants WHERE id = %(id)s RETURNING object_key;

-- name: update-labels
UPDATE reference_implants SET manufacturer = %(manufacturer)s, model = %(model)s, diameter_mm = %(diameter_mm)s
WHERE id = %(id)s RETURNING id;

-- name: count-by-manufacturer
SELECT manufacturer, count(*) FROM reference_implants GROUP BY manufacturer ORDER BY count(*) DESC, manufacturer;

-- name: count-by-source
SELECT source, count(*) FROM reference_implants GROUP BY source;

-- name: count-by-label
SELECT manufacturer, model, count(*) FROM reference_implants GROUP BY manufacturer, model ORDER BY manufacturer, model;

-- name: count-by-embedding-model
SELECT embedding_model, count(*) FROM embeddings GROUP BY embedding_model ORDER BY embedding_model;

-- name: missing-embeddings
SELECT r.id, r.object_key FROM reference_implants r
WHERE NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.reference_id = r.id AND e.embedding_model = %(embedding_model)s)
ORDER BY r.id;

-- name: embeddings-for-model
-- Fetched in binary (db.embeddings), where numeric has no float loader: the diameter comes as float8.
SELECT r.id, r.manufacturer, r.model, r.diameter_mm::float8 AS diameter_mm, r.source_filename, r.object_key, r.source,
       r.group_id, e.embedding
FROM embeddings e JOIN reference_implants r ON r.id = e.reference_id
WHERE e.embedding_model = %(embedding_model)s ORDER BY r.id;

-- name: object-keys
SELECT object_key FROM reference_implants;

-- name: insert-match-log
INSERT INTO match_log (query_sha256, embedding_model, k, filters, results, confidence, confident, confidence_of, answer)
VALUES (%(query_sha256)s, %(embedding_model)s, %(k)s, %(filters)s, %(results)s, %(confidence)s, %(confident)s,
        %(confidence_of)s, %(answer)s)
RETURNING id;

-- name: set-feedback
UPDATE match_log SET feedback = %(feedback)s, feedback_label = %(feedback_label)s, feedback_at = now()
WHERE id = %(id)s RETURNING id;

-- name: get-match-log
SELECT id, created_at, query_sha256, embedding_model, k, filters, results, confidence, confident, confidence_of, answer,
       feedback, feedback_label
FROM match_log WHERE id = %(id)s;

-- name: reference-vector
SELECT embedding FROM embeddings WHERE reference_id = %(id)s AND embedding_model = %(embedding_model)s;

-- ---- Staff sign-in failures (raiox_core/sign_in.py; table from 003_sign_in_failures.sql) -------------

-- name: lock-sign-in-client
-- Serialises one address's accounting until the transaction ends; 1397311310 is "SIGN", a key space
-- apart from the migrations' single-key lock.
SELECT pg_advisory_xact_lock(1397311310, hashtext(%(client)s));

-- name: sign-in-failure-counts
SELECT count(*) FILTER (WHERE client = %(client)s AND failed_at > now() - make_interval(secs => %(window_s)s)),
       extract(epoch FROM now() - max(failed_at) FILTER (
           WHERE client = %(client)s AND failed_at > now() - make_interval(secs => %(window_s)s)))::float8,
       count(*) FILTER (WHERE failed_at > now() - make_interval(secs => %(global_window_s)s))
FROM staff_sign_in_failures
WHERE failed_at > now() - make_interval(secs => greatest(%(window_s)s, %(global_window_s)s));

-- name: record-sign-in-failure
INSERT INTO staff_sign_in_failures (client) VALUES (%(client)s);

-- name: prune-sign-in-failures
DELETE FROM staff_sign_in_failures WHERE failed_at <= now() - make_interval(secs => %(keep_s)s);

-- name: clear-sign-in-failures
DELETE FROM staff_sign_in_failures WHERE client = %(client)s;

-- == Image locks and missing images (catalogue.py, doctor) ==================================

-- name: lock-image
-- One image hash's lock, held to the end of the transaction: taken by an insert before it adds the row
-- and by whoever deletes or restores that image's stored object, so the two never interleave.
-- The first 64 bits of the hash are the key (a collision only makes two images wait for each other).
SELECT pg_advisory_xact_lock(('x' || substr(%(sha256)s, 1, 16))::bit(64)::bigint);

-- name: lock-images
-- lock-image for many hashes in one round trip, in key order (two bulk inserts never wait on each other in a cycle).
SELECT count(pg_advisory_xact_lock(k)) FROM (
    SELECT DISTINCT ('x' || substr(s, 1, 16))::bit(64)::bigint AS k FROM unnest(%(shas)s::text[]) s ORDER BY 1) keys;

-- name: reference-images
SELECT id, sha256, object_key FROM reference_implants ORDER BY id;

-- ---- API keys (raiox_core/api_keys.py): only a key's SHA-256 is stored.

-- name: insert-api-key
INSERT INTO api_keys (name, scope, key_sha256) VALUES (%(name)s, %(scope)s, %(key_sha256)s)
RETURNING id, name, scope, created_at, revoked_at;

-- name: list-api-keys
SELECT id, name, scope, created_at, revoked_at FROM api_keys ORDER BY name, created_at;

-- name: revoke-api-key
UPDATE api_keys SET revoked_at = now() WHERE name = %(name)s AND revoked_at IS NULL RETURNING id;

-- name: find-api-key
SELECT id, name, scope, created_at, revoked_at FROM api_keys
WHERE key_sha256 = %(key_sha256)s AND revoked_at IS NULL;

-- name: claim-submission
-- A row when this delivery is to be matched: a new submission, or one left pending by a process that
-- stopped (older than stale_s). A redelivery of any other submission returns nothing.
INSERT INTO form_submissions (submission_id, source, form_id) VALUES (%(submission_id)s, %(source)s, %(form_id)s)
ON CONFLICT (submission_id) DO UPDATE SET received_at = now()
    WHERE form_submissions.status = 'pending' AND form_submissions.received_at < now() - make_interval(secs => %(stale_s)s)
RETURNING submission_id;

-- name: finish-submission
UPDATE form_submissions SET status = %(status)s, results = %(results)s, error = %(error)s, finished_at = now()
WHERE submission_id = %(submission_id)s;

-- name: record-submission-delivery
UPDATE form_submissions SET delivered_at = CASE WHEN %(error)s::text IS NULL THEN now() END, delivery_error = %(error)s
WHERE submission_id = %(submission_id)s;

-- name: get-submission
SELECT submission_id, source, form_id, status, results, error, received_at, finished_at, delivered_at, delivery_error,
       status = 'pending' AND received_at < now() - make_interval(secs => %(stale_s)s) AS stale
FROM form_submissions WHERE submission_id = %(submission_id)s;

-- name: latest-submissions
SELECT submission_id, source, form_id, status, results, error, received_at, finished_at, delivered_at, delivery_error,
       status = 'pending' AND received_at < now() - make_interval(secs => %(stale_s)s) AS stale
FROM form_submissions ORDER BY received_at DESC LIMIT %(limit)s;

-- name: insert-calibration
INSERT INTO calibrations (embedding_model, n_references, report) VALUES (%(embedding_model)s, %(n_references)s, %(report)s)
RETURNING id, computed_at;

-- name: latest-calibration
SELECT embedding_model, computed_at, n_references, report FROM calibrations
WHERE embedding_model = %(embedding_model)s ORDER BY computed_at DESC, id DESC LIMIT 1;

-- name: sample-vectors
-- Stored vectors of one model drawn at random, for the recall probe (binary: float32 arrays).
SELECT reference_id, embedding FROM embeddings WHERE embedding_model = %(embedding_model)s ORDER BY random() LIMIT %(n)s;

-- name: vector-count
SELECT count(*) AS n FROM embeddings WHERE embedding_model = %(embedding_model)s;

-- name: vector-dim
SELECT dim FROM embeddings WHERE embedding_model = %(embedding_model)s LIMIT 1;

-- name: save-search-tuning
INSERT INTO search_tuning (embedding_model, ef_search, exact, recall, target, samples, vectors, ladder, index_type,
                           recall_low)
VALUES (%(embedding_model)s, %(ef_search)s, %(exact)s, %(recall)s, %(target)s, %(samples)s, %(vectors)s, %(ladder)s,
        %(index_type)s, %(recall_low)s)
ON CONFLICT (embedding_model) DO UPDATE SET ef_search = EXCLUDED.ef_search, exact = EXCLUDED.exact,
    recall = EXCLUDED.recall, target = EXCLUDED.target, samples = EXCLUDED.samples, vectors = EXCLUDED.vectors,
    ladder = EXCLUDED.ladder, index_type = EXCLUDED.index_type, recall_low = EXCLUDED.recall_low, measured_at = now();

-- name: search-tuning
SELECT embedding_model, ef_search, exact, recall, target, samples, vectors, ladder, measured_at, index_type, recall_low
FROM search_tuning WHERE embedding_model = %(embedding_model)s;

-- name: insert-adapter
INSERT INTO adapters (base_model, embedding_model, residual, n_references, report, adopted)
VALUES (%(base_model)s, %(embedding_model)s, %(residual)s, %(n_references)s, %(report)s, %(adopted)s)
RETURNING id, created_at;

-- name: deactivate-adapters
UPDATE adapters SET active = false WHERE base_model = %(base_model)s AND active RETURNING embedding_model;

-- name: activate-adapter
UPDATE adapters SET active = true WHERE id = %(id)s AND adopted;

-- name: active-adapter
SELECT id, embedding_model, created_at FROM adapters WHERE base_model = %(base_model)s AND active;

-- name: adapter-residual
SELECT residual FROM adapters WHERE embedding_model = %(embedding_model)s AND adopted ORDER BY id DESC LIMIT 1;

-- name: adapter-runs
SELECT id, base_model, embedding_model, n_references, report, adopted, active, created_at FROM adapters
WHERE base_model = %(base_model)s ORDER BY created_at DESC, id DESC LIMIT %(limit)s;

-- name: vectors-to-adapt
-- The base vectors of references that have no vector of the adapter yet (ingested by a door without it).
SELECT e.reference_id AS id, e.embedding FROM embeddings e
WHERE e.embedding_model = %(base_model)s AND NOT EXISTS (
    SELECT 1 FROM embeddings a WHERE a.reference_id = e.reference_id AND a.embedding_model = %(embedding_model)s)
ORDER BY e.reference_id;
