-- Tell the node owners when what Asterisk reads from the realtime views
-- changes, so they can expire Asterisk's sorcery memory caches over AMI.
-- NOTIFY is delivered at commit, so a rolled-back change sends nothing.

CREATE FUNCTION callgate_notify_provisioning() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    changed sip_accounts;
BEGIN
    IF TG_OP = 'DELETE' THEN
        changed := OLD;
    ELSE
        changed := NEW;
    END IF;
    PERFORM pg_notify(
        'callgate_provisioning',
        json_build_object(
            'name', changed.name,
            'kind', changed.kind,
            'status', changed.status,
            'operation', lower(TG_OP),
            'old_name', CASE WHEN TG_OP = 'UPDATE' THEN OLD.name END
        )::text
    );
    RETURN NULL;
END;
$$;

CREATE TRIGGER sip_accounts_provisioning
AFTER INSERT OR UPDATE OR DELETE ON sip_accounts
FOR EACH ROW EXECUTE FUNCTION callgate_notify_provisioning();
