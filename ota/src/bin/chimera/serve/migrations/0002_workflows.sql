-- chimera serve, schema version 2: signed workflow documents uploaded to the service.

CREATE TABLE workflows (
    digest      TEXT PRIMARY KEY, -- hex SHA-256 of the signed bytes (what receipts name)
    id          TEXT NOT NULL,    -- the document's id
    sequence    BIGINT NOT NULL,
    issuer      TEXT NOT NULL,    -- issuer name in the trust metadata
    key_id      TEXT NOT NULL,    -- the issuer key that signed it
    sealed      INTEGER NOT NULL,
    targets     TEXT NOT NULL,    -- JSON {"devices": [...], "groups": [...]}
    text        TEXT NOT NULL,    -- the signed document as uploaded
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
