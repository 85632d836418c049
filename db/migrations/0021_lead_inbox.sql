-- The lead inbox: a lead's lifecycle (status), the staff member it is assigned to, staff
-- notes (encrypted like the lead's other fields), and the indexes its pages and exact
-- searches walk (frontdesk.leads.inbox).

-- Constant defaults and nullable columns: no rewrite of the table. The CHECKs are added
-- NOT VALID (every existing row has the default; new and updated rows are checked now).
ALTER TABLE leads
    ADD COLUMN status             text NOT NULL DEFAULT 'new',
    ADD COLUMN status_changed_at  timestamptz,
    -- the staff member (the token's subject) following the lead up; NULL: nobody yet.
    ADD COLUMN assigned_to        text,
    -- staff notes: AES-256-GCM under the row's data key (field "staff_notes").
    ADD COLUMN staff_notes_enc    bytea;
ALTER TABLE leads
    ADD CONSTRAINT leads_status_known
        CHECK (status IN ('new', 'contacted', 'booked', 'lost')) NOT VALID,
    ADD CONSTRAINT leads_assigned_to_length
        CHECK (length(assigned_to) BETWEEN 1 AND 200) NOT VALID;

-- The lifecycle is the database's rule, whoever writes: new -> contacted -> booked | lost.
-- Booked and lost are final. A forbidden move is a check_violation naming
-- leads_status_transition (the API answers 409); staying in the same status is no move.
CREATE FUNCTION leads_check_status_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (OLD.status, NEW.status) NOT IN (('new', 'contacted'),
                                        ('contacted', 'booked'),
                                        ('contacted', 'lost')) THEN
        RAISE EXCEPTION 'a lead cannot go from % to %', OLD.status, NEW.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'leads_status_transition',
                  TABLE = 'leads';
    END IF;
    NEW.status_changed_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER leads_status_transition BEFORE UPDATE OF status ON leads
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION leads_check_status_transition();

-- The inbox's pages are keyset pages in (created_at DESC, id DESC) order within a clinic.
-- Unfiltered pages and created-at ranges walk leads_clinic_created (0001) backwards. A
-- filter on status, assignee or source gets its own index, equality columns first, then
-- the order: a page reads its `limit` rows whatever the filter's share of the clinic, and
-- the cursor's (created_at, id) row comparison is an index condition, so a late page costs
-- what the first does. The assignee's index holds assigned rows only (imports add none).
CREATE INDEX leads_inbox_status ON leads (clinic_id, status, created_at, id);
CREATE INDEX leads_inbox_source ON leads (clinic_id, source, created_at, id);
CREATE INDEX leads_inbox_assigned ON leads (clinic_id, assigned_to, created_at, id)
    WHERE assigned_to IS NOT NULL;

-- Exact search by email or phone goes through the blind indexes over every lead, the
-- duplicates included, in the inbox's order. These replace the indexes of the duplicate
-- lookup (0004), which held first leads only: that lookup (duplicate_of IS NULL, the
-- earliest by created_at) reads the same few entries per address from these, so one index
-- per blind index serves both and an insert maintains two, not four.
CREATE INDEX leads_by_email ON leads (clinic_id, email_bidx, created_at, id)
    WHERE email_bidx IS NOT NULL;
CREATE INDEX leads_by_phone ON leads (clinic_id, phone_bidx, created_at, id)
    WHERE phone_bidx IS NOT NULL;
DROP INDEX IF EXISTS leads_first_by_email;
DROP INDEX IF EXISTS leads_first_by_phone;
