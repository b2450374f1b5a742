-- Privileges of the "asterisk" role on callgate's tables. Run it as the
-- "callgate" role after every `callgate migrate`, because the tables must
-- exist first. Every statement can run again without harm.
\set ON_ERROR_STOP on

GRANT USAGE ON SCHEMA public TO asterisk;

-- res_config_pgsql: the SIP accounts (sorcery.conf, extconfig.conf).
GRANT SELECT ON ps_endpoints, ps_auths, ps_aors, ps_endpoint_id_ips TO asterisk;
GRANT SELECT, INSERT, UPDATE, DELETE ON ps_contacts TO asterisk;

-- cdr_pgsql: Asterisk's own CDRs. It reads the columns from pg_catalog,
-- which needs no privilege on the table.
GRANT INSERT ON cdr TO asterisk;
GRANT USAGE ON SEQUENCE cdr_id_seq TO asterisk;
