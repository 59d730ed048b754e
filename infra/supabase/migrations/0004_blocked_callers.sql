-- The numbers the business neither answers nor calls (the admin API's /blocked): a blocked
-- caller's inbound calls are declined at admission (reason blocked) on every replica, and no
-- call or reminder goes out to them. Idempotent, like the files before it.

create table if not exists public.blocked_callers (
    phone_number text primary key,
    -- Why, as the operator put it.
    reason text,
    blocked_at timestamptz not null default now()
);

-- Row-level security as in 0002: anon and authenticated see nothing, the service role all.
alter table public.blocked_callers enable row level security;
revoke all on public.blocked_callers from anon, authenticated;
grant select, insert, update, delete on public.blocked_callers to service_role;
drop policy if exists service_role_all on public.blocked_callers;
create policy service_role_all on public.blocked_callers for all to service_role using (true) with check (true);
