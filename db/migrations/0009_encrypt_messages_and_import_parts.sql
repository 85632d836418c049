-- What staff write to the assistant (a question can name a patient), what it answers, and
-- uploaded CSV files are PII: envelope-encrypted like leads (frontdesk.platform.crypto: a
-- KMS data key per row, AES-256-GCM bound to '<table>:<row>:<column>').
--
-- Expand only, so code of either side of this migration keeps working: the plaintext
-- columns stay and are still read where a row has no ciphertext (rows written before);
-- new rows leave them NULL. Housekeeping encrypts the old messages and titles in batches
-- and forgets old import files; a later migration can drop the plaintext columns once no
-- row uses them.

ALTER TABLE messages
    ADD COLUMN content_enc  bytea,
    ADD COLUMN dek          bytea,
    ADD COLUMN kms_key_id   text,
    ADD CONSTRAINT messages_content_key CHECK (content_enc IS NULL OR dek IS NOT NULL);

ALTER TABLE conversations
    ADD COLUMN title_enc    bytea,
    ADD COLUMN dek          bytea,
    ADD COLUMN kms_key_id   text,
    ADD CONSTRAINT conversations_title_key CHECK (title_enc IS NULL OR dek IS NOT NULL);

-- An import's parts are encrypted under the import's data key, each bound to
-- 'lead_import_parts:<import id>/<part>:data'; parts of an import without a key are the
-- plaintext of an upload stored before this migration.
ALTER TABLE lead_imports
    ADD COLUMN dek          bytea,
    ADD COLUMN kms_key_id   text;

-- Plaintext left to encrypt (Housekeeping): found without a scan of every message.
CREATE INDEX messages_plaintext ON messages (created_at) WHERE content IS NOT NULL;
CREATE INDEX conversations_plaintext ON conversations (created_at) WHERE title IS NOT NULL;
