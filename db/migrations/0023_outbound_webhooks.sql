-- Outbound webhooks: the endpoints a clinic registers, one delivery per (endpoint, event),
-- one attempt row per HTTP call. Needs 0001 only. Expand only.

-- An endpoint: where a clinic wants some of its events, and the secret they are signed with
-- (envelope-encrypted like lead PII: AES-256-GCM under the row's data key, bound to the row
-- and column). After `disable_after` consecutive failed attempts the worker disables it.
CREATE TABLE webhook_endpoints (
    id                   uuid PRIMARY KEY,
    clinic_id            uuid NOT NULL REFERENCES clinics (id),
    url                  text NOT NULL CHECK (length(url) BETWEEN 8 AND 2000),
    description          text CHECK (length(description) <= 200),
    event_types          text[] NOT NULL
                             CHECK (cardinality(event_types) BETWEEN 1 AND 32
                                    AND array_position(event_types, NULL) IS NULL),
    secret_enc           bytea NOT NULL,
    dek                  bytea NOT NULL,
    kms_key_id           text NOT NULL,
    status               text NOT NULL DEFAULT 'enabled'
                             CHECK (status IN ('enabled', 'disabled')),
    disabled_reason      text CHECK (length(disabled_reason) <= 300),
    consecutive_failures integer NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    last_success_at      timestamptz,
    last_failure_at      timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'disabled') = (disabled_reason IS NOT NULL))
);
CREATE INDEX webhook_endpoints_clinic ON webhook_endpoints (clinic_id, created_at);
-- The fan-out: a clinic's enabled endpoints that take an event type, from one index.
CREATE INDEX webhook_endpoints_fan_out ON webhook_endpoints USING gin (event_types)
    WHERE status = 'enabled';

-- A delivery: one event to one endpoint. `payload` is the body sent (ids, times, statuses;
-- never PII). The fan-out inserts at most one per (endpoint, event), so a redelivered event
-- changes nothing; a replay is a new row naming the delivery it repeats.
CREATE TABLE outbound_webhook_deliveries (
    id               uuid PRIMARY KEY,
    clinic_id        uuid NOT NULL REFERENCES clinics (id),
    endpoint_id      uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id         uuid NOT NULL,
    event_type       text NOT NULL CHECK (length(event_type) <= 100),
    payload          jsonb NOT NULL,
    replay_of        uuid REFERENCES outbound_webhook_deliveries (id) ON DELETE SET NULL,
    status           text NOT NULL DEFAULT 'pending'
                         CHECK (status IN ('pending', 'retrying', 'delivered', 'failed',
                                           'cancelled')),
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_status_code integer CHECK (last_status_code BETWEEN 100 AND 599),
    last_error       text CHECK (length(last_error) <= 300),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    CHECK ((status = 'delivered') = (delivered_at IS NOT NULL))
);
CREATE UNIQUE INDEX outbound_webhook_deliveries_once
    ON outbound_webhook_deliveries (endpoint_id, event_id) WHERE replay_of IS NULL;
CREATE INDEX outbound_webhook_deliveries_endpoint
    ON outbound_webhook_deliveries (endpoint_id, created_at DESC);
CREATE INDEX outbound_webhook_deliveries_created ON outbound_webhook_deliveries (created_at);

-- An attempt: one HTTP call, its status code or error (a class of failure, never the
-- receiver's answer: it could echo anything) and how long it took.
CREATE TABLE outbound_webhook_attempts (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id  uuid NOT NULL REFERENCES outbound_webhook_deliveries (id) ON DELETE CASCADE,
    attempt      integer NOT NULL CHECK (attempt >= 1),
    succeeded    boolean NOT NULL,
    status_code  integer CHECK (status_code BETWEEN 100 AND 599),
    error        text CHECK (length(error) <= 300),
    latency_ms   real NOT NULL CHECK (latency_ms >= 0),
    attempted_at timestamptz NOT NULL DEFAULT now(),
    CHECK (succeeded = (error IS NULL))
);
CREATE INDEX outbound_webhook_attempts_delivery ON outbound_webhook_attempts (delivery_id, id);
