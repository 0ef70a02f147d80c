-- chimera serve, schema version 3: device status from MQTT, the desired state per device,
-- rollouts (canary steps, failure budget) with their targets, and idempotent receipts (a
-- QoS 1 redelivery is the same row). Portable as before; DOUBLE PRECISION has REAL affinity
-- in SQLite.

-- The SHA-256 of the text as received: the same device sending the same bytes twice (a QoS 1
-- redelivery, a replica restart) is one receipt. NULL for rows stored before version 3
-- (NULLs are distinct in a UNIQUE index, in SQLite and PostgreSQL alike).
ALTER TABLE receipts ADD COLUMN text_sha256 TEXT;
CREATE UNIQUE INDEX receipts_device_text ON receipts (device_id, text_sha256);

-- What a device last said about itself on aegis/v1/{device}/status (retained, unsigned:
-- advisory, never an answer to a workflow).
CREATE TABLE device_status (
    device_id      TEXT PRIMARY KEY REFERENCES devices(id),
    online         INTEGER NOT NULL,
    running_id     TEXT,             -- the workflow it says it runs (status.workflow.active)
    running_digest TEXT,
    last_seen      BIGINT NOT NULL,  -- when a status or a verified receipt of it last arrived
    status_at      BIGINT NOT NULL   -- when the stored status arrived (retained snapshots
                                     -- never overwrite a newer live one)
);

-- Rollouts. The engine's work on one is claimed through this row (claimed_by, lease_until,
-- fence); every engine write checks `fence`, so a replica that lost its lease writes nothing.
CREATE TABLE rollouts (
    id                TEXT PRIMARY KEY,
    workflow_digest   TEXT NOT NULL REFERENCES workflows(digest),
    workflow_id       TEXT NOT NULL,
    rollback_digest   TEXT REFERENCES workflows(digest), -- NULL: on failure it only halts
    audience          TEXT NOT NULL,    -- JSON {"group": "..."} or {"devices": [...]}
    steps             TEXT NOT NULL,    -- JSON list of percentages, increasing, last 100
    max_negative      BIGINT NOT NULL,  -- failure budget, over every device published to
    max_missing       BIGINT NOT NULL,
    max_failure_pct   DOUBLE PRECISION, -- (negative + missing) / published, percent
    answer_timeout_ms BIGINT NOT NULL,
    state             TEXT NOT NULL,    -- running | paused | rolling_back | completed |
                                        -- halted | rolled_back | aborted
    step              BIGINT NOT NULL,  -- index into steps of the step in progress
    step_started_at   BIGINT NOT NULL,
    reason            TEXT,             -- why it halted, paused, was aborted
    created_by        TEXT NOT NULL,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    claimed_by        TEXT,             -- the replica whose engine works on it
    lease_until       BIGINT NOT NULL,  -- its claim ends then (unix ms)
    fence             BIGINT NOT NULL   -- +1 on every new claim and every operator action
);
CREATE INDEX rollouts_claimable ON rollouts (state, lease_until);

-- One row per device of a rollout's audience.
CREATE TABLE rollout_targets (
    rollout_id       TEXT NOT NULL REFERENCES rollouts(id),
    device_id        TEXT NOT NULL REFERENCES devices(id),
    step             BIGINT NOT NULL,  -- the first step that includes it
    state            TEXT NOT NULL,    -- pending | published | applied | negative | missing |
                                       -- offline
    sends            BIGINT NOT NULL,  -- publishes to it: its step's, then reconciles
    published_at     BIGINT,           -- its step published it
    sent_at          BIGINT,           -- last send; the answer is due answer_timeout_ms later
    answered_at      BIGINT,
    verdict          TEXT,             -- of its verified receipt for the rollout's document
    receipt_id       TEXT,
    reason           TEXT,
    rollback_sent_at BIGINT,
    rollback_verdict TEXT,             -- of its verified receipt for the rollback document
    PRIMARY KEY (rollout_id, device_id)
);
CREATE INDEX rollout_targets_device ON rollout_targets (device_id);

-- What each device should run: set when a document is published to it (a rollout step, a
-- rollback, `POST …/publish`); reconcile re-sends it to a device that comes back online
-- running something else and has not answered it.
CREATE TABLE desired_state (
    device_id  TEXT PRIMARY KEY REFERENCES devices(id),
    digest     TEXT NOT NULL REFERENCES workflows(digest),
    rollout_id TEXT REFERENCES rollouts(id),
    set_at     BIGINT NOT NULL,
    sent_at    BIGINT                  -- last publish to it
);
