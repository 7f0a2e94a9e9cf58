import { Migration } from '@mikro-orm/migrations';
import { MARK_SQL, SEND_MESSAGE_SQL } from './Migration20261129040000_write_functions.js';

/**
 * The live-feed event log (issue 5). Every feed is a stream of events keyed by (tenant_id, stream):
 * `t:<thread_id>` (WatchThread), `u:<user_id>` (WatchInbox), `s:<session_id>` (WatchSession).
 *
 * Thread and session streams (`feed_event`), order without gaps: `feed_stream.head` is the stream's last
 * sequence number. An append increments it with an upsert, which takes the head row's lock until commit,
 * so the next append to that stream waits and gets the next number. Sequence order is therefore commit
 * order, and a reader that sees event n also sees every event before it: a transaction that commits late
 * cannot be skipped. Appends lock heads in stream-key order and as the last thing their transaction does,
 * so they cannot deadlock with each other or with the thread lock a send holds. A thread's sends already
 * serialise on the thread row, so its head costs them no concurrency.
 *
 * Inbox streams (`inbox_event`), a commit-visibility rule instead: one user takes part in many threads,
 * and a head per user would serialise every send to any of them. An inbox event is stamped with its
 * transaction id (`xid8`), and readers take only events whose xid is below the oldest transaction still
 * running (`pg_snapshot_xmin(pg_current_snapshot())`): every such transaction has ended, so nothing can
 * later appear below that line. Position = (xid, thread_id); order within an inbox does not matter
 * because an inbox event only says "this thread changed" (the feed shows the thread as it is when
 * delivered), but completeness does, and the line guarantees it.
 *
 * Events hold ids, never content; the feed reads the message or receipts when it delivers. A
 * thread_changed event keeps the thread's metadata after the change (`snapshot`: subject, state,
 * participants, escalation; never message bodies), so a replay shows each change as it was.
 * After committing, `pg_notify('comms_feed', '<tenant> <stream>')` wakes every replica's listener.
 * `comms_feed_prune` deletes events past the retention period and records per stream how far it
 * deleted (`feed_stream.pruned_through`, `inbox_pruned`): a resume token before that answers
 * RESYNC_REQUIRED.
 */
export class Migration20261129060000_feed extends Migration {
  override name = 'Migration20261129060000_feed';

  override up(): void {
    this.addSql(`
      create table feed_stream (
        tenant_id      text   not null,
        stream         text   not null check (stream ~ '^[tus]:' and char_length(stream) <= 200),
        head           bigint not null check (head >= 0),
        pruned_through bigint not null default 0,
        primary key (tenant_id, stream),
        constraint feed_stream_pruned_within_head check (pruned_through between 0 and head)
      ) with (fillfactor = 70)`);
    this.addSql(`
      create table feed_event (
        tenant_id    text        not null,
        stream       text        not null,
        seq          bigint      not null check (seq >= 1),
        -- Inbox events (thread_updated, thread_removed) go to inbox_event, never here.
        kind         text        not null check (kind in ('message_posted', 'receipts_updated', 'thread_changed',
                                                          'session_changed', 'participant_changed')),
        aggregate_id uuid        not null,
        message_id   uuid,
        user_id      text,
        message_ids  uuid[],
        snapshot     jsonb,
        occurred_at  timestamptz not null,
        primary key (tenant_id, stream, seq),
        foreign key (tenant_id, stream) references feed_stream (tenant_id, stream)
      )`);
    this.addSql(`
      create table inbox_event (
        tenant_id   text        not null,
        user_id     text        not null,
        xid         xid8        not null default pg_current_xact_id(),
        thread_id   uuid        not null,
        occurred_at timestamptz not null,
        primary key (tenant_id, user_id, xid, thread_id)
      )`);
    this.addSql('create index inbox_event_by_time on inbox_event using brin (occurred_at)');
    // The last position (xid, thread_id) of an inbox that pruning deleted.
    this.addSql(`
      create table inbox_pruned (
        tenant_id text not null,
        user_id   text not null,
        xid       xid8 not null,
        thread_id uuid not null,
        primary key (tenant_id, user_id)
      )`);
    // Pruning finds old events by time; rows arrive in time order, so a BRIN index costs almost nothing.
    this.addSql('create index feed_event_by_time on feed_event using brin (occurred_at)');
    this.addSql(`
      create function comms_refuse_feed_event_update() returns trigger language plpgsql as $$
      begin
        raise exception 'feed events are append-only' using errcode = 'insufficient_privilege';
      end $$`);
    this.addSql(`
      create trigger feed_event_append_only before update on feed_event
        for each row execute function comms_refuse_feed_event_update()`);

    // p_events: [{stream, kind, aggregate_id, message_id?, user_id?, message_ids?, snapshot?}, ...]; several events
    // may go to one stream, in array order.
    this.addSql(`
      create function comms_feed_append(p_tenant text, p_events jsonb, p_at timestamptz) returns void
      language plpgsql as $$
      begin
        with input as (
          select e.*, o.n
            from jsonb_array_elements(p_events) with ordinality as o(value, n),
                 jsonb_to_record(o.value) as e(stream text, kind text, aggregate_id uuid, message_id uuid,
                                               user_id text, message_ids uuid[], snapshot jsonb)
        ), heads as (
          insert into feed_stream as f (tenant_id, stream, head)
          select p_tenant, i.stream, count(*) from input i where i.stream !~ '^u:'
           group by i.stream order by i.stream
          on conflict on constraint feed_stream_pkey do update set head = f.head + excluded.head
          returning f.stream, f.head
        ), inbox as (
          -- One row per (inbox, thread) and transaction: the inbox shows the thread as it is anyway.
          insert into inbox_event (tenant_id, user_id, thread_id, occurred_at)
          select distinct p_tenant, substr(i.stream, 3), i.aggregate_id, p_at from input i where i.stream ~ '^u:'
          on conflict do nothing
        )
        insert into feed_event (tenant_id, stream, seq, kind, aggregate_id, message_id, user_id, message_ids,
                                snapshot, occurred_at)
        select p_tenant, i.stream,
               h.head - count(*) over (partition by i.stream)
                      + row_number() over (partition by i.stream order by i.n),
               i.kind, i.aggregate_id, i.message_id, i.user_id, i.message_ids, i.snapshot, p_at
          from input i join heads h on h.stream = i.stream;
        perform pg_notify('comms_feed', p_tenant || ' ' || s.stream)
           from (select distinct e->>'stream' as stream from jsonb_array_elements(p_events) e) s;
      end $$`);

    // The inbox events of a change to a thread: one per participant. PL/pgSQL, not SQL, so its plan is
    // cached per connection (a SQL function with a FROM clause is planned on every call).
    this.addSql(`
      create function comms_thread_inbox_events(p_tenant text, p_thread uuid) returns jsonb
      language plpgsql stable as $$
      begin
        return (select coalesce(jsonb_agg(jsonb_build_object('stream', 'u:' || p.user_id, 'kind', 'thread_updated',
                                                             'aggregate_id', p_thread)), '[]')
                  from thread_participant p
                 where p.tenant_id = p_tenant and p.thread_id = p_thread);
      end $$`);

    this.addSql(`
      create function comms_feed_prune(p_before timestamptz, p_limit integer, p_tenant text default null)
        returns integer
      language plpgsql as $$
      declare
        n integer;
      begin
        with gone as (
          delete from feed_event e
           where e.ctid in (select x.ctid from feed_event x
                             where x.occurred_at < p_before and (p_tenant is null or x.tenant_id = p_tenant)
                             limit p_limit)
          returning e.tenant_id, e.stream, e.seq
        ), marks as (
          select g.tenant_id, g.stream, max(g.seq) as seq from gone g group by g.tenant_id, g.stream
        ), moved as (
          update feed_stream f set pruned_through = greatest(f.pruned_through, m.seq)
            from marks m where f.tenant_id = m.tenant_id and f.stream = m.stream
          returning 1
        )
        select count(*) into n from gone;
        with gone as (
          delete from inbox_event e
           where e.ctid in (select x.ctid from inbox_event x
                             where x.occurred_at < p_before and (p_tenant is null or x.tenant_id = p_tenant)
                             limit p_limit)
          returning e.tenant_id, e.user_id, e.xid, e.thread_id
        ), marks as (
          select distinct on (g.tenant_id, g.user_id) g.tenant_id, g.user_id, g.xid, g.thread_id
            from gone g order by g.tenant_id, g.user_id, g.xid desc, g.thread_id desc
        ), moved as (
          insert into inbox_pruned as p (tenant_id, user_id, xid, thread_id) select * from marks
          on conflict on constraint inbox_pruned_pkey do update set xid = excluded.xid, thread_id = excluded.thread_id
            where (excluded.xid, excluded.thread_id) > (p.xid, p.thread_id)
          returning 1
        )
        select n + count(*) into n from gone;
        return n;
      end $$`);

    this.addSql(SEND_MESSAGE_WITH_EVENTS_SQL);
    this.addSql(MARK_WITH_EVENTS_SQL);
  }

  override down(): void {
    this.addSql('drop function comms_send_message, comms_mark');
    this.addSql(SEND_MESSAGE_SQL);
    this.addSql(MARK_SQL);
    this.addSql('drop function comms_feed_prune, comms_thread_inbox_events, comms_feed_append');
    this.addSql('drop table inbox_pruned');
    this.addSql('drop table inbox_event');
    this.addSql('drop table feed_event');
    this.addSql('drop function comms_refuse_feed_event_update');
    this.addSql('drop table feed_stream');
  }
}

/**
 * comms_send_message of migration 20261129040000 (its text, so the difference is exactly this), plus,
 * after the thread moves on: message_posted on the thread's feed and thread_updated on every
 * participant's inbox.
 */
export const SEND_MESSAGE_WITH_EVENTS_SQL = withText(
  SEND_MESSAGE_SQL.replace('create function comms_send_message(', 'create or replace function comms_send_message('),
  `         where tenant_id = p_tenant and thread_id = p_thread;
`,
  `        perform comms_feed_append(
          p_tenant,
          comms_thread_inbox_events(p_tenant, p_thread)
            || jsonb_build_object('stream', 't:' || p_thread, 'kind', 'message_posted', 'aggregate_id', p_thread,
                                  'message_id', m.message_id, 'user_id', p_user),
          m.sent_at);
`,
);

/** `sql` with `addition` inserted after `anchor`, which must occur exactly once. */
export function withText(sql: string, anchor: string, addition: string): string {
  const at = sql.indexOf(anchor);
  if (at < 0 || sql.indexOf(anchor, at + 1) >= 0) throw new Error('migration anchor must occur exactly once');
  return sql.slice(0, at + anchor.length) + addition + sql.slice(at + anchor.length);
}

/**
 * comms_mark of migration 20261129040000, plus, for each thread where a receipt changed or the
 * watermark moved: receipts_updated on the thread's feed (the changed message ids, at most the latest
 * 1000) and thread_updated on the reader's inbox (its unread count changed).
 */
const MARK_WITH_EVENTS_SQL = `
      create or replace function comms_mark(
        p_tenant text, p_user text,
        p_ids uuid[], p_threads uuid[], p_seqs integer[], p_read_ats timestamptz[],
        p_mark_threads uuid[], p_mark_seqs integer[], p_mark_ids uuid[], p_mark_sent timestamptz[],
        p_mark_complete integer[], p_now timestamptz)
        returns table (message_id uuid, thread_id uuid, changed_read_at timestamptz, stored_read_at timestamptz)
      language plpgsql as $$
      #variable_conflict use_column
      declare
        r_ids uuid[];
        r_threads uuid[];
        r_seqs integer[];
        r_changed timestamptz[];
        r_stored timestamptz[];
        v_moved uuid[];
        v_events jsonb;
      begin
        -- Receipts keep the latest read_at ever reported; watermarks only move forward. Rows are written
        -- in key order, so concurrent marks cannot deadlock. Returns each input row's receipt after the
        -- call: changed_read_at when written now, else the snapshot's stored (later) read_at.
        with input as (
          select * from unnest(p_ids, p_threads, p_seqs, p_read_ats) as i(message_id, thread_id, seq, read_at)
        ), upserted as (
          insert into read_receipt as r (tenant_id, message_id, user_id, thread_id, seq, read_at)
          select p_tenant, i.message_id, p_user, i.thread_id, i.seq, i.read_at from input i order by i.message_id
          on conflict on constraint read_receipt_pkey do update set read_at = excluded.read_at
            where r.read_at < excluded.read_at
          returning r.message_id, r.read_at
        ), moved as (
          insert into read_watermark as w
                 (tenant_id, thread_id, user_id, seq, message_id, sent_at, complete_seq, updated_at)
          select p_tenant, k.thread_id, p_user, k.seq, k.message_id, k.sent_at, k.complete_seq, p_now
            from unnest(p_mark_threads, p_mark_seqs, p_mark_ids, p_mark_sent, p_mark_complete)
                 as k(thread_id, seq, message_id, sent_at, complete_seq)
           order by k.thread_id
          on conflict on constraint read_watermark_pkey do update
            set seq = greatest(w.seq, excluded.seq),
                message_id = case when excluded.seq > w.seq then excluded.message_id else w.message_id end,
                sent_at = case when excluded.seq > w.seq then excluded.sent_at else w.sent_at end,
                complete_seq = greatest(w.complete_seq, excluded.complete_seq),
                updated_at = excluded.updated_at
            where w.seq < excluded.seq or w.complete_seq < excluded.complete_seq
          returning w.thread_id
        )
        select array_agg(i.message_id), array_agg(i.thread_id), array_agg(i.seq), array_agg(u.read_at),
               array_agg(r.read_at), (select array_agg(mv.thread_id) from moved mv)
          into r_ids, r_threads, r_seqs, r_changed, r_stored, v_moved
          from input i
          left join upserted u on u.message_id = i.message_id
          left join read_receipt r on r.tenant_id = p_tenant and r.message_id = i.message_id and r.user_id = p_user;

        with changed as (
          select x.i, x.t, x.s from unnest(r_ids, r_threads, r_seqs, r_changed) as x(i, t, s, c) where x.c is not null
        ), touched as (
          select c.t from changed c union select mv.t from unnest(v_moved) as mv(t)
        )
        select jsonb_agg(ev.e) into v_events
          from touched th
          cross join lateral (values
            (jsonb_build_object('stream', 't:' || th.t, 'kind', 'receipts_updated', 'aggregate_id', th.t,
                                'user_id', p_user,
                                'message_ids', coalesce((select (array_agg(c.i order by c.s desc))[1:1000]
                                                           from changed c where c.t = th.t), '{}'))),
            (jsonb_build_object('stream', 'u:' || p_user, 'kind', 'thread_updated', 'aggregate_id', th.t))
          ) as ev(e);
        if v_events is not null then
          perform comms_feed_append(p_tenant, v_events, p_now);
        end if;
        return query select * from unnest(r_ids, r_threads, r_changed, r_stored);
      end $$`;
