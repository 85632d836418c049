-- Appointments: doctors and their working hours, patients (encrypted PII + blind indexes),
-- appointments that cannot double-book, and the reminder rows that make the reminder
-- schedule idempotent. Depends on 0001 only.

CREATE EXTENSION IF NOT EXISTS btree_gist;

-- Which patient notifications a clinic sends (confirmations, changes, reminders).
ALTER TABLE clinics
    ADD COLUMN notify_patients_by_email boolean NOT NULL DEFAULT true,
    ADD COLUMN notify_patients_by_sms   boolean NOT NULL DEFAULT false;

CREATE TABLE doctors (
    id              uuid PRIMARY KEY,
    clinic_id       uuid NOT NULL REFERENCES clinics (id),
    -- a doctor's name is not patient PII: it is shown to every patient, so it is plaintext.
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    specialty       text CHECK (length(specialty) <= 200),
    slot_minutes    integer NOT NULL CHECK (slot_minutes BETWEEN 5 AND 480),
    active          boolean NOT NULL DEFAULT true,
    request_id      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- the target of the clinic-scoped foreign keys below
    UNIQUE (clinic_id, id)
);
CREATE INDEX doctors_clinic_name ON doctors (clinic_id, name);

-- Working hours per ISO weekday (1 = Monday) in the clinic's local time; several rows a day
-- make breaks. Slots start every slot_minutes from starts_at.
CREATE TABLE doctor_working_hours (
    clinic_id       uuid NOT NULL,
    doctor_id       uuid NOT NULL,
    weekday         smallint NOT NULL CHECK (weekday BETWEEN 1 AND 7),
    starts_at       time NOT NULL,
    ends_at         time NOT NULL,
    CHECK (ends_at > starts_at),
    PRIMARY KEY (doctor_id, weekday, starts_at),
    FOREIGN KEY (clinic_id, doctor_id) REFERENCES doctors (clinic_id, id) ON DELETE CASCADE
);

CREATE TABLE patients (
    id              uuid PRIMARY KEY,
    clinic_id       uuid NOT NULL REFERENCES clinics (id),
    -- PII: AES-256-GCM (nonce || ciphertext) under the row's data key, bound to
    -- 'patients:<id>:<field>' (frontdesk.crypto.field_aad).
    name_enc        bytea NOT NULL,
    email_enc       bytea,
    phone_enc       bytea,
    dek             bytea NOT NULL,
    kms_key_id      text NOT NULL,
    email_bidx      bytea,
    phone_bidx      bytea,
    -- the lead this patient was converted from (at most one patient per lead).
    lead_id         uuid REFERENCES leads (id),
    request_id      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (clinic_id, id)
);
CREATE UNIQUE INDEX patients_one_per_lead ON patients (lead_id) WHERE lead_id IS NOT NULL;
CREATE INDEX patients_clinic_email ON patients (clinic_id, email_bidx) WHERE email_bidx IS NOT NULL;
CREATE INDEX patients_clinic_phone ON patients (clinic_id, phone_bidx) WHERE phone_bidx IS NOT NULL;

CREATE TABLE appointments (
    id              uuid PRIMARY KEY,
    clinic_id       uuid NOT NULL REFERENCES clinics (id),
    doctor_id       uuid NOT NULL,
    patient_id      uuid NOT NULL,
    starts_at       timestamptz NOT NULL,
    ends_at         timestamptz NOT NULL,
    status          text NOT NULL DEFAULT 'booked'
                    CHECK (status IN ('booked', 'cancelled', 'completed', 'no_show')),
    source          text NOT NULL,
    -- Snapshots taken by the trigger below at insert (and when doctor or patient change):
    -- the doctor's name as text; the patient's name as the patient row's ciphertext and
    -- data key, still bound to 'patients:<patient_id>:name', so no plaintext PII is stored.
    doctor_name     text NOT NULL,
    patient_name_enc bytea NOT NULL,
    patient_dek     bytea NOT NULL,
    -- when the current slot was chosen (booking or the last reschedule): reminders are for
    -- windows entered after it.
    scheduled_at    timestamptz NOT NULL DEFAULT now(),
    request_id      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    cancelled_at    timestamptz,
    CHECK (ends_at > starts_at),
    FOREIGN KEY (clinic_id, doctor_id) REFERENCES doctors (clinic_id, id),
    FOREIGN KEY (clinic_id, patient_id) REFERENCES patients (clinic_id, id),
    -- No double booking, ever: two active appointments of one doctor never overlap.
    -- Ranges are [start, end), so back-to-back slots do not conflict.
    CONSTRAINT appointments_no_overlap EXCLUDE USING gist (
        doctor_id WITH =,
        tstzrange(starts_at, ends_at) WITH &&
    ) WHERE (status <> 'cancelled')
);
CREATE INDEX appointments_clinic_starts ON appointments (clinic_id, starts_at);
CREATE INDEX appointments_booked_starts ON appointments (starts_at) WHERE status = 'booked';

CREATE FUNCTION appointments_snapshot_names() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    SELECT d.name INTO NEW.doctor_name
    FROM doctors d WHERE d.id = NEW.doctor_id AND d.clinic_id = NEW.clinic_id;
    SELECT p.name_enc, p.dek INTO NEW.patient_name_enc, NEW.patient_dek
    FROM patients p WHERE p.id = NEW.patient_id AND p.clinic_id = NEW.clinic_id;
    RETURN NEW;
END;
$$;

CREATE TRIGGER appointments_snapshot_names
    BEFORE INSERT OR UPDATE OF doctor_id, patient_id ON appointments
    FOR EACH ROW EXECUTE FUNCTION appointments_snapshot_names();

-- One row per appointment, reminder window and slot: the reminder schedule inserts with
-- ON CONFLICT DO NOTHING, so overlapping or repeated runs enqueue each reminder once.
CREATE TABLE appointment_reminders (
    id              uuid PRIMARY KEY,
    clinic_id       uuid NOT NULL REFERENCES clinics (id),
    appointment_id  uuid NOT NULL REFERENCES appointments (id),
    reminder_window text NOT NULL CHECK (reminder_window IN ('24h', '2h')),
    -- the slot reminded of: a rescheduled appointment gets reminders for its new time.
    starts_at       timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (appointment_id, reminder_window, starts_at)
);
