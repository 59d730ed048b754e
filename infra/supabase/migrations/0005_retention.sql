-- Retention and "forget me" (issue 19): the bridge purges transcripts and call logs older than
-- TRANSCRIPT_RETENTION in bounded rounds, and deletes everything kept about a caller who asks
-- (the AI's forget_me tool, the admin API's DELETE /callers/{number}/data). Both are functions
-- so that each runs as one statement on the database, and only the service role may run them.

-- The purge finds call-log rows by when the call ended (or started, never completed);
-- transcript_turns_by_time (0001) finds old turns.
create index if not exists calls_by_end on public.calls ((coalesce(ended_at, started_at)));

-- Deletes up to p_limit turns said before p_cutoff, then up to p_limit call-log rows of calls
-- that ended (or started, never completed) before p_cutoff and have no turn left. Tasks,
-- reminders and profiles are the caller's own and are not touched. Replicas may run it at once:
-- a row is deleted once, and each counts what it deleted.
create or replace function public.purge_history_before(p_cutoff timestamptz, p_limit integer)
returns table (purged_turns integer, purged_calls integer)
language plpgsql
volatile
security invoker
set search_path = ''
as $$
begin
    if p_cutoff is null then
        raise exception 'p_cutoff is required' using errcode = '22004';
    end if;
    if p_limit is null or p_limit < 0 then
        raise exception 'p_limit must be 0 or more' using errcode = '22023';
    end if;
    delete from public.transcript_turns t
    where (t.call_id, t.seq) in (
        select o.call_id, o.seq from public.transcript_turns o
        where o.at < p_cutoff
        order by o.at
        limit p_limit
    );
    get diagnostics purged_turns = row_count;
    delete from public.calls c
    where c.id in (
        select o.id from public.calls o
        where coalesce(o.ended_at, o.started_at) < p_cutoff
          and not exists (select 1 from public.transcript_turns t where t.call_id = o.id)
        order by coalesce(o.ended_at, o.started_at)
        limit p_limit
    );
    get diagnostics purged_calls = row_count;
    return next;
end;
$$;

revoke all on function public.purge_history_before(timestamptz, integer)
    from public, anon, authenticated;
grant execute on function public.purge_history_before(timestamptz, integer) to service_role;

-- Deletes everything kept about one caller, in one transaction: their calls' transcript turns,
-- their call log, their reminders (callbacks included), their tasks and their profile; with
-- the number of rows of each.
create or replace function public.forget_caller(p_phone text)
returns table (
    forgotten_tasks integer,
    forgotten_reminders integer,
    forgotten_turns integer,
    forgotten_calls integer,
    forgotten_profiles integer
)
language plpgsql
volatile
security invoker
set search_path = ''
as $$
begin
    if p_phone is null or p_phone !~ '^[0-9]{6,15}$' then
        raise exception 'p_phone must be 6 to 15 digits' using errcode = '22023';
    end if;
    delete from public.transcript_turns t
    where t.call_id in (select c.id from public.calls c where c.phone_number = p_phone);
    get diagnostics forgotten_turns = row_count;
    delete from public.calls c where c.phone_number = p_phone;
    get diagnostics forgotten_calls = row_count;
    delete from public.reminders r where r.phone_number = p_phone;
    get diagnostics forgotten_reminders = row_count;
    delete from public.tasks t where t.phone_number = p_phone;
    get diagnostics forgotten_tasks = row_count;
    delete from public.callers p where p.phone_number = p_phone;
    get diagnostics forgotten_profiles = row_count;
    return next;
end;
$$;

revoke all on function public.forget_caller(text) from public, anon, authenticated;
grant execute on function public.forget_caller(text) to service_role;
