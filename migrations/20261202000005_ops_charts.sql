-- The consent funnel of the ops dashboard: one row per consent attempt
-- (keyed like its oauth_state, which is deleted when used), kept 2 days.
create table consent_attempt (
    state_hash bytea primary key,
    tenant_id uuid not null references tenant (id) on delete cascade,
    region text not null check (region in ('na', 'eu', 'fe')),
    started_at timestamptz not null,
    returned_at timestamptz,
    outcome text check (outcome in ('connected', 'failed'))
);
create index consent_attempt_started on consent_attempt (started_at);

-- The dashboard's audit log, newest first, by tenant.
create index audit_event_tenant on audit_event (tenant_id, id);
