-- Tenants, connections and everything the browser flow needs.
-- Secrets are stored only sealed (bytea envelopes from crypto.rs);
-- one-time tokens, OAuth states and session ids only as SHA-256 hashes.

create table tenant (
    id uuid primary key,
    slug text not null unique check (slug ~ '^[a-z0-9][a-z0-9-]{1,62}$'),
    name text not null,
    last_marketplace_id text,
    created_at timestamptz not null
);

create table connection (
    id uuid primary key,
    tenant_id uuid not null references tenant (id),
    selling_partner_id text not null,
    account_type text not null check (account_type in ('seller', 'vendor')),
    region text not null check (region in ('na', 'eu', 'fe')),
    marketplace_id text not null,
    store_name text,
    marketplace_ids text[],
    status text not null check (status in ('active', 'needs_reauth', 'disconnected')),
    status_reason text,
    status_changed_at timestamptz not null,
    refresh_token_sealed bytea,
    access_token_sealed bytea,
    access_token_expires_at timestamptz,
    authorized_at timestamptz,
    last_refresh_at timestamptz,
    last_error_code text,
    last_error_message text,
    last_error_at timestamptz,
    created_at timestamptz not null,
    updated_at timestamptz not null,
    unique (tenant_id, selling_partner_id, region),
    check (status <> 'disconnected' or (refresh_token_sealed is null and access_token_sealed is null))
);
create index connection_tenant_created on connection (tenant_id, created_at, id);

create table login_token (
    token_hash bytea primary key,
    kind text not null check (kind in ('tenant', 'ops')),
    tenant_id uuid references tenant (id),
    user_id text not null,
    email text,
    return_to text,
    created_at timestamptz not null,
    expires_at timestamptz not null,
    check ((kind = 'tenant') = (tenant_id is not null))
);

create table oauth_state (
    state_hash bytea primary key,
    -- SHA-256 of a random value kept in the browser's server-side session.
    session_binding bytea not null,
    tenant_id uuid not null references tenant (id),
    user_id text not null,
    flow text not null check (flow in ('connect', 'reconnect', 'login_uri')),
    marketplace_id text not null,
    account_type text not null check (account_type in ('seller', 'vendor')),
    region text not null check (region in ('na', 'eu', 'fe')),
    redirect_uri text not null,
    reconnect_connection_id uuid references connection (id) on delete cascade,
    expected_selling_partner_id text,
    created_at timestamptz not null,
    expires_at timestamptz not null
);
create index oauth_state_expires on oauth_state (expires_at);

create table browser_session (
    id_hash bytea primary key,
    data jsonb not null,
    expires_at timestamptz not null
);
create index browser_session_expires on browser_session (expires_at);

create table audit_event (
    id bigserial primary key,
    at timestamptz not null,
    actor text not null,
    action text not null,
    tenant_id uuid references tenant (id),
    connection_id uuid references connection (id),
    detail jsonb not null default '{}'
);
create index audit_event_connection on audit_event (connection_id, at);

-- One sealed known value per key id, so start-up can tell whether the
-- configured keys open what is stored (fail closed if not).
create table encryption_key_check (
    key_id text primary key,
    check_sealed bytea not null,
    created_at timestamptz not null
);

-- The simulated Amazon (sandbox mode only).
create table sandbox_authorization_code (
    code_hash bytea primary key,
    selling_partner_id text not null,
    client_id text not null,
    redirect_uri text,
    expires_at timestamptz not null,
    used_at timestamptz
);

create table sandbox_grant (
    refresh_token_hash bytea primary key,
    selling_partner_id text not null,
    client_id text not null,
    created_at timestamptz not null,
    revoked_at timestamptz
);
create index sandbox_grant_seller on sandbox_grant (selling_partner_id);

create table sandbox_access_token (
    token_hash bytea primary key,
    selling_partner_id text,
    scope text,
    expires_at timestamptz not null
);
