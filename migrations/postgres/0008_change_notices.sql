-- Change notices for the other servers sharing this database (LISTEN/NOTIFY; see
-- src/store/changes.rs). Statement-level, so a batch of rows is one notice, and
-- sent only when the transaction commits.

CREATE FUNCTION ramboot_notify_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ramboot_events', '');
    RETURN NULL;
END $$;

CREATE TRIGGER events_notify AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION ramboot_notify_events();

-- What DHCP serves of a node: that it exists, its hostname and its reservation.
CREATE FUNCTION ramboot_notify_hosts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ramboot_hosts', '');
    RETURN NULL;
END $$;

CREATE TRIGGER nodes_notify AFTER INSERT OR DELETE OR UPDATE OF mac, hostname, reserved_ip ON nodes
    FOR EACH STATEMENT EXECUTE FUNCTION ramboot_notify_hosts();
