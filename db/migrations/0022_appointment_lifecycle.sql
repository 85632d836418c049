-- The lifecycle of appointments and doctors, enforced here rather than in code:
--   * an appointment's status moves only booked -> cancelled | completed | no_show (and
--     cancelled -> booked, a provider booking made again); completed and no_show are final
--     and can only be recorded once the appointment has begun;
--   * a deactivated doctor takes no new booking (nor a booking moved onto them); their
--     booked appointments stay as they are, listed for rebooking, never cancelled here;
--   * a doctor's ids at providers, one per provider, unique per provider in a clinic;
--   * an index for the operators' job metrics (GET /ops/jobs).
-- Needs 0002 (appointments, doctors) and 0008 (doctors.provider / external_id, copied).

-- When the outcome (completed or no_show) was recorded; set by the trigger below.
ALTER TABLE appointments ADD COLUMN outcome_at timestamptz;

-- Each refusal names its rule as the error's constraint, so the application turns it into
-- a clear 409 by `diag.constraint_name` (frontdesk.appointments.bookings).
CREATE FUNCTION appointments_enforce_lifecycle() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    doctor_active boolean;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.status IS DISTINCT FROM OLD.status THEN
        IF NOT ((OLD.status = 'booked' AND NEW.status IN ('cancelled', 'completed', 'no_show'))
                OR (OLD.status = 'cancelled' AND NEW.status = 'booked')) THEN
            RAISE EXCEPTION 'appointment % is %; it cannot become %',
                            OLD.id, OLD.status, NEW.status
                USING ERRCODE = 'check_violation',
                      CONSTRAINT = 'appointments_status_transition';
        END IF;
        IF NEW.status IN ('completed', 'no_show') THEN
            IF OLD.starts_at > now() THEN
                RAISE EXCEPTION 'appointment % has not begun (it starts at %); it can be % only'
                                ' from its start', OLD.id, OLD.starts_at, NEW.status
                    USING ERRCODE = 'check_violation',
                          CONSTRAINT = 'appointments_outcome_after_start';
            END IF;
            NEW.outcome_at := now();
        END IF;
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.status IN ('completed', 'no_show')
       AND (NEW.doctor_id, NEW.starts_at, NEW.ends_at)
           IS DISTINCT FROM (OLD.doctor_id, OLD.starts_at, OLD.ends_at) THEN
        RAISE EXCEPTION 'appointment % is %; it can no longer be moved', OLD.id, OLD.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'appointments_status_transition';
    END IF;
    -- A new booking, one booked again or one moved (time or doctor) needs an active doctor.
    -- FOR SHARE: a deactivation running now waits for this booking to commit (and then
    -- lists it for rebooking), or this booking waits for the deactivation and is refused.
    -- A provider's upsert (INSERT ... ON CONFLICT DO UPDATE) of a booking stored before
    -- fires this for the row it proposes too; the update it becomes is checked as an update.
    IF NEW.status = 'booked'
       AND (TG_OP = 'INSERT' OR OLD.status <> 'booked'
            OR (NEW.doctor_id, NEW.starts_at, NEW.ends_at)
               IS DISTINCT FROM (OLD.doctor_id, OLD.starts_at, OLD.ends_at))
       AND NOT (TG_OP = 'INSERT' AND NEW.external_id IS NOT NULL AND EXISTS (
                    SELECT 1 FROM appointments a
                    WHERE a.clinic_id = NEW.clinic_id AND a.provider = NEW.provider
                      AND a.external_id = NEW.external_id)) THEN
        SELECT d.active INTO doctor_active
        FROM doctors d WHERE d.id = NEW.doctor_id AND d.clinic_id = NEW.clinic_id
        FOR SHARE;
        IF doctor_active IS FALSE THEN  -- no doctor at all is the foreign key's to report
            RAISE EXCEPTION 'doctor % is inactive and takes no new appointments', NEW.doctor_id
                USING ERRCODE = 'check_violation', CONSTRAINT = 'appointments_doctor_active';
        END IF;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER appointments_enforce_lifecycle
    BEFORE INSERT OR UPDATE ON appointments
    FOR EACH ROW EXECUTE FUNCTION appointments_enforce_lifecycle();

-- A doctor's booked appointments still to come (the rebooking list of a deactivated doctor).
CREATE INDEX appointments_doctor_booked_starts ON appointments (doctor_id, starts_at)
    WHERE status = 'booked';

-- When a doctor was last changed, and deactivated (null while active).
ALTER TABLE doctors
    ADD COLUMN updated_at     timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN deactivated_at timestamptz;

-- A doctor's id at each provider: provider bookings find their doctor here. One id per
-- provider and doctor; one doctor per provider id in a clinic.
CREATE TABLE doctor_provider_ids (
    clinic_id       uuid NOT NULL,
    doctor_id       uuid NOT NULL,
    provider        text NOT NULL CHECK (provider ~ '^[a-z0-9][a-z0-9_-]{0,39}$'),
    external_id     text NOT NULL CHECK (length(external_id) BETWEEN 1 AND 200),
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (doctor_id, provider),
    CONSTRAINT doctor_provider_ids_unique UNIQUE (clinic_id, provider, external_id),
    FOREIGN KEY (clinic_id, doctor_id) REFERENCES doctors (clinic_id, id) ON DELETE CASCADE
);
INSERT INTO doctor_provider_ids (clinic_id, doctor_id, provider, external_id)
SELECT clinic_id, id, provider, external_id FROM doctors WHERE external_id IS NOT NULL;
-- doctors.provider / external_id (0008) are no longer read or written; they stay for the
-- release before this one (expand, then contract) and go in a later migration.
COMMENT ON COLUMN doctors.external_id IS 'unused since 0022 (doctor_provider_ids); to drop';
COMMENT ON COLUMN doctors.provider IS 'unused since 0022 (doctor_provider_ids); to drop';

-- GET /ops/jobs: every clinic's jobs created in a window, read from the index alone.
CREATE INDEX jobs_created ON jobs (created_at) INCLUDE (kind, status, started_at, finished_at);
