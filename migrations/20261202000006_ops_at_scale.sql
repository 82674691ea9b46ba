-- The ops dashboard at 100,000 connections (BENCHMARKS.md, lifecycle scenario).
-- Counts by status and health from the index alone, not the wide rows.
create index connection_health_parts on connection (status, last_error_code, authorization_expires_at);
-- One tenant's connections, newest status change first (the /ops keyset).
create index connection_tenant_status_changed on connection (tenant_id, status_changed_at desc, id desc);
-- A day of refreshes for the summary and the charts from the index alone.
drop index refresh_event_at;
create index refresh_event_at on refresh_event (at) include (outcome, latency_ms);
