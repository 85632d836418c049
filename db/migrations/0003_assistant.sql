-- Assistant chat: conversations, their messages, per-clinic usage for the budget, and the
-- circuit breaker every LlmWorker container shares.

CREATE TABLE conversations (
    id              uuid PRIMARY KEY,
    clinic_id       uuid NOT NULL REFERENCES clinics (id),
    title           text CHECK (length(title) <= 200),
    created_by      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conversations_clinic_updated ON conversations (clinic_id, updated_at DESC);

-- A staff question (role 'user', done at once) and the assistant's reply (role 'assistant'),
-- created 'queued' with the question and filled in by LlmWorker: queued -> thinking ->
-- done | failed. One reply row per job, so a redelivered job can never add a second reply.
CREATE TABLE messages (
    id              uuid PRIMARY KEY,
    clinic_id       uuid NOT NULL REFERENCES clinics (id),
    conversation_id uuid NOT NULL REFERENCES conversations (id),
    role            text NOT NULL CHECK (role IN ('user', 'assistant')),
    content         text,
    status          text NOT NULL CHECK (status IN ('queued', 'thinking', 'done', 'failed')),
    reply_to        uuid REFERENCES messages (id),
    job_id          uuid REFERENCES jobs (id),
    -- the worker's claim while it calls the model (a crashed worker's claim expires).
    claimed_until   timestamptz,
    provider        text,
    model           text,
    input_tokens    integer,
    output_tokens   integer,
    latency_ms      integer,
    error           text,
    request_id      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    CHECK (role = 'user' OR job_id IS NOT NULL)
);
CREATE INDEX messages_conversation ON messages (clinic_id, conversation_id, created_at);
CREATE UNIQUE INDEX messages_one_reply_per_job ON messages (job_id) WHERE job_id IS NOT NULL;

-- The per-clinic budget: requests per minute ('minute' rows) and tokens per day ('day' rows).
CREATE TABLE assistant_usage (
    clinic_id       uuid NOT NULL REFERENCES clinics (id),
    period          text NOT NULL CHECK (period IN ('minute', 'day')),
    period_start    timestamptz NOT NULL,
    requests        integer NOT NULL DEFAULT 0,
    tokens          bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (clinic_id, period, period_start)
);

-- One row per model provider (not per clinic: an outage hits every clinic alike), shared by
-- every worker container. closed -> open after N consecutive transient failures; open ->
-- half_open after the cool-down, when one caller takes the probe lease; the probe's
-- success closes it, its failure opens it again.
CREATE TABLE circuit_breakers (
    name            text PRIMARY KEY,
    state           text NOT NULL DEFAULT 'closed' CHECK (state IN ('closed', 'open', 'half_open')),
    failures        integer NOT NULL DEFAULT 0,
    opened_until    timestamptz,
    probe_until     timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
