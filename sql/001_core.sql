-- Core schema: accounts, plans and rates, routes, SIP accounts, live sessions
-- with their reservations, CDRs, the ledger, API keys and vouchers.
-- Money is NUMERIC(20,6) everywhere. tenant_id is the top reseller of a row
-- (NULL for the operator's own rows), so a distributed PostgreSQL can shard
-- by it later.

CREATE TABLE accounts (
    id              bigserial PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('admin', 'reseller', 'client')),
    parent_id       bigint REFERENCES accounts (id),
    -- Resellers above this account, nearest first; the admin is not in it,
    -- because the operator is never charged for a call.
    ancestors       bigint[] NOT NULL DEFAULT '{}',
    tenant_id       bigint,
    login           text NOT NULL UNIQUE,
    password_hash   text,
    status          text NOT NULL DEFAULT 'active'
                    CHECK (status IN ('active', 'inactive', 'blocked')),
    billing         text NOT NULL DEFAULT 'prepaid'
                    CHECK (billing IN ('prepaid', 'postpaid')),
    balance         numeric(20, 6) NOT NULL DEFAULT 0,
    credit_limit    numeric(20, 6) NOT NULL DEFAULT 0 CHECK (credit_limit >= 0),
    -- Sum of the reservations of this account's live sessions.
    reserved        numeric(20, 6) NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    currency        char(3) NOT NULL,
    -- Most simultaneous calls; 0 means no limit.
    max_concurrent  integer NOT NULL DEFAULT 0 CHECK (max_concurrent >= 0),
    plan_id         bigint,
    -- A reseller's markup over its wholesale plan (0.200000 = +20 %).
    markup          numeric(12, 6) NOT NULL DEFAULT 0.2 CHECK (markup >= 0),
    name            text,
    email           text,
    phone           text,
    language        text,
    sip_sequence    integer NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX accounts_parent ON accounts (parent_id);

-- Logins and SIP account names share one namespace, because PJSIP endpoint
-- names are global. Every name an account uses has a row here.
CREATE TABLE names (
    name        text PRIMARY KEY,
    account_id  bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE
);

CREATE TABLE plans (
    id              bigserial PRIMARY KEY,
    name            text NOT NULL,
    -- The reseller that sells this retail plan; NULL for the operator's plans.
    owner_id        bigint REFERENCES accounts (id),
    -- The wholesale plan a retail plan is derived from (rates x (1 + markup)).
    parent_plan_id  bigint REFERENCES plans (id),
    tenant_id       bigint,
    free_seconds    integer NOT NULL DEFAULT 0 CHECK (free_seconds >= 0),
    decimals        smallint NOT NULL DEFAULT 6 CHECK (decimals BETWEEN 0 AND 6),
    rounding        text NOT NULL DEFAULT 'half-up'
                    CHECK (rounding IN ('half-up', 'up', 'down')),
    intl_prefix     text NOT NULL DEFAULT '00' CHECK (intl_prefix ~ '^[0-9]{0,4}$'),
    route_order     text NOT NULL DEFAULT 'priority'
                    CHECK (route_order IN ('priority', 'cheapest', 'random')),
    tariff_limit    integer NOT NULL DEFAULT 3 CHECK (tariff_limit > 0),
    initial_credit  numeric(20, 6) NOT NULL DEFAULT 0 CHECK (initial_credit >= 0),
    signup          boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX plans_name ON plans (coalesce(owner_id, 0), name);

ALTER TABLE accounts
    ADD CONSTRAINT accounts_plan FOREIGN KEY (plan_id) REFERENCES plans (id);

-- One row per prefix and activation time. valid_from makes future-dated rate
-- changes possible without a new table; a deck import replaces a plan's rows
-- in one transaction.
CREATE TABLE rates (
    plan_id       bigint NOT NULL REFERENCES plans (id) ON DELETE CASCADE,
    prefix        text NOT NULL CHECK (prefix ~ '^[0-9]{1,15}$'),
    destination   text NOT NULL,
    rate          numeric(20, 6) NOT NULL CHECK (rate >= 0),
    initblock     integer NOT NULL CHECK (initblock >= 0),
    billingblock  integer NOT NULL CHECK (billingblock > 0),
    connect_fee   numeric(20, 6) NOT NULL DEFAULT 0 CHECK (connect_fee >= 0),
    valid_from    timestamptz NOT NULL DEFAULT '-infinity',
    PRIMARY KEY (plan_id, prefix, valid_from)
);

CREATE TABLE trunks (
    id            bigserial PRIMARY KEY,
    name          text NOT NULL UNIQUE,
    -- Asterisk dial string with a {number} placeholder, e.g. PJSIP/{number}@carrier.
    dialstring    text NOT NULL CHECK (position('{number}' IN dialstring) > 0),
    -- What the carrier charges us, for cheapest ordering and the CDR's buy cost.
    cost_plan_id  bigint REFERENCES plans (id),
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE routes (
    id        bigserial PRIMARY KEY,
    plan_id   bigint NOT NULL REFERENCES plans (id) ON DELETE CASCADE,
    -- '' routes every destination.
    prefix    text NOT NULL DEFAULT '' CHECK (prefix ~ '^[0-9]{0,15}$'),
    trunk_id  bigint NOT NULL REFERENCES trunks (id) ON DELETE CASCADE,
    priority  integer NOT NULL DEFAULT 1,
    UNIQUE (plan_id, prefix, trunk_id)
);

CREATE TABLE sip_accounts (
    id             bigserial PRIMARY KEY,
    account_id     bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    -- The PJSIP endpoint id, also the SIP user name.
    name           text NOT NULL UNIQUE,
    kind           text NOT NULL CHECK (kind IN ('main', 'normal', 'ipauth', 'webrtc')),
    -- For an IP authorization: the SIP account whose calls it places.
    parent_sip_id  bigint REFERENCES sip_accounts (id) ON DELETE CASCADE,
    sequence       integer,
    -- Stored recoverably because Asterisk reads it (ps_auths, userpass).
    password       text,
    ip             inet,
    port           integer CHECK (port BETWEEN 1 AND 65535),
    status         text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    callerid       text,
    context        text NOT NULL DEFAULT 'callgate-outbound',
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'ipauth') = (ip IS NOT NULL)),
    CHECK ((kind = 'ipauth') = (parent_sip_id IS NOT NULL))
);
CREATE INDEX sip_accounts_account ON sip_accounts (account_id);
-- An active IP and port belongs to one SIP account only.
CREATE UNIQUE INDEX sip_accounts_active_ip ON sip_accounts (ip, port)
    WHERE kind = 'ipauth' AND status = 'active';

CREATE TABLE callerids (
    id          bigserial PRIMARY KEY,
    account_id  bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    cid         text NOT NULL,
    name        text,
    active      boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, cid)
);
CREATE UNIQUE INDEX callerids_one_active ON callerids (account_id) WHERE active;

-- One row per call callgate has seen, keyed by Asterisk's unique id. The
-- primary key makes authorize and settle idempotent across processes.
CREATE TABLE sessions (
    uniqueid        text PRIMARY KEY,
    node            text NOT NULL DEFAULT '',
    tenant_id       bigint,
    state           text NOT NULL
                    CHECK (state IN ('live', 'settled', 'rejected', 'unauthorized')),
    account_id      bigint REFERENCES accounts (id),
    sip_account_id  bigint REFERENCES sip_accounts (id) ON DELETE SET NULL,
    sip_name        text,
    channel         text,
    number          text,
    destination     text,
    prefix          text,
    callerid        text,
    max_seconds     integer,
    -- full: the whole max duration is reserved; interval: the debit loop
    -- keeps funded_seconds ahead of the talk time.
    reserve_mode    text CHECK (reserve_mode IN ('full', 'interval')),
    funded_seconds  integer,
    trunk_ids       bigint[] NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    answered_at     timestamptz,
    hangup_at       timestamptz,
    settled_at      timestamptz,
    settle_source   text
);
CREATE INDEX sessions_live_node ON sessions (node, created_at) WHERE state = 'live';
CREATE INDEX sessions_live_account ON sessions (account_id) WHERE state = 'live';

-- What each account of a live session's chain holds, with the rate it was
-- rated at, so that settle charges what authorize promised.
CREATE TABLE reservations (
    uniqueid      text NOT NULL REFERENCES sessions (uniqueid) ON DELETE CASCADE,
    account_id    bigint NOT NULL REFERENCES accounts (id),
    -- 0 for the client, 1 for its reseller, 2 for the reseller above, ...
    depth         smallint NOT NULL,
    plan_id       bigint NOT NULL,
    prefix        text NOT NULL,
    rate          numeric(20, 6) NOT NULL,
    initblock     integer NOT NULL,
    billingblock  integer NOT NULL,
    connect_fee   numeric(20, 6) NOT NULL,
    free_seconds  integer NOT NULL,
    decimals      smallint NOT NULL,
    rounding      text NOT NULL,
    amount        numeric(20, 6) NOT NULL CHECK (amount >= 0),
    PRIMARY KEY (uniqueid, account_id)
);
CREATE INDEX reservations_account ON reservations (account_id);

CREATE TABLE cdrs (
    id                bigserial PRIMARY KEY,
    uniqueid          text NOT NULL UNIQUE,
    node              text NOT NULL DEFAULT '',
    tenant_id         bigint,
    account_id        bigint NOT NULL REFERENCES accounts (id),
    sip_account_id    bigint,
    sip_name          text,
    number            text NOT NULL,
    destination       text,
    prefix            text,
    callerid          text,
    trunk_id          bigint,
    trunk_name        text,
    started_at        timestamptz NOT NULL,
    answered_seconds  integer NOT NULL,
    billed_seconds    integer NOT NULL,
    -- The client's cost; each account's own cost is in cdr_charges.
    cost              numeric(20, 6) NOT NULL,
    buy_cost          numeric(20, 6),
    disposition       text NOT NULL DEFAULT 'ANSWERED',
    hangup_cause      integer,
    -- agi, ami, reconcile or expiry: which path settled the call.
    source            text NOT NULL,
    -- No source of billed seconds was found: billed 0 for an operator to review.
    unresolved        boolean NOT NULL DEFAULT false,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX cdrs_account ON cdrs (account_id, id DESC);

CREATE TABLE cdr_charges (
    cdr_id          bigint NOT NULL REFERENCES cdrs (id) ON DELETE CASCADE,
    account_id      bigint NOT NULL REFERENCES accounts (id),
    depth           smallint NOT NULL,
    plan_id         bigint NOT NULL,
    rate            numeric(20, 6) NOT NULL,
    connect_fee     numeric(20, 6) NOT NULL,
    billed_seconds  integer NOT NULL,
    cost            numeric(20, 6) NOT NULL,
    PRIMARY KEY (cdr_id, account_id)
);
CREATE INDEX cdr_charges_account ON cdr_charges (account_id);

CREATE TABLE failed_cdrs (
    id              bigserial PRIMARY KEY,
    uniqueid        text NOT NULL UNIQUE,
    node            text NOT NULL DEFAULT '',
    tenant_id       bigint,
    account_id      bigint REFERENCES accounts (id),
    sip_account_id  bigint,
    sip_name        text,
    number          text,
    destination     text,
    dialstatus      text,
    reason          text NOT NULL,
    hangup_cause    integer,
    source          text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX failed_cdrs_account ON failed_cdrs (account_id, id DESC);

-- Append-only: the balance of an account always equals the sum of its rows.
CREATE TABLE ledger (
    id             bigserial PRIMARY KEY,
    account_id     bigint NOT NULL REFERENCES accounts (id),
    tenant_id      bigint,
    amount         numeric(20, 6) NOT NULL,
    balance_after  numeric(20, 6) NOT NULL,
    kind           text NOT NULL CHECK (kind IN (
                       'call', 'refill', 'voucher', 'transfer', 'agent_payment',
                       'sms', 'esim', 'adjustment')),
    reference      text,
    provider       text,
    provider_txid  text,
    external_id    text,
    note           text,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_account ON ledger (account_id, id DESC);

-- Credits from outside (reseller transfers, agent payments), applied at most
-- once per (reseller, provider, external_id).
CREATE TABLE payments (
    id             bigserial PRIMARY KEY,
    reseller_id    bigint NOT NULL REFERENCES accounts (id),
    client_id      bigint NOT NULL REFERENCES accounts (id),
    provider       text NOT NULL,
    external_id    text NOT NULL,
    amount         numeric(20, 6) NOT NULL CHECK (amount > 0),
    currency       char(3) NOT NULL,
    status         text NOT NULL CHECK (status IN ('pending', 'paid', 'failed')),
    provider_txid  text,
    ledger_id      bigint REFERENCES ledger (id),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (reseller_id, provider, external_id)
);

CREATE TABLE api_keys (
    id            bigserial PRIMARY KEY,
    account_id    bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    -- SHA-256 of the key; the key itself is shown once and never stored.
    key_hash      bytea NOT NULL UNIQUE,
    label         text,
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz
);

CREATE TABLE vouchers (
    id           bigserial PRIMARY KEY,
    code         text NOT NULL UNIQUE,
    amount       numeric(20, 6) NOT NULL CHECK (amount > 0),
    currency     char(3) NOT NULL,
    -- A voucher issued for a reseller credits only that reseller's clients.
    reseller_id  bigint REFERENCES accounts (id),
    redeemed_by  bigint REFERENCES accounts (id),
    redeemed_at  timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- One row per Asterisk node: whether its AMI link is up, as last reported by
-- the process that owns the node.
CREATE TABLE nodes (
    name           text PRIMARY KEY,
    ami_connected  boolean NOT NULL DEFAULT false,
    heartbeat_at   timestamptz NOT NULL DEFAULT now(),
    owner          text
);

-- Counters shared by all processes for abuse limits and lockouts.
CREATE TABLE rate_limits (
    key           text PRIMARY KEY,
    window_start  timestamptz NOT NULL,
    hits          integer NOT NULL
);
