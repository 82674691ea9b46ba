-- API keys for internal services, the refresh engine's lease and cooldown,
-- and what the ops summary counts.

create table api_key (
    id uuid primary key,
    -- The public part of the key (`spb_{public_id}_{secret}`), used to look it up.
    public_id text not null unique,
    -- SHA-256 of the secret part (256 random bits: a fast hash is enough).
    secret_hash bytea not null,
    name text not null,
    tenant_id uuid references tenant (id),
    scopes text[] not null,
    created_at timestamptz not null,
    last_used_at timestamptz,
    revoked_at timestamptz,
    check (tenant_id is null or not ('tenants:admin' = any (scopes)))
);

alter table connection
    add column refresh_lease_owner uuid,
    add column refresh_lease_until timestamptz,
    add column refresh_cooldown_until timestamptz,
    add column refresh_failures integer not null default 0,
    add column force_refresh_at timestamptz;

-- Which key obtained tokens for which connection, counted per day (never the token).
create table token_issue_count (
    api_key_id uuid not null references api_key (id),
    connection_id uuid not null references connection (id),
    day date not null,
    count bigint not null,
    last_at timestamptz not null,
    primary key (api_key_id, connection_id, day)
);

-- One row per call to LWA's refresh grant, for the ops summary and dashboard.
create table refresh_event (
    id bigserial primary key,
    connection_id uuid not null references connection (id),
    at timestamptz not null,
    outcome text not null check (outcome in ('ok', 'invalid_grant', 'app_credentials_rejected', 'amazon_unavailable')),
    latency_ms integer not null
);
create index refresh_event_at on refresh_event (at);
