-- chimera serve, schema version 1: the fleet (devices, groups), receipts, audit, API tokens.
-- Portable SQL (SQLite 3.35+ and PostgreSQL 12+): TEXT ids made by the service, BIGINT unix
-- milliseconds for times, INTEGER 0/1 for flags, no AUTOINCREMENT / SERIAL.

CREATE TABLE devices (
    id          TEXT PRIMARY KEY,
    signing_key TEXT NOT NULL,   -- base64 ML-DSA-65 public key (receipts verify with it)
    key_id      TEXT NOT NULL,
    kem_key     TEXT,            -- base64 ML-KEM-768 public key, when enrolled with one
    enrolled_at BIGINT NOT NULL
);

CREATE TABLE groups (
    name    TEXT PRIMARY KEY,
    kem_key TEXT                 -- the group's sealing key line (`chimera group-key`), if any
);

CREATE TABLE group_members (
    group_name TEXT NOT NULL REFERENCES groups(name),
    device_id  TEXT NOT NULL REFERENCES devices(id),
    PRIMARY KEY (group_name, device_id)
);

CREATE TABLE receipts (
    id          TEXT PRIMARY KEY,
    device_id   TEXT NOT NULL REFERENCES devices(id),
    kind        TEXT NOT NULL,   -- workflow | trust | unverified
    workflow_id TEXT,            -- NULL unless verified
    digest      TEXT,            -- workflow_sha256, NULL unless verified
    verdict     TEXT,            -- applied | rolled_back | rejected | revoked, NULL unless verified
    signed_text TEXT NOT NULL,   -- the receipt as received
    received_at BIGINT NOT NULL,
    verified    INTEGER NOT NULL, -- 1 only when the device's enrolled key verified it
    error       TEXT             -- why it did not verify
);
CREATE INDEX receipts_device_time ON receipts (device_id, received_at);

CREATE TABLE audit (
    id     TEXT PRIMARY KEY,
    at     BIGINT NOT NULL,
    actor  TEXT NOT NULL,        -- token:NAME, cli, system
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_time ON audit (at);

CREATE TABLE api_tokens (
    sha256     TEXT PRIMARY KEY, -- hex SHA-256 of the token; the token itself is never stored
    name       TEXT NOT NULL UNIQUE,
    role       TEXT NOT NULL,    -- viewer | operator | admin
    created_at BIGINT NOT NULL
);
