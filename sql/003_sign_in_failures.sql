-- Failed staff sign-ins, kept on the server so that a reload, a new browser session or a second process
-- cannot reset the count (raiox_core/sign_in.py holds the policy). One row per attempt that got as far as
-- the password check: the client's network address (or "unknown") and the time, never the attempted
-- password. Rows are deleted when that client signs in and pruned once older than the policy's windows.
CREATE TABLE staff_sign_in_failures (
    id        bigserial PRIMARY KEY,
    client    text NOT NULL CHECK (client <> ''),
    failed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX staff_sign_in_failures_client_idx ON staff_sign_in_failures (client, failed_at);
CREATE INDEX staff_sign_in_failures_failed_at_idx ON staff_sign_in_failures (failed_at);
