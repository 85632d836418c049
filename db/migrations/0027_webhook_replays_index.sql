-- A delivery's replays, found by index: retention deletes a replayed delivery only after its
-- replays, and each delete looks for rows pointing at it (replay_of ON DELETE SET NULL).
-- Replays are few, so the index holds only them. Needs 0023. Expand only.
CREATE INDEX outbound_webhook_deliveries_replays
    ON outbound_webhook_deliveries (replay_of) WHERE replay_of IS NOT NULL;
