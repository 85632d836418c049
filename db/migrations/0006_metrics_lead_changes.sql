-- Metrics watch leads by updated_at (moved by provider and import upserts), not created_at.
CREATE INDEX leads_updated ON leads (updated_at);
DROP INDEX IF EXISTS leads_created;
