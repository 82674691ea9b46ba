-- Fenced refresh writes, one Amazon per database, the app-wide invalid_client
-- hold shared by every instance, the invalid_grant fuse, and the health rule
-- written once.

alter table connection
    -- Bumped by every connect and reconnect: a refresh started before one can
    -- write nothing (SECURITY.md, Reliability).
    add column grant_version bigint not null default 1,
    -- Bumped with every access token stored: "is this still the token I was
    -- told is rejected?" is a comparison of integers, not of timestamps.
    add column token_generation bigint not null default 1,
    -- A random value per lease claim: only the claimer's writes land.
    add column refresh_lease_token uuid,
    -- authorized_at + 365 days, stored when the authorization is.
    add column authorization_expires_at timestamptz,
    -- Which Amazon the refresh token belongs to (CONTRACT §1). Rows from before
    -- this migration are stamped by the first start that opens them.
    add column authorized_mode text check (authorized_mode in ('sandbox', 'live')),
    add column authorized_client_id text;

update connection set authorization_expires_at = authorized_at + interval '365 days'
where authorized_at is not null;

-- The lease owner was the instance id: two tasks of one instance could both
-- hold it. The claim token replaces it.
update connection set refresh_lease_until = null;
alter table connection drop column refresh_lease_owner;

-- The health rule (CONTRACT §5), in one place. `at` is passed in (the app's
-- clock), so the function is immutable and the planner inlines it.
create function connection_health(
    status text,
    last_error_code text,
    authorization_expires_at timestamptz,
    at timestamptz
) returns text
language sql immutable parallel safe
as $$
    select case
        when status = 'needs_reauth' then 'failing'
        when status <> 'active' then 'ok'
        when last_error_code in ('amazon_unavailable', 'verification_failed') then 'degraded'
        when authorization_expires_at - at <= interval '30 days' then 'expiring'
        else 'ok'
    end
$$;

-- App-wide state shared by every instance: one row.
create table app_state (
    id smallint primary key check (id = 1),
    -- The invalid_client hold: every configured client secret was rejected.
    credentials_rejected_since timestamptz,
    credentials_hold_until timestamptz,
    credentials_hold_seconds integer,
    -- While set and in the future, one instance is probing Amazon.
    credentials_probe_until timestamptz,
    credentials_last_ok_at timestamptz,
    credentials_last_rejected_at timestamptz,
    -- The invalid_grant fuse (CONTRACT §10).
    fuse_tripped_at timestamptz,
    fuse_cleared_at timestamptz,
    fuse_cleared_by text
);
insert into app_state (id) values (1);

create index refresh_event_connection on refresh_event (connection_id, at);
