-- Keys of the HTTP API (raiox_core/api_keys.py). Only the SHA-256 of a key is stored: the key itself is
-- shown once, by `raiox keys create`, and cannot be recovered from this table. A revoked key keeps its row
-- (who had access, and until when); a name is unique among the keys not revoked, so it can be reissued.
CREATE TABLE api_keys (
    id         bigserial PRIMARY KEY,
    name       text NOT NULL CHECK (name <> ''),
    scope      text NOT NULL CHECK (scope IN ('match', 'staff', 'webhook')),
    key_sha256 text NOT NULL UNIQUE CHECK (length(key_sha256) = 64),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE UNIQUE INDEX api_keys_active_name_idx ON api_keys (name) WHERE revoked_at IS NULL;
