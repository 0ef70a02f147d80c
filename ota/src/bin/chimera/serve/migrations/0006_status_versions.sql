-- chimera serve, schema version 6: what a device's status says about its software, for the
-- fleet list and the dashboard. NULL when its status did not say (or before the first).

ALTER TABLE device_status ADD COLUMN agent_version TEXT;   -- status.version
ALTER TABLE device_status ADD COLUMN trust_version BIGINT; -- status.workflow.trust_version
