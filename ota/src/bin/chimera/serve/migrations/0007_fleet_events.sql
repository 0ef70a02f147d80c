-- chimera serve, schema version 7: the fleet-wide event stream's overflow. Replicas on
-- PostgreSQL send each other their events with NOTIFY (serve/postgres_events.rs); a batch
-- too large for a notification (8000 bytes) is written here, and the notification carries
-- the row's id. Rows are deleted a few minutes later. Unused with SQLite (one replica).

CREATE TABLE fleet_events (
    id         TEXT PRIMARY KEY,  -- made by the sender
    replica    TEXT NOT NULL,     -- the sender's name
    body       TEXT NOT NULL,     -- the batch, JSON (ASCII)
    created_at BIGINT NOT NULL
);
CREATE INDEX fleet_events_time ON fleet_events (created_at);
