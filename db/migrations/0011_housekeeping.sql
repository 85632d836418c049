-- Housekeeping: jobs whose message is gone are rescued (sent again through the outbox) or,
-- after a few rescues, given up on; rows that grow forever are deleted after their
-- retention. Expand only.

-- How often Housekeeping has sent a job's message again.
ALTER TABLE jobs ADD COLUMN rescues integer NOT NULL DEFAULT 0;
-- Open jobs by when a worker last touched them: what the rescue looks at.
CREATE INDEX jobs_open_updated ON jobs (updated_at) WHERE status IN ('queued', 'running');

-- What the retention deletes by age, found without scanning the table.
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
CREATE INDEX assistant_usage_period_start ON assistant_usage (period, period_start);
-- Jobs given up on lately (GET /ops/jobs/stuck): dead jobs are few.
CREATE INDEX jobs_dead_finished ON jobs (finished_at) WHERE status = 'dead';
