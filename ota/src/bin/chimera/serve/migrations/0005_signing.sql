-- chimera serve, schema version 5: the online signer's allotments. Each document the service
-- signs gets the next sequence for its issuer key and target, and an issue time never
-- before the last one it handed out for that key, in one transaction, so two replicas
-- never hand out the same sequence and devices' anti-replay (sequence per issuer key and
-- target, issued_at ordered per issuer key) accepts them in issue order. Portable as before.

-- The last sequence handed out per issuer key and target.
CREATE TABLE issue_sequences (
    key_id        TEXT NOT NULL,    -- the issuer key id (mldsa65:…)
    target        TEXT NOT NULL,    -- the canonical target: d:<sorted devices>|g:<sorted groups>
    last_sequence BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,  -- unix ms
    PRIMARY KEY (key_id, target)
);

-- The latest issued_at handed out per issuer key (unix seconds): devices refuse a document
-- of an issuer issued before the newest they accepted from it, so replicas whose clocks
-- differ must not go backwards.
CREATE TABLE issue_clock (
    key_id        TEXT PRIMARY KEY,
    last_issued_s BIGINT NOT NULL
);

-- Allotments also start above the sequences of documents the service holds (uploaded ones
-- included) for the same key and target: found by key id.
CREATE INDEX workflows_key ON workflows (key_id);
