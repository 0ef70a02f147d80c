-- chimera serve, schema version 8: un-enrolment (DELETE /api/v1/devices/{id}, `chimera serve
-- device unenroll`). An un-enrolled device keeps its row: its receipts, status, audit rows and
-- rollout targets refer to it, and history is never deleted. It is in no group, its key
-- verifies nothing it sends from then on, the device list leaves it out, and the registry
-- import does not bring it back with the key it had (a new key enrols it again).

ALTER TABLE devices ADD COLUMN unenrolled_at BIGINT;  -- NULL while enrolled
