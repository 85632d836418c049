-- Rotating an endpoint's signing secret without breaking its receiver: the secret it
-- replaces stays valid until `previous_secret_expires_at`, and every delivery meanwhile is
-- signed with both (two v1= signatures), so the receiver can switch when it likes. The
-- previous secret keeps its ciphertext and data key, moved here as they were. Needs 0023.
-- Expand only.
ALTER TABLE webhook_endpoints
    ADD COLUMN previous_secret_enc bytea,
    ADD COLUMN previous_dek bytea,
    ADD COLUMN previous_secret_expires_at timestamptz,
    ADD CONSTRAINT webhook_endpoints_previous_secret CHECK (
        (previous_secret_enc IS NULL) = (previous_dek IS NULL)
        AND (previous_secret_enc IS NULL) = (previous_secret_expires_at IS NULL));
