-- Provider sync: provider accounts per clinic, webhook deliveries (dedupe by delivery id),
-- leads keyed by (clinic, provider, external id), and bulk CSV imports kept in the database.
-- Needs only 0001 (applies before or after 0002/0003).

CREATE TABLE provider_accounts (
    id                  uuid PRIMARY KEY,
    clinic_id           uuid NOT NULL REFERENCES clinics (id),
    provider            text NOT NULL CHECK (provider ~ '^[a-z0-9][a-z0-9_\-]{0,39}$'),
    name                text CHECK (length(name) <= 200),
    api_base_url        text NOT NULL CHECK (length(api_base_url) <= 2000),
    -- Envelope encryption (frontdesk.crypto): the credentials JSON and the webhook signing
    -- secret, AES-256-GCM under the row's data key, bound to the row and column.
    credentials_enc     bytea NOT NULL,
    webhook_secret_enc  bytea NOT NULL,
    dek                 bytea NOT NULL,
    kms_key_id          text NOT NULL,
    -- The provider's change-feed position; advanced only together with the outbox rows of
    -- the work it covers.
    sync_cursor         text,
    status              text NOT NULL DEFAULT 'pending'
                            CHECK (status IN ('pending', 'active', 'invalid', 'disabled')),
    last_error          text,
    -- Shared per-account rate limit: the earliest moment the next provider call may start.
    next_call_at        timestamptz NOT NULL DEFAULT now(),
    requests_per_second real NOT NULL DEFAULT 5 CHECK (requests_per_second > 0),
    validated_at        timestamptz,
    last_polled_at      timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX provider_accounts_clinic ON provider_accounts (clinic_id, created_at);
CREATE INDEX provider_accounts_active ON provider_accounts (last_polled_at NULLS FIRST)
    WHERE status = 'active';

-- One row per provider delivery (webhook) or change (poller): the primary key is the
-- replay guard, written in the same transaction as the sync job it creates.
CREATE TABLE webhook_deliveries (
    account_id      uuid NOT NULL REFERENCES provider_accounts (id),
    delivery_id     text NOT NULL CHECK (length(delivery_id) BETWEEN 1 AND 200),
    clinic_id       uuid NOT NULL REFERENCES clinics (id),
    via             text NOT NULL CHECK (via IN ('webhook', 'poll')),
    resource        text NOT NULL,
    external_id     text NOT NULL,
    job_id          uuid REFERENCES jobs (id),
    received_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, delivery_id)
);
CREATE INDEX webhook_deliveries_received ON webhook_deliveries (received_at);

-- Leads from providers and imports are upserted by (clinic, provider, external id).
ALTER TABLE leads
    ADD COLUMN provider             text,
    ADD COLUMN external_id          text,
    ADD COLUMN external_updated_at  timestamptz,
    ADD COLUMN updated_at           timestamptz NOT NULL DEFAULT now(),
    ADD CONSTRAINT leads_external_pair CHECK ((provider IS NULL) = (external_id IS NULL));
CREATE UNIQUE INDEX leads_external ON leads (clinic_id, provider, external_id)
    WHERE external_id IS NOT NULL;
-- "The first earlier lead with this email (phone)": filter and order from one index, so the
-- lookup per imported row is one probe, not a walk of the clinic's leads by created_at.
CREATE INDEX leads_first_by_email ON leads (clinic_id, email_bidx, created_at)
    WHERE email_bidx IS NOT NULL AND duplicate_of IS NULL;
CREATE INDEX leads_first_by_phone ON leads (clinic_id, phone_bidx, created_at)
    WHERE phone_bidx IS NOT NULL AND duplicate_of IS NULL;

-- A CSV upload: the file in parts of at most 1 MiB (read a window at a time, never whole),
-- and the position of the last committed chunk, so a crashed worker resumes there.
CREATE TABLE lead_imports (
    id              uuid PRIMARY KEY,
    clinic_id       uuid NOT NULL REFERENCES clinics (id),
    job_id          uuid NOT NULL REFERENCES jobs (id),
    source          text NOT NULL,
    -- the header's column names, in file order.
    columns         text[] NOT NULL,
    size_bytes      bigint NOT NULL,
    part_bytes      integer NOT NULL,
    rows_total      integer NOT NULL,
    -- Resume point: byte offset and line number of the next unprocessed record.
    next_offset     bigint NOT NULL,
    next_line       integer NOT NULL DEFAULT 2,
    rows_done       integer NOT NULL DEFAULT 0,
    rows_imported   integer NOT NULL DEFAULT 0,
    rows_duplicate  integer NOT NULL DEFAULT 0,
    error_count     integer NOT NULL DEFAULT 0,
    chunks_done     integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
CREATE UNIQUE INDEX lead_imports_job ON lead_imports (job_id);

CREATE TABLE lead_import_parts (
    import_id       uuid NOT NULL REFERENCES lead_imports (id) ON DELETE CASCADE,
    part            integer NOT NULL,
    data            bytea NOT NULL,
    PRIMARY KEY (import_id, part)
);
-- Parts are CSV text: compressing them buys little and costs CPU on every read.
ALTER TABLE lead_import_parts ALTER COLUMN data SET STORAGE EXTERNAL;

-- Per-row errors (line number and reason, never the row's values).
CREATE TABLE lead_import_errors (
    import_id       uuid NOT NULL REFERENCES lead_imports (id) ON DELETE CASCADE,
    line            integer NOT NULL,
    reason          text NOT NULL,
    PRIMARY KEY (import_id, line)
);
