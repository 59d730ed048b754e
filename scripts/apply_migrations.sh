#!/usr/bin/env bash
# Applies infra/supabase/migrations/*.sql in order to DATABASE_URL (default: a local test
# database). On a plain PostgreSQL it first creates Supabase's roles (anon, authenticated,
# service_role) so the same files work on both. --fresh drops and recreates the database first.
set -euo pipefail
cd "$(dirname "$0")/.."
url="${DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/whatsapp_bridge_test}"
fresh=0
[ "${1:-}" = "--fresh" ] && fresh=1
command -v psql >/dev/null 2>&1 || { echo "psql is required (Debian: postgresql-client)" >&2; exit 1; }
export PGOPTIONS="-c client_min_messages=warning"
database="${url##*/}"
database="${database%%\?*}"
admin_url="${url%/*}/postgres"
if [ "$fresh" -eq 1 ]; then
  psql "$admin_url" -v ON_ERROR_STOP=1 -q -c "drop database if exists \"$database\"" \
    -c "create database \"$database\""
fi
psql "$url" -v ON_ERROR_STOP=1 -q <<'SQL'
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'anon') then create role anon nologin; end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticated') then create role authenticated nologin; end if;
  if not exists (select 1 from pg_roles where rolname = 'service_role') then create role service_role nologin; end if;
end
$$;
SQL
for file in infra/supabase/migrations/*.sql; do
  psql "$url" -v ON_ERROR_STOP=1 -q -f "$file"
  echo "applied $file"
done
