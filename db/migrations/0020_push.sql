-- Live screens: the browsers connected to the WebSocket API, and the job events they follow.

-- One row per open connection: whose it is (clinic, staff member) and what it follows.
-- API Gateway closes a connection after 10 idle minutes and after 2 hours at most; a row
-- past expires_at is never pushed to and is deleted by Housekeeping (or at its 410 Gone).
CREATE TABLE websocket_connections (
    connection_id   text PRIMARY KEY,
    clinic_id       uuid NOT NULL REFERENCES clinics (id) ON DELETE CASCADE,
    subject         text NOT NULL,
    topics          text[] NOT NULL DEFAULT '{}',
    connected_at    timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL DEFAULT now() + interval '2 hours'
);
CREATE INDEX websocket_connections_clinic ON websocket_connections (clinic_id, expires_at);
CREATE INDEX websocket_connections_expires ON websocket_connections (expires_at);

-- Every job of every kind tells its screens how it goes: a change of status or progress
-- writes job.progress, job.completed or job.failed to the outbox in the transaction that
-- made it, whoever made it (a worker, Housekeeping, a cancel). Ids, numbers and the
-- progress message only: never the job's payload, result or error.
CREATE FUNCTION jobs_publish_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    event text;
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status AND NEW.status = 'succeeded' THEN
        event := 'job.completed';
    ELSIF NEW.status IS DISTINCT FROM OLD.status
          AND NEW.status IN ('failed', 'dead', 'cancelled') THEN
        event := 'job.failed';
    ELSIF NEW.status IS DISTINCT FROM OLD.status
          OR NEW.progress IS DISTINCT FROM OLD.progress
          OR NEW.progress_message IS DISTINCT FROM OLD.progress_message THEN
        event := 'job.progress';
    ELSE
        RETURN NULL;
    END IF;
    INSERT INTO outbox (target, destination, payload, request_id)
    VALUES ('bus', 'default',
            jsonb_build_object(
                'detailType', event,
                'detail', jsonb_build_object(
                    'eventId', gen_random_uuid(),
                    'jobId', NEW.id,
                    'clinicId', NEW.clinic_id,
                    'kind', NEW.kind,
                    'status', NEW.status,
                    'progress', NEW.progress,
                    'progressMessage', NEW.progress_message)),
            NEW.request_id);
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_publish_change AFTER UPDATE OF status, progress, progress_message ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobs_publish_change();
