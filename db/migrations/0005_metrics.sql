-- Control-tower metrics: one pre-calculated row per clinic and local day (daily_metrics),
-- written by MetricsFunction with set-based SQL, and the state of its runs (metrics_runs).
-- Also: every source table the incremental run watches has a timestamp that moves on
-- every change, kept by a trigger rather than by each UPDATE remembering to set it.

CREATE TABLE daily_metrics (
    clinic_id               uuid NOT NULL REFERENCES clinics (id),
    -- the clinic's local calendar day (clinics.timezone)
    day                     date NOT NULL,
    leads_new               integer NOT NULL,
    -- {"web": 3, "google": 1}: new leads of the day by source
    leads_by_source         jsonb NOT NULL,
    -- of the day's new leads, those that have become patients (so far)
    leads_converted         integer NOT NULL,
    -- appointments taking place that day, by their current status
    appointments_booked     integer NOT NULL,
    appointments_cancelled  integer NOT NULL,
    appointments_completed  integer NOT NULL,
    appointments_no_show    integer NOT NULL,
    -- utilisation: minutes of non-cancelled appointments / minutes of working hours
    booked_minutes          integer NOT NULL,
    working_minutes         integer NOT NULL,
    -- [{"doctorId", "bookedMinutes", "workingMinutes", "utilisation"}] ordered by doctorId
    doctor_utilisation      jsonb NOT NULL,
    assistant_questions     integer NOT NULL,
    -- median of (reply completed - question asked) of the day's answered questions
    assistant_median_reply_ms integer,
    notifications_sent      integer NOT NULL,
    notifications_failed    integer NOT NULL,
    -- when these numbers were written; a run that finds the same numbers leaves the row alone
    computed_at             timestamptz NOT NULL,
    PRIMARY KEY (clinic_id, day)
);

-- One row per run mode: 'recent' (every 5 minutes: today, yesterday and the days of rows
-- changed since the watermark) and 'full' (nightly: the last 35 days of every clinic).
CREATE TABLE metrics_runs (
    mode            text PRIMARY KEY CHECK (mode IN ('recent', 'full')),
    -- rows changed at or after (watermark - overlap) are looked at by the next recent run
    watermark       timestamptz NOT NULL,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz NOT NULL,
    days_computed   integer NOT NULL,
    rows_written    integer NOT NULL
);

-- updated_at moves on every UPDATE, whoever writes it.
CREATE FUNCTION touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TRIGGER appointments_touch_updated_at
    BEFORE UPDATE ON appointments
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

CREATE TRIGGER messages_touch_updated_at
    BEFORE UPDATE ON messages
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

ALTER TABLE notification_deliveries
    ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();

CREATE TRIGGER notification_deliveries_touch_updated_at
    BEFORE UPDATE ON notification_deliveries
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

-- What changed since the watermark (the recent run), and per clinic and day (the aggregate).
CREATE INDEX appointments_updated ON appointments (updated_at);
CREATE INDEX leads_created ON leads (created_at);
CREATE INDEX patients_created ON patients (created_at) WHERE lead_id IS NOT NULL;
CREATE INDEX messages_updated ON messages (updated_at);
CREATE INDEX messages_clinic_created ON messages (clinic_id, created_at);
CREATE INDEX notification_deliveries_updated ON notification_deliveries (updated_at);
CREATE INDEX notification_deliveries_clinic_created
    ON notification_deliveries (clinic_id, created_at);
