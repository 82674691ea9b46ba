-- The app's LWA client secrets (CONTRACT §7). One row per secret value sp-broker
-- knows: those from the environment (the value stays in the environment; the
-- row holds what was learnt about it) and those from Amazon's notifications
-- (the value sealed here, bound to its row). `fingerprint` (SHA-256 of the
-- value) finds the row again; it never leaves the database.
create table app_secret (
    id uuid primary key,
    fingerprint bytea not null unique,
    source text not null check (source in ('environment', 'environment_previous', 'notification')),
    secret_sealed bytea,
    created_at timestamptz not null,
    expires_at timestamptz,
    expiry_reason text,
    last_worked_at timestamptz,
    last_rejected_at timestamptz,
    warned_30_days_at timestamptz,
    warned_7_days_at timestamptz,
    check ((source = 'notification') = (secret_sealed is not null))
);

-- Notifications already taken (the same notificationId again changes nothing).
create table app_notification (
    notification_id text primary key,
    notification_type text not null,
    received_at timestamptz not null
);

-- The sandbox Amazon's view of the app's secrets: which it accepts until
-- when, and how often each was presented (so tests see which one was sent).
create table sandbox_client_secret (
    secret_hash bytea primary key,
    created_at timestamptz not null,
    expires_at timestamptz,
    accepted bigint not null default 0,
    refused bigint not null default 0
);
