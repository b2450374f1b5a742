-- SMS and eSIM resale: SMS rates per plan and provider, messages with the
-- reservations of every account that pays for them, bulk campaigns, the
-- shared send pace of each provider, and eSIM orders.

-- The price of one SMS segment to destinations under a prefix. A retail plan
-- without rows of its own for a provider follows its parent plan: the
-- parent's price x (1 + the owner's markup), rounded half-up to 6 decimals.
CREATE TABLE sms_rates (
    plan_id      bigint NOT NULL REFERENCES plans (id) ON DELETE CASCADE,
    provider     text NOT NULL,
    prefix       text NOT NULL CHECK (prefix ~ '^[0-9]{1,15}$'),
    destination  text NOT NULL DEFAULT '',
    price        numeric(20, 6) NOT NULL CHECK (price >= 0),
    PRIMARY KEY (plan_id, provider, prefix)
);

CREATE TABLE sms_campaigns (
    id            bigserial PRIMARY KEY,
    account_id    bigint NOT NULL REFERENCES accounts (id),
    tenant_id     bigint,
    provider      text NOT NULL,
    sender_id     text,
    message       text NOT NULL,
    -- The sending state is derived from the recipients' messages; only a
    -- cancellation is stored.
    cancelled     boolean NOT NULL DEFAULT false,
    scheduled_at  timestamptz NOT NULL,
    recipients    integer NOT NULL CHECK (recipients > 0),
    duplicates    integer NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    cancelled_at  timestamptz
);
CREATE INDEX sms_campaigns_account ON sms_campaigns (account_id, id DESC);

CREATE TABLE sms_messages (
    id                   bigserial PRIMARY KEY,
    account_id           bigint NOT NULL REFERENCES accounts (id),
    tenant_id            bigint,
    campaign_id          bigint REFERENCES sms_campaigns (id),
    provider             text NOT NULL,
    phone                text NOT NULL,
    sender_id            text,
    message              text NOT NULL,
    encoding             text NOT NULL CHECK (encoding IN ('GSM-7', 'UCS-2')),
    segments             integer NOT NULL CHECK (segments > 0),
    prefix               text NOT NULL,
    -- The client's price for the whole message; each account's own price is
    -- in sms_charges.
    price                numeric(20, 6) NOT NULL CHECK (price >= 0),
    status               text NOT NULL CHECK (status IN (
                             'SCHEDULED', 'QUEUED', 'SENDING', 'PENDING',
                             'SENT_TO_PROVIDER', 'DELIVERED', 'UNDELIVERED',
                             'FAILED', 'CANCELLED')),
    -- reserved: sms_charges are held in accounts.reserved; charged: debited
    -- through the ledger; released: given back without a charge.
    money                text NOT NULL DEFAULT 'reserved'
                         CHECK (money IN ('reserved', 'charged', 'released')),
    -- When a SCHEDULED or QUEUED message is due; a retry moves it later.
    due_at               timestamptz,
    scheduled_at         timestamptz,
    attempts             integer NOT NULL DEFAULT 0,
    claimed_at           timestamptz,
    checked_at           timestamptz,
    provider_message_id  text,
    provider_status      text,
    error                text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    sent_at              timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sms_messages_account ON sms_messages (account_id, id DESC);
CREATE INDEX sms_messages_campaign ON sms_messages (campaign_id, id)
    WHERE campaign_id IS NOT NULL;
CREATE INDEX sms_messages_due ON sms_messages (provider, due_at, id)
    WHERE status IN ('SCHEDULED', 'QUEUED');
CREATE INDEX sms_messages_unsettled ON sms_messages (status, claimed_at)
    WHERE status IN ('SENDING', 'PENDING');
CREATE INDEX sms_messages_provider_id
    ON sms_messages (provider, provider_message_id)
    WHERE provider_message_id IS NOT NULL;

-- What each account of the chain pays for a message: the client (depth 0)
-- at retail, each reseller above at its own plan's price.
CREATE TABLE sms_charges (
    message_id  bigint NOT NULL REFERENCES sms_messages (id) ON DELETE CASCADE,
    account_id  bigint NOT NULL REFERENCES accounts (id),
    depth       smallint NOT NULL,
    plan_id     bigint,
    amount      numeric(20, 6) NOT NULL CHECK (amount >= 0),
    PRIMARY KEY (message_id, account_id)
);
CREATE INDEX sms_charges_account ON sms_charges (account_id);

-- A token bucket per provider, shared by every daemon: a worker locks the
-- row, adds rate x elapsed seconds (at most one second's worth) and takes a
-- token per message it claims.
CREATE TABLE sms_pace (
    provider    text PRIMARY KEY,
    tokens      numeric(20, 6) NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE TABLE esim_orders (
    id                 bigserial PRIMARY KEY,
    account_id         bigint NOT NULL REFERENCES accounts (id),
    tenant_id          bigint,
    provider           text NOT NULL,
    external_id        text,
    -- Sent to the upstream with the order, so a repeated order is one order.
    idempotency_key    text NOT NULL UNIQUE,
    package_code       text NOT NULL,
    package_name       text NOT NULL,
    -- The buyer's price; each account's own price is in esim_charges.
    price              numeric(20, 6) NOT NULL CHECK (price >= 0),
    currency           char(3) NOT NULL,
    status             text NOT NULL CHECK (status IN ('PENDING', 'ACTIVE', 'FAILED')),
    money              text NOT NULL DEFAULT 'reserved'
                       CHECK (money IN ('reserved', 'charged', 'released')),
    upstream_order_id  text,
    upstream_status    text,
    iccid              text,
    lpa                text,
    data_total_mb      bigint,
    data_used_mb       bigint,
    expires_at         timestamptz,
    error              text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, external_id)
);
CREATE INDEX esim_orders_account ON esim_orders (account_id, id DESC);

CREATE TABLE esim_charges (
    order_id    bigint NOT NULL REFERENCES esim_orders (id) ON DELETE CASCADE,
    account_id  bigint NOT NULL REFERENCES accounts (id),
    depth       smallint NOT NULL,
    amount      numeric(20, 6) NOT NULL CHECK (amount >= 0),
    PRIMARY KEY (order_id, account_id)
);
CREATE INDEX esim_charges_account ON esim_charges (account_id);
