-- pgproof's tamper-evident audit chain.
--
-- Applications insert into pgproof.audit_events (actor, action, subject, details,
-- optionally occurred_at and id); a trigger assigns the next sequence number under
-- a lock on the single head row, links the row to the previous head and hashes it.
-- pgproof.audit_verify() walks the chain in sequence order and reports the first
-- break and whether the stored head matches the last row.
--
-- Improvements over certctl's migration 000047, each found by experiment:
--   * chain order is seq, assigned under the head lock, never timestamp order;
--   * the hashed payload is injective: fixed-width binary fields and
--     length-prefixed text; timestamps enter as timestamptz_send (microseconds
--     since 2000-01-01 UTC), which keeps the era (44 BC <> 44 AD) and ignores
--     TimeZone/DateStyle;
--   * every function pins search_path, so pg_dump's empty search_path cannot
--     break them;
--   * sha256() is built in (PostgreSQL 11+): no extension;
--   * the verifier checks that the head equals the last row (a cut tail is a break);
--   * a duplicate id raises instead of being skipped by ON CONFLICT after the head
--     moved; the chaining trigger is named to fire after any other BEFORE trigger
--     that might drop the row;
--   * rows are write-once: UPDATE, DELETE and TRUNCATE are refused.

CREATE SCHEMA pgproof;

CREATE TABLE pgproof.audit_chain_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_seq  bigint  NOT NULL DEFAULT 0,
    head_hash bytea   NOT NULL DEFAULT '\x0000000000000000000000000000000000000000000000000000000000000000'
);
INSERT INTO pgproof.audit_chain_head DEFAULT VALUES;

CREATE TABLE pgproof.audit_events (
    seq         bigint      PRIMARY KEY,
    id          uuid        NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    occurred_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor       text        NOT NULL,
    action      text        NOT NULL,
    subject     text        NOT NULL,
    details     jsonb       NOT NULL DEFAULT '{}',
    prev_hash   bytea       NOT NULL,
    row_hash    bytea       NOT NULL
);

-- The canonical bytes of a row: injective, settings-independent.
CREATE FUNCTION pgproof.audit_payload(
    seq bigint, id uuid, occurred_at timestamptz, actor text, action text,
    subject text, details jsonb, prev_hash bytea
) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT int8send(seq)
        || uuid_send(id)
        || timestamptz_send(occurred_at)
        || int4send(octet_length(convert_to(actor, 'UTF8')))   || convert_to(actor, 'UTF8')
        || int4send(octet_length(convert_to(action, 'UTF8')))  || convert_to(action, 'UTF8')
        || int4send(octet_length(convert_to(subject, 'UTF8'))) || convert_to(subject, 'UTF8')
        || int4send(octet_length(convert_to(details::text, 'UTF8'))) || convert_to(details::text, 'UTF8')
        || int4send(octet_length(prev_hash)) || prev_hash
$$;

CREATE FUNCTION pgproof.audit_events_chain() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    head pgproof.audit_chain_head%ROWTYPE;
BEGIN
    SELECT * INTO STRICT head FROM pgproof.audit_chain_head WHERE singleton FOR UPDATE;
    IF NEW.id IS NULL THEN
        NEW.id := gen_random_uuid();
    ELSIF EXISTS (SELECT 1 FROM pgproof.audit_events e WHERE e.id = NEW.id) THEN
        RAISE EXCEPTION 'audit event % already exists', NEW.id USING ERRCODE = 'unique_violation';
    END IF;
    NEW.occurred_at := coalesce(NEW.occurred_at, clock_timestamp());
    NEW.details := coalesce(NEW.details, '{}'::jsonb);
    NEW.seq := head.last_seq + 1;
    NEW.prev_hash := head.head_hash;
    NEW.row_hash := sha256(pgproof.audit_payload(NEW.seq, NEW.id, NEW.occurred_at, NEW.actor,
                                                 NEW.action, NEW.subject, NEW.details, NEW.prev_hash));
    UPDATE pgproof.audit_chain_head SET last_seq = NEW.seq, head_hash = NEW.row_hash WHERE singleton;
    RETURN NEW;
END
$$;

-- Named to sort last: BEFORE triggers fire in name order, so one that drops the row
-- fires before the head moves.
CREATE TRIGGER zzzz_audit_events_chain
    BEFORE INSERT ON pgproof.audit_events
    FOR EACH ROW EXECUTE FUNCTION pgproof.audit_events_chain();

CREATE FUNCTION pgproof.audit_events_write_once() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION '%.% is append-only: % refused', TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_events_write_once
    BEFORE UPDATE OR DELETE ON pgproof.audit_events
    FOR EACH ROW EXECUTE FUNCTION pgproof.audit_events_write_once();
CREATE TRIGGER audit_events_no_truncate
    BEFORE TRUNCATE ON pgproof.audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION pgproof.audit_events_write_once();
-- The head row is updated only by the chaining trigger; deleting it would hide a cut.
CREATE TRIGGER audit_chain_head_no_delete
    BEFORE DELETE ON pgproof.audit_chain_head
    FOR EACH ROW EXECUTE FUNCTION pgproof.audit_events_write_once();
CREATE TRIGGER audit_chain_head_no_truncate
    BEFORE TRUNCATE ON pgproof.audit_chain_head
    FOR EACH STATEMENT EXECUTE FUNCTION pgproof.audit_events_write_once();

-- Walks the chain in seq order. first_break_* name the first row whose seq, link or
-- hash is wrong; head_matches is false when the head row does not equal the last
-- row (rows cut from the tail, or the head edited).
CREATE FUNCTION pgproof.audit_verify(
    OUT rows_walked bigint,
    OUT first_break_seq bigint,
    OUT first_break_id uuid,
    OUT first_break_reason text,
    OUT head_matches boolean,
    OUT head_seq bigint,
    OUT last_seq bigint
)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    prev bytea := '\x0000000000000000000000000000000000000000000000000000000000000000';
    expected bigint := 1;
    head pgproof.audit_chain_head%ROWTYPE;
BEGIN
    rows_walked := 0;
    FOR r IN SELECT * FROM pgproof.audit_events ORDER BY seq LOOP
        rows_walked := rows_walked + 1;
        IF first_break_seq IS NULL THEN
            IF r.seq <> expected THEN
                first_break_reason := format('expected seq %s, found %s', expected, r.seq);
            ELSIF r.prev_hash <> prev THEN
                first_break_reason := 'prev_hash does not match the previous row';
            ELSIF r.row_hash <> sha256(pgproof.audit_payload(r.seq, r.id, r.occurred_at, r.actor,
                                                             r.action, r.subject, r.details, r.prev_hash)) THEN
                first_break_reason := 'row_hash does not match the row';
            END IF;
            IF first_break_reason IS NOT NULL THEN
                first_break_seq := r.seq;
                first_break_id := r.id;
            END IF;
        END IF;
        prev := r.row_hash;
        expected := r.seq + 1;
    END LOOP;
    last_seq := expected - 1;
    SELECT * INTO STRICT head FROM pgproof.audit_chain_head WHERE singleton;
    head_seq := head.last_seq;
    head_matches := head.head_hash = prev AND head.last_seq = last_seq;
END
$$;
