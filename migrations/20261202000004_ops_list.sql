-- The ops dashboard's connection list: newest status change first, paged by
-- keyset on (status_changed_at, id), so a page deep in 100,000 connections
-- costs what the first does.
create index connection_status_changed on connection (status_changed_at desc, id desc);
create index connection_selling_partner on connection (selling_partner_id);
