-- The health sweep (CONTRACT §5): which connections a pass has claimed, the
-- expiry notices sent for the current authorization, and the pacer that keeps
-- every instance's sweep refreshes together under SP_BROKER_SWEEP_RATE.

alter table connection
    -- Claimed by a sweep pass until then: another instance's pass skips it.
    add column sweep_claimed_until timestamptz,
    -- connection.expiring sent for this authorization: 0 none, 1 the 30-day
    -- notice, 2 the 7-day one too. A new authorization starts again at 0.
    add column expiry_notices smallint not null default 0;

create index connection_sweep_due on connection (coalesce(last_refresh_at, authorized_at))
    where status = 'active';
create index connection_expiry_due on connection (authorization_expires_at)
    where status = 'active' and expiry_notices < 2;

-- One row: when the next sweep refresh, of any instance, may start (by
-- PostgreSQL's clock). Taking a slot moves it on by 1/rate.
create table sweep_pacer (
    id integer primary key check (id = 1),
    next_at timestamptz not null
);
insert into sweep_pacer (id, next_at) values (1, now());
