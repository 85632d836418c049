-- The assistant's reply cache (frontdesk.assistant.reply_cache): per clinic, an answer the
-- model gave to a question in a context, reused until it expires.
--
-- `key` is a one-way digest (SHA-256) of the clinic, the question's HMAC under the
-- blind-index key (the question casefolded, whitespace collapsed, trimmed) and a digest of
-- the context the model saw; nothing in a row reads back as the question. The answer is
-- envelope-encrypted like messages (a KMS data key per row, AES-256-GCM bound to
-- 'assistant_reply_cache:<clinic>/<key hex>:answer'). Rows past `expires_at` are never
-- answered from and Housekeeping deletes them.
CREATE TABLE assistant_reply_cache (
    clinic_id       uuid NOT NULL REFERENCES clinics (id),
    key             bytea NOT NULL CHECK (length(key) = 32),
    answer_enc      bytea NOT NULL,
    dek             bytea NOT NULL,
    kms_key_id      text NOT NULL,
    provider        text,
    model           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    CHECK (expires_at > created_at),
    -- The clinic leads the key: a lookup names its clinic, so no row of another is reachable.
    PRIMARY KEY (clinic_id, key)
);
CREATE INDEX assistant_reply_cache_expiry ON assistant_reply_cache (expires_at);

-- A reply answered from the cache (in the request, no model call) says so.
ALTER TABLE messages
    ADD COLUMN cached boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT messages_cached_reply CHECK (NOT cached OR role = 'assistant');
