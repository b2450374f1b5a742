-- What Asterisk reads and writes in callgate's database.
--
-- ps_endpoints, ps_auths, ps_aors and ps_endpoint_id_ips are views over
-- sip_accounts, so a SIP account or IP authorization changed by callgate is
-- what Asterisk's res_config_pgsql reads in the same transaction. Columns
-- follow Asterisk 22's realtime schema (alembic head 2285f2ace275); values
-- are text, which res_config_pgsql accepts for every column type, and NULL
-- means "Asterisk's built-in default".

CREATE VIEW ps_endpoints AS
SELECT
    s.name::varchar(255)                               AS id,
    CASE WHEN s.kind = 'webrtc' THEN 'transport-wss' END::varchar(40) AS transport,
    s.name::varchar(2048)                              AS aors,
    CASE WHEN s.kind = 'ipauth' THEN NULL ELSE s.name END::varchar(255) AS auth,
    s.context::varchar(40)                             AS context,
    'all'::varchar(200)                                AS disallow,
    CASE WHEN s.kind = 'webrtc' THEN 'opus,ulaw,alaw' ELSE 'ulaw,alaw,g722' END::varchar(200)
                                                       AS allow,
    'no'::text                                         AS direct_media,
    'rfc4733'::text                                    AS dtmf_mode,
    'yes'::text                                        AS force_rport,
    CASE WHEN s.kind = 'ipauth' THEN 'no' ELSE 'yes' END::text AS rewrite_contact,
    'yes'::text                                        AS rtp_symmetric,
    CASE WHEN s.kind = 'ipauth' THEN 'ip' ELSE 'username' END::varchar(80) AS identify_by,
    s.callerid::varchar(40)                            AS callerid,
    'no'::text                                         AS trust_id_inbound,
    a.login::varchar(80)                               AS accountcode,
    -- Asterisk queries "WHERE mailboxes != ''" at boot, so the column must exist.
    ''::varchar(40)                                    AS mailboxes,
    -- A call whose media stopped is hung up after 60 s (300 s on hold), so it
    -- is billed to that point instead of running to its L() limit.
    60                                                 AS rtp_timeout,
    300                                                AS rtp_timeout_hold,
    CASE WHEN s.kind = 'webrtc' THEN 'yes' ELSE 'no' END::text AS webrtc,
    CASE WHEN s.kind = 'webrtc' THEN 'yes' END::text   AS dtls_auto_generate_cert,
    a.language::varchar(40)                            AS language,
    coalesce(a.tenant_id, 0)::text::varchar(80)        AS tenantid
FROM sip_accounts s
JOIN accounts a ON a.id = s.account_id
WHERE s.status = 'active';

CREATE VIEW ps_auths AS
SELECT
    s.name::varchar(255)      AS id,
    'userpass'::text          AS auth_type,
    s.name::varchar(40)       AS username,
    s.password::varchar(80)   AS password,
    NULL::varchar(255)        AS realm,
    NULL::varchar(40)         AS md5_cred,
    NULL::integer             AS nonce_lifetime
FROM sip_accounts s
WHERE s.status = 'active' AND s.kind <> 'ipauth' AND s.password IS NOT NULL;

CREATE VIEW ps_aors AS
SELECT
    s.name::varchar(255)                                 AS id,
    CASE WHEN s.kind = 'ipauth' THEN 0 ELSE 5 END        AS max_contacts,
    'yes'::text                                          AS remove_existing,
    CASE WHEN s.kind = 'ipauth' THEN 0 ELSE 60 END       AS qualify_frequency,
    3600                                                 AS default_expiration,
    ''::varchar(80)                                      AS mailboxes
FROM sip_accounts s
WHERE s.status = 'active';

-- One identify row per active IP authorization: the PBX's address and port.
CREATE VIEW ps_endpoint_id_ips AS
SELECT
    s.name::varchar(255)  AS id,
    s.name::varchar(255)  AS endpoint,
    (CASE WHEN family(s.ip) = 6 THEN '[' || host(s.ip) || ']' ELSE host(s.ip) END
        || ':' || s.port)::varchar(80) AS match,
    'no'::text            AS srv_lookups,
    NULL::varchar(255)    AS match_header,
    NULL::varchar(255)    AS match_request_uri
FROM sip_accounts s
WHERE s.kind = 'ipauth' AND s.status = 'active';

-- Registrations, written by Asterisk only (sorcery "contact = realtime").
CREATE TABLE ps_contacts (
    id                    varchar(255) NOT NULL,
    uri                   varchar(511),
    expiration_time       bigint,
    qualify_frequency     integer,
    outbound_proxy        varchar(255),
    path                  text,
    user_agent            varchar(255),
    qualify_timeout       double precision,
    reg_server            varchar(255),
    authenticate_qualify  text,
    via_addr              varchar(40),
    via_port              integer,
    call_id               varchar(255),
    endpoint              varchar(255),
    prune_on_boot         text,
    qualify_2xx_only      text,
    UNIQUE (id, reg_server)
);
CREATE INDEX ps_contacts_qualify ON ps_contacts (qualify_frequency, expiration_time);

-- Asterisk's own CDRs (cdr_pgsql). Every column has a default or is nullable,
-- because cdr_pgsql sends '' for a NOT NULL column it has no value for, and
-- free-text columns are text, because an over-long varchar drops the record.
CREATE TABLE cdr (
    id           bigserial PRIMARY KEY,
    calldate     timestamptz,
    start        timestamptz,
    answer       timestamptz,
    "end"        timestamptz,
    clid         text,
    src          text,
    dst          text,
    dcontext     text,
    channel      text,
    dstchannel   text,
    lastapp      text,
    lastdata     text,
    duration     integer,
    billsec      integer,
    disposition  text,
    amaflags     text,
    accountcode  text,
    peeraccount  text,
    uniqueid     text,
    linkedid     text,
    userfield    text,
    sequence     integer
);
CREATE INDEX cdr_uniqueid ON cdr (uniqueid);
