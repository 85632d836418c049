-- The duplicate lookups probe leads_first_by_email / leads_first_by_phone (0004); the
-- plain blind-index indexes of 0001 only cost every insert.
DROP INDEX IF EXISTS leads_clinic_email;
DROP INDEX IF EXISTS leads_clinic_phone;
