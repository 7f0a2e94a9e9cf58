#!/bin/sh
# PostgreSQL alone, without gRPC or Node: pgbench runs the baseline's INSERT, the bare message insert, the
# send function before the feed event log and the whole send function on a fresh, migrated database.
# The threads have two participants, so every send also creates one notification intent and its job.
# Usage (PostgreSQL client tools on PATH):
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres sh bench/pg/run.sh
set -eu
cd "$(dirname "$0")/../.."
: "${DATABASE_URL:?set DATABASE_URL to a PostgreSQL server (a database is created and dropped on it)}"
db="comms_pgbench_$$"
url=$(node -e 'const u = new URL(process.argv[1]); u.pathname = "/" + process.argv[2]; console.log(u.toString())' "$DATABASE_URL" "$db")
psql "$DATABASE_URL" -qc "create database $db"
trap 'psql "$DATABASE_URL" -qc "drop database if exists $db with (force)"' EXIT
npm run --silent build
# Migrations, the job queue's schema and the default notification settings, as a service start makes them.
node -e 'Promise.all([import("./dist/src/infra/db/orm.js"), import("./dist/src/dispatch/queue.js"),
    import("./dist/src/domain/notification/notification.repository.js"), import("./dist/src/domain/notification/notification.policy.js")])
  .then(async ([db, queue, repo, policy]) => {
    const orm = await db.openDatabase(process.argv[1], 2, 60000);
    await new repo.NotificationRepository(orm.em.fork()).saveDefaultSettings(policy.DEFAULT_PLANS, "comms://");
    const log = { warn() {}, debug() {}, error() {}, info() {} };
    const jobs = await queue.JobQueue.start({ url: process.argv[1], work: false, concurrency: 1, pollMs: 1000,
      heartbeatSeconds: 30, superviseSeconds: 30, retryLimit: 10, poolMax: 2 }, undefined, log);
    await jobs.stop(1000);
    await orm.close();
  })' "$url"
psql "$url" -q <<'SQL'
create table baseline_message (tenant_id text, message_id uuid, thread_id uuid, sender text, key text, body text,
  sent_at timestamptz, primary key (tenant_id, message_id), unique (tenant_id, sender, key));
insert into thread (tenant_id, thread_id, subject, state, created_by, created_at, updated_at, last_activity_at)
  select 'pb', ('01900000-0000-7000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, 's', 'active', 'a', now(), now(), now()
    from generate_series(1, 256) g;
insert into thread_participant
  select 'pb', ('01900000-0000-7000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, u, 'provider', now(), 'a'
    from generate_series(1, 256) g, unnest(array['a', 'b']) u;
SQL
# The send function as it was before the feed event log (migration 20261129040000's text, renamed), and
# before notifications (migration 20261129060000's), to show what the log, its NOTIFY and the intent with
# its job cost a send.
node -e 'import("./dist/src/infra/db/migrations/Migration20261129040000_write_functions.js").then((m) =>
  process.stdout.write(m.SEND_MESSAGE_SQL.replace("function comms_send_message(", "function comms_send_message_before_feeds(")))' |
  psql "$url" -q
node -e 'import("./dist/src/infra/db/migrations/Migration20261129060000_feed.js").then((m) =>
  process.stdout.write(m.SEND_MESSAGE_WITH_EVENTS_SQL.replace("function comms_send_message(", "function comms_send_message_before_notifications(")))' |
  psql "$url" -q
for script in insert message-insert send-before-feeds send-before-notifications send; do
  tps=$(pgbench -n -c "${PGBENCH_CLIENTS:-16}" -j 2 -T "${PGBENCH_SECONDS:-10}" -f "bench/pg/$script.sql" "$url" 2>&1 |
    sed -n 's/^tps = \([0-9.]*\).*/\1/p')
  echo "$script: $tps transactions/s"
done
