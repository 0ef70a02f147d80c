-- chimera serve, schema version 3: API tokens expire and are revoked. Both NULL for the
-- tokens made before (they keep working until revoked).

ALTER TABLE api_tokens ADD COLUMN expires_at BIGINT; -- unix ms; NULL: never
ALTER TABLE api_tokens ADD COLUMN revoked_at BIGINT; -- unix ms; NULL: not revoked
