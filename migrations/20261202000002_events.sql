-- Events and their webhook deliveries (CONTRACT §8): an outbox written in the
-- same transaction as the change it announces.

create table event (
    -- Order of the feed and of delivery, and the feed's cursor.
    seq bigserial primary key,
    -- `evt_…`: the Standard Webhooks `webhook-id`, the same on every attempt.
    id text not null unique,
    type text not null,
    -- Whose event it is (null: the app's own, seen only by platform keys).
    tenant_id uuid references tenant (id),
    connection_id uuid,
    -- The exact bytes delivered and listed: frozen when the event is written.
    body text not null,
    created_at timestamptz not null,
    delivery_state text not null default 'pending'
        check (delivery_state in ('pending', 'delivered', 'failed')),
    attempts integer not null default 0,
    next_attempt_at timestamptz not null,
    -- An instance delivering it holds this claim until then.
    claim_token uuid,
    claimed_until timestamptz,
    last_attempt_at timestamptz,
    last_status integer,
    last_error text,
    delivered_at timestamptz
);

create index event_tenant_seq on event (tenant_id, seq);
create index event_due on event (next_attempt_at) where delivery_state = 'pending';
-- "Is an earlier event of this connection still pending?" (in order per connection).
create index event_connection_pending on event (connection_id, seq) where delivery_state = 'pending';
