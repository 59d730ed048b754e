-- Row-level security: the public (anon) and signed-in (authenticated) roles see nothing; the
-- bridge uses the service role, which gets explicit full access (on Supabase it also bypasses RLS).

alter table public.tasks enable row level security;
alter table public.reminders enable row level security;
alter table public.calls enable row level security;
alter table public.transcript_turns enable row level security;

revoke all on public.tasks, public.reminders, public.calls, public.transcript_turns
    from anon, authenticated;
grant select, insert, update, delete on public.tasks, public.reminders, public.calls,
    public.transcript_turns to service_role;

drop policy if exists service_role_all on public.tasks;
create policy service_role_all on public.tasks for all to service_role using (true) with check (true);
drop policy if exists service_role_all on public.reminders;
create policy service_role_all on public.reminders for all to service_role using (true) with check (true);
drop policy if exists service_role_all on public.calls;
create policy service_role_all on public.calls for all to service_role using (true) with check (true);
drop policy if exists service_role_all on public.transcript_turns;
create policy service_role_all on public.transcript_turns for all to service_role using (true) with check (true);
-- No policy names anon or authenticated: with RLS on, they read and write nothing.
