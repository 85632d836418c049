-- A delivery is claimed by the worker posting it, until `claimed_until`: a copy of its
-- message handed to another worker meanwhile (SQS delivers at least once) finds the claim
-- and posts nothing. Recording the attempt ends the claim; a worker that died holding it
-- leaves it to expire before its own message comes back. Needs 0023. Expand only.
ALTER TABLE outbound_webhook_deliveries ADD COLUMN claimed_until timestamptz;
