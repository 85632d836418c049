-- Provider bookings: appointments keyed by (clinic, provider, external id), and doctors
-- mapped to a provider's doctor id. Needs 0002 (appointments, doctors) and 0004.

ALTER TABLE appointments
    ADD COLUMN provider             text,
    ADD COLUMN external_id          text,
    -- the provider's updatedAt of the version stored: an older or equal one changes nothing.
    ADD COLUMN external_updated_at  timestamptz,
    ADD CONSTRAINT appointments_external_pair CHECK ((provider IS NULL) = (external_id IS NULL));
CREATE UNIQUE INDEX appointments_external ON appointments (clinic_id, provider, external_id)
    WHERE external_id IS NOT NULL;

-- A provider's doctor id, so that a booking's doctor maps to one of ours.
ALTER TABLE doctors
    ADD COLUMN provider     text,
    ADD COLUMN external_id  text,
    ADD CONSTRAINT doctors_external_pair CHECK ((provider IS NULL) = (external_id IS NULL));
CREATE UNIQUE INDEX doctors_external ON doctors (clinic_id, provider, external_id)
    WHERE external_id IS NOT NULL;
