-- Patients made from provider bookings: one per clinic and person, even when two workers
-- make the same new person at once. A person is their email's blind index, else their
-- phone's (the HMACs of the two are domain-separated, so one column holds either); the
-- insert is an upsert on this unique index. Staff-created patients leave it NULL: two people
-- may share an address, and staff decide. Rows made before keep NULL too; the lookup by
-- email and phone still finds them first.
ALTER TABLE patients ADD COLUMN contact_bidx bytea;
CREATE UNIQUE INDEX patients_one_per_contact ON patients (clinic_id, contact_bidx)
    WHERE contact_bidx IS NOT NULL;
