-- Submissions of a clinic's web form (Jotform) received by the HTTP API's webhook (raiox_core/submissions.py).
-- Only what the match needs and its answer are kept: the form and submission ids, the status, the results
-- (the same JSON as POST /v1/match) or the reason of a failure. The form's other answers (names, e-mail,
-- patient, tooth) and the uploaded files' URLs are never stored. The submission id is the key, so a
-- redelivered webhook finds its row and is not matched twice.
CREATE TABLE form_submissions (
    submission_id  text PRIMARY KEY CHECK (submission_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    source         text NOT NULL DEFAULT 'jotform',
    form_id        text NOT NULL CHECK (form_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    status         text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'failed')),
    results        jsonb,
    error          text,
    received_at    timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    delivered_at   timestamptz,  -- when the result reached RAIOX_RESULT_WEBHOOK_URL
    delivery_error text
);
CREATE INDEX form_submissions_received_at_idx ON form_submissions (received_at);
