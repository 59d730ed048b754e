-- Reminder delivery by several replicas: what a reminder is for (the caller's own, or a callback
-- of a caller refused at capacity), its retries, its outcome and attempt log, and the claim of the
-- replica delivering it; the claim itself (claim_due_reminders); and what the bridge keeps about
-- a caller (callers). Idempotent, like the files before it.

alter table public.reminders
    add column if not exists kind text not null default 'reminder'
        check (kind in ('reminder', 'callback')),
    -- A retry is not due before this (null: due at remind_at).
    add column if not exists next_attempt_at timestamptz,
    add column if not exists delivered_via text check (delivered_via in ('call', 'message')),
    add column if not exists failure_reason text,
    add column if not exists attempt_log jsonb not null default '[]'::jsonb
        check (jsonb_typeof(attempt_log) = 'array'),
    -- The replica holding the claim while status is 'calling', and until when.
    add column if not exists claimed_by text,
    add column if not exists claim_expires_at timestamptz;

-- The claim's query: pending reminders by when they are due, and claims by when they expire.
-- They replace 0001's reminders_due (remind_at only), which no query uses any more.
create index if not exists reminders_claimable
    on public.reminders ((coalesce(next_attempt_at, remind_at))) where status = 'pending';
create index if not exists reminders_claims
    on public.reminders (claim_expires_at) where status = 'calling';
drop index if exists public.reminders_due;

-- At most one callback waiting or under way per caller (a second insert gets 409).
create unique index if not exists reminders_one_open_callback
    on public.reminders (phone_number) where kind = 'callback' and status in ('pending', 'calling');

-- Claims up to p_limit due reminders for p_owner until now() + p_lease_seconds: pending ones whose
-- coalesce(next_attempt_at, remind_at) <= now(), and calling ones whose claim expired (a replica
-- died mid-delivery), soonest first. The rows are locked as they are chosen and rows another
-- transaction holds are skipped, so concurrent callers never claim one row twice; the database's
-- clock decides what is due and when a claim expires. A calling row without an expiry (written
-- before claims existed) counts as expired: nobody holds it.
create or replace function public.claim_due_reminders(
    p_owner text,
    p_lease_seconds integer,
    p_limit integer
)
returns setof public.reminders
language plpgsql
volatile
security invoker
set search_path = ''
as $$
begin
    if p_owner is null or p_owner = '' then
        raise exception 'p_owner is required' using errcode = '22004';
    end if;
    if p_lease_seconds is null or p_lease_seconds < 0 then
        raise exception 'p_lease_seconds must be 0 or more' using errcode = '22023';
    end if;
    if p_limit is null or p_limit < 0 then
        raise exception 'p_limit must be 0 or more' using errcode = '22023';
    end if;
    return query
    with due as (
        select r.id
        from public.reminders r
        where (r.status = 'pending' and coalesce(r.next_attempt_at, r.remind_at) <= now())
           or (r.status = 'calling' and (r.claim_expires_at is null or r.claim_expires_at <= now()))
        order by coalesce(r.next_attempt_at, r.remind_at), r.created_at, r.id
        limit p_limit
        for update skip locked
    ),
    claimed as (
        update public.reminders r
        set status = 'calling',
            claimed_by = p_owner,
            claim_expires_at = now() + make_interval(secs => p_lease_seconds)
        from due
        where r.id = due.id
        returning r.*
    )
    select * from claimed c
    order by coalesce(c.next_attempt_at, c.remind_at), c.created_at, c.id;
end;
$$;

revoke all on function public.claim_due_reminders(text, integer, integer)
    from public, anon, authenticated;
grant execute on function public.claim_due_reminders(text, integer, integer) to service_role;

-- What the bridge keeps about a caller besides their tasks and reminders.
create table if not exists public.callers (
    phone_number text primary key,
    -- An IANA zone name the caller stated; null: derived from the number.
    time_zone text,
    -- The caller's last inbound WhatsApp message (opens the 24-hour customer-service window).
    last_message_at timestamptz,
    updated_at timestamptz not null default now()
);

-- An update (the bridge's upserts merge into the row) never moves last_message_at back: webhooks
-- may arrive out of order and from several replicas. It also stamps updated_at.
create or replace function public.callers_keep_latest_message()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    new.last_message_at := greatest(old.last_message_at, new.last_message_at);
    new.updated_at := now();
    return new;
end;
$$;
revoke all on function public.callers_keep_latest_message() from public, anon, authenticated;

drop trigger if exists callers_keep_latest_message on public.callers;
create trigger callers_keep_latest_message
    before update on public.callers
    for each row execute function public.callers_keep_latest_message();

-- Row-level security as in 0002: anon and authenticated see nothing, the service role all.
alter table public.callers enable row level security;
revoke all on public.callers from anon, authenticated;
grant select, insert, update, delete on public.callers to service_role;
drop policy if exists service_role_all on public.callers;
create policy service_role_all on public.callers for all to service_role using (true) with check (true);
