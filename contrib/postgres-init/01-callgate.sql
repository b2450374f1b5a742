-- Roles and database of callgate. The postgres image runs the files of
-- /docker-entrypoint-initdb.d once, as the superuser, when it creates an
-- empty data directory. The passwords come from the container's
-- environment (DB_CALLGATE_PASSWORD, DB_ASTERISK_PASSWORD). An unset one
-- stops the script with an error before any role is created.
\set ON_ERROR_STOP on
\getenv callgate_password DB_CALLGATE_PASSWORD
\getenv asterisk_password DB_ASTERISK_PASSWORD
\if :{?callgate_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'DB_CALLGATE_PASSWORD is not set'; END $$;
\endif
\if :{?asterisk_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'DB_ASTERISK_PASSWORD is not set'; END $$;
\endif

-- callgate owns the schema and applies the migrations.
CREATE ROLE callgate LOGIN PASSWORD :'callgate_password';

-- Asterisk reads the PJSIP realtime views, writes ps_contacts and inserts
-- CDRs (contrib/postgres-grants.sql grants exactly that once the tables
-- exist). cdr_pgsql sends times without an offset, in UTC, so the role's
-- sessions must read them in UTC too.
CREATE ROLE asterisk LOGIN PASSWORD :'asterisk_password';
ALTER ROLE asterisk SET timezone = 'UTC';

CREATE DATABASE callgate OWNER callgate ENCODING 'UTF8' TEMPLATE template0;
REVOKE ALL ON DATABASE callgate FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE callgate TO callgate;
GRANT CONNECT ON DATABASE callgate TO asterisk;
