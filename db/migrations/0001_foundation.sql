-- Foundation: clinics, leads (encrypted PII + blind indexes), jobs, the outbox,
-- idempotency keys and notification deliveries.

CREATE TABLE clinics (
    id              uuid PRIMARY KEY,
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    -- sha256 of the public form key: the key itself is never stored.
    form_key_hash   bytea UNIQUE,
    -- where staff notifications go (a clinic mailbox, not a patient's address).
    notify_email    text,
    timezone        text NOT NULL DEFAULT 'UTC',
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE leads (
    id              uuid PRIMARY KEY,
    clinic_id       uuid NOT NULL REFERENCES clinics (id),
    source          text NOT NULL,
    consent         boolean NOT NULL,
    -- PII: AES-256-GCM (nonce || ciphertext) under the row's data key.
    name_enc        bytea NOT NULL,
    email_enc       bytea,
    phone_enc       bytea,
    notes_enc       bytea,
    -- the data key, encrypted by KMS, and the KMS key that did it.
    dek             bytea NOT NULL,
    kms_key_id      text NOT NULL,
    -- HMAC blind indexes of the normalised email and phone, for dedupe.
    email_bidx      bytea,
    phone_bidx      bytea,
    -- the first earlier lead of the same clinic with the same email or phone.
    duplicate_of    uuid REFERENCES leads (id),
    request_id      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (email_enc IS NOT NULL OR phone_enc IS NOT NULL)
);
CREATE INDEX leads_clinic_created ON leads (clinic_id, created_at);
CREATE INDEX leads_clinic_email ON leads (clinic_id, email_bidx) WHERE email_bidx IS NOT NULL;
CREATE INDEX leads_clinic_phone ON leads (clinic_id, phone_bidx) WHERE phone_bidx IS NOT NULL;

CREATE TABLE jobs (
    id                  uuid PRIMARY KEY,
    clinic_id           uuid NOT NULL REFERENCES clinics (id),
    kind                text NOT NULL,
    status              text NOT NULL DEFAULT 'queued' CHECK (
                            status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'dead')),
    progress            smallint NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    progress_message    text,
    attempts            integer NOT NULL DEFAULT 0,
    payload             jsonb NOT NULL DEFAULT '{}',
    result              jsonb,
    error               text,
    request_id          text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    finished_at         timestamptz
);
CREATE INDEX jobs_clinic_created ON jobs (clinic_id, created_at DESC);

-- Follow-up work written in the same transaction as the change it follows, relayed to SQS
-- (target 'queue') or EventBridge (target 'bus') right after commit and by the sweeper.
CREATE TABLE outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target          text NOT NULL CHECK (target IN ('queue', 'bus')),
    destination     text NOT NULL,
    payload         jsonb NOT NULL,
    request_id      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    claimed_until   timestamptz,
    sent_at         timestamptz,
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
CREATE INDEX outbox_sent_at ON outbox (sent_at) WHERE sent_at IS NOT NULL;

-- A POST's Idempotency-Key, written in the same transaction as the POST's effect.
CREATE TABLE idempotency_keys (
    clinic_id       uuid NOT NULL REFERENCES clinics (id),
    key             text NOT NULL,
    request_hash    bytea NOT NULL,
    status_code     integer,
    response        jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic_id, key)
);

-- One row per notification: the claim that makes a redelivered message send nothing twice.
CREATE TABLE notification_deliveries (
    notification_id     text PRIMARY KEY,
    clinic_id           uuid NOT NULL REFERENCES clinics (id),
    job_id              uuid REFERENCES jobs (id),
    channel             text NOT NULL CHECK (channel IN ('email', 'sms')),
    status              text NOT NULL CHECK (status IN ('sending', 'sent', 'failed')),
    claimed_until       timestamptz,
    attempts            integer NOT NULL DEFAULT 1,
    provider_message_id text,
    error               text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    sent_at             timestamptz
);
