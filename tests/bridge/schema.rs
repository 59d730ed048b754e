//! The Supabase schema, applied to the local PostgreSQL: tables, indexes, row-level security.

use std::process::Command;

fn psql(url: &str, sql: &str) -> String {
    let output = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
        .output()
        .expect("psql runs (install postgresql-client)");
    assert!(
        output.status.success(),
        "psql failed for {sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // `set role` prints SET before the result: keep the last line.
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn the_migrations_create_the_tables_indexes_and_row_level_security() {
    let database = format!("whatsapp_bridge_schema_{}", std::process::id());
    let url = format!("postgresql://postgres@127.0.0.1:5432/{database}");
    let applied = Command::new("bash")
        .args(["scripts/apply_migrations.sh", "--fresh"])
        .env("DATABASE_URL", &url)
        .output()
        .expect("the migration script runs");
    assert!(
        applied.status.success(),
        "migrations failed (is PostgreSQL running on 127.0.0.1:5432?): {}",
        String::from_utf8_lossy(&applied.stderr)
    );

    let tables = psql(
        &url,
        "select string_agg(table_name, ',' order by table_name) from information_schema.tables \
         where table_schema = 'public'",
    );
    assert_eq!(
        tables,
        "blocked_callers,callers,calls,reminders,tasks,transcript_turns"
    );
    let columns = |table: &str| {
        psql(
            &url,
            &format!(
                "select string_agg(column_name, ',' order by ordinal_position) \
                 from information_schema.columns where table_name = '{table}'"
            ),
        )
    };
    assert_eq!(
        columns("tasks"),
        "id,phone_number,title,notes,status,due_at,created_at,completed_at"
    );
    assert_eq!(
        columns("reminders"),
        "id,phone_number,text,remind_at,status,attempts,last_attempt_at,created_at,kind,\
         next_attempt_at,delivered_via,failure_reason,attempt_log,claimed_by,claim_expires_at"
    );
    assert_eq!(
        columns("calls"),
        "id,phone_number,direction,started_at,answered_at,ended_at,duration_seconds,end_reason,reminder_id"
    );
    assert_eq!(columns("transcript_turns"), "call_id,seq,role,text,at");
    assert_eq!(
        columns("callers"),
        "phone_number,time_zone,last_message_at,updated_at"
    );
    assert_eq!(columns("blocked_callers"), "phone_number,reason,blocked_at");

    let indexes = psql(
        &url,
        "select string_agg(indexname, ',' order by indexname) from pg_indexes \
         where schemaname = 'public'",
    );
    for index in [
        "tasks_by_phone",
        "reminders_by_phone",
        "reminders_claimable",
        "reminders_one_open_callback",
        "calls_by_phone",
        "calls_by_end",
        "transcript_turns_by_time",
    ] {
        assert!(indexes.contains(index), "{index} missing from {indexes}");
    }
    let due = psql(
        &url,
        "select indexdef from pg_indexes where indexname = 'reminders_claimable'",
    );
    assert!(due.contains("WHERE (status = 'pending'::text)"), "{due}");
    // The scheduler's claim: a function only the service role may run.
    let claim = psql(
        &url,
        "select has_function_privilege('anon', 'public.claim_due_reminders(text, integer, integer)', 'execute') \
         || ',' || has_function_privilege('service_role', 'public.claim_due_reminders(text, integer, integer)', 'execute')",
    );
    assert_eq!(claim, "false,true");
    // Retention and "forget me" (0005): functions only the service role may run.
    for function in [
        "public.purge_history_before(timestamptz, integer)",
        "public.forget_caller(text)",
    ] {
        let allowed = psql(
            &url,
            &format!(
                "select has_function_privilege('anon', '{function}', 'execute') \
                 || ',' || has_function_privilege('service_role', '{function}', 'execute')"
            ),
        );
        assert_eq!(allowed, "false,true", "{function}");
    }
    // Both delete, and count, what the store contract expects (the double mirrors them).
    psql(
        &url,
        "insert into calls (id, phone_number, direction, started_at, ended_at) values \
         ('wacid.OLD', '447700900123', 'inbound', now() - interval '100 days', now() - interval '100 days'), \
         ('wacid.NEW', '447700900456', 'inbound', now(), null); \
         insert into transcript_turns (call_id, seq, role, text, at) values \
         ('wacid.OLD', 0, 'user', 'old', now() - interval '100 days'), \
         ('wacid.NEW', 0, 'user', 'new', now())",
    );
    assert_eq!(
        psql(
            &url,
            "select purged_turns || ',' || purged_calls \
             from purge_history_before(now() - interval '90 days', 10)"
        ),
        "1,1"
    );
    assert_eq!(
        psql(
            &url,
            "select concat_ws(',', forgotten_tasks, forgotten_reminders, forgotten_turns, \
             forgotten_calls, forgotten_profiles) from forget_caller('447700900456')"
        ),
        "0,0,1,1,0"
    );

    let secured = psql(
        &url,
        "select string_agg(relname || '=' || relrowsecurity, ',' order by relname) from pg_class \
         where relname in ('tasks', 'reminders', 'calls', 'transcript_turns', 'callers', \
         'blocked_callers')",
    );
    assert_eq!(
        secured,
        "blocked_callers=true,callers=true,calls=true,reminders=true,tasks=true,transcript_turns=true"
    );

    // A row written by the owner is invisible to anon and visible to the service role.
    psql(
        &url,
        "insert into tasks (phone_number, title) values ('447700900123', 'Buy milk')",
    );
    let as_anon = Command::new("psql")
        .args([
            url.as_str(),
            "-At",
            "-c",
            "set role anon; select count(*) from tasks",
        ])
        .output()
        .expect("psql");
    let anon_text = String::from_utf8_lossy(&as_anon.stdout).into_owned()
        + &String::from_utf8_lossy(&as_anon.stderr);
    assert!(
        anon_text.contains("permission denied") || anon_text.trim().ends_with('0'),
        "anon read tasks: {anon_text}"
    );
    assert_eq!(
        psql(&url, "set role service_role; select count(*) from tasks"),
        "1"
    );

    let admin = "postgresql://postgres@127.0.0.1:5432/postgres";
    psql(admin, &format!("drop database if exists \"{database}\""));
}
