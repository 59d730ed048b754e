-- The caller's data: tasks, reminders, the call log and transcripts.
-- Every per-caller query filters on phone_number (digits only, as WhatsApp sends it).

create extension if not exists pgcrypto;

create table if not exists public.tasks (
    id uuid primary key default gen_random_uuid(),
    phone_number text not null,
    title text not null,
    notes text,
    status text not null default 'open' check (status in ('open', 'done')),
    due_at timestamptz,
    created_at timestamptz not null default now(),
    completed_at timestamptz
);
create index if not exists tasks_by_phone on public.tasks (phone_number, status, created_at desc);

create table if not exists public.reminders (
    id uuid primary key default gen_random_uuid(),
    phone_number text not null,
    text text not null,
    remind_at timestamptz not null,
    status text not null default 'pending'
        check (status in ('pending', 'calling', 'delivered', 'failed', 'cancelled')),
    attempts integer not null default 0,
    last_attempt_at timestamptz,
    created_at timestamptz not null default now()
);
create index if not exists reminders_by_phone on public.reminders (phone_number, remind_at);
-- The scheduler's query: pending reminders that are due.
create index if not exists reminders_due on public.reminders (remind_at) where status = 'pending';

create table if not exists public.calls (
    id text primary key,
    phone_number text,
    direction text not null check (direction in ('inbound', 'outbound')),
    started_at timestamptz not null,
    answered_at timestamptz,
    ended_at timestamptz,
    duration_seconds integer,
    end_reason text,
    reminder_id uuid references public.reminders (id) on delete set null
);
create index if not exists calls_by_phone on public.calls (phone_number, started_at desc);

create table if not exists public.transcript_turns (
    call_id text not null references public.calls (id) on delete cascade,
    seq integer not null,
    role text not null check (role in ('user', 'assistant')),
    text text not null,
    at timestamptz not null default now(),
    primary key (call_id, seq)
);
create index if not exists transcript_turns_by_time on public.transcript_turns (at);
