import { Migration } from '@mikro-orm/migrations';

/** `comms_send_message` as this migration creates it; a later migration that replaces it restores this. */
export const SEND_MESSAGE_SQL = `
      create function comms_send_message(
        p_tenant text, p_thread uuid, p_user text, p_key text, p_body text, p_sha bytea,
        p_client_sent_at timestamptz, p_candidate uuid, p_now timestamptz) returns json
      language plpgsql as $$
      declare
        t record;
        m message;
      begin
        -- A retry: answer with the stored message, whatever has happened to the thread since.
        select * into m from message
         where tenant_id = p_tenant and sender_user_id = p_user and client_mutation_id = p_key;
        if found then
          return json_build_object('earlier', row_to_json(m));
        end if;
        select th.state, th.message_seq, th.last_message_id, th.last_message_at,
               exists (select 1 from thread_participant p
                        where p.tenant_id = th.tenant_id and p.thread_id = th.thread_id and p.user_id = p_user) as member
          into t
          from thread th
         where th.tenant_id = p_tenant and th.thread_id = p_thread
           for update;
        if not found then
          return json_build_object();
        end if;
        if not t.member or t.state <> 'active' then
          return json_build_object('thread', json_build_object('state', t.state, 'member', t.member));
        end if;
        -- Under the thread lock the next seq, a non-decreasing sent_at and an id above the last one.
        insert into message (tenant_id, message_id, thread_id, seq, sender_user_id, client_mutation_id, body,
                             body_sha256, client_sent_at, sent_at)
        values (p_tenant,
                case when t.last_message_id is null or p_candidate > t.last_message_id then p_candidate
                     else comms_uuid_next(t.last_message_id) end,
                p_thread, t.message_seq + 1, p_user, p_key, p_body, p_sha, p_client_sent_at,
                greatest(p_now, t.last_message_at))
        on conflict (tenant_id, sender_user_id, client_mutation_id) do nothing
        returning * into m;
        if not found then
          -- A concurrent send with the same key committed while this one waited.
          select * into m from message
           where tenant_id = p_tenant and sender_user_id = p_user and client_mutation_id = p_key;
          return json_build_object('earlier', row_to_json(m));
        end if;
        update thread
           set message_seq = m.seq, last_message_id = m.message_id, last_message_at = m.sent_at,
               last_activity_at = greatest(last_activity_at, m.sent_at)
         where tenant_id = p_tenant and thread_id = p_thread;
        return json_build_object('inserted', row_to_json(m),
                                 'thread', json_build_object('state', t.state, 'member', t.member));
      end $$`;

/** `comms_mark` as this migration creates it. */
export const MARK_SQL = `
      create function comms_mark(
        p_tenant text, p_user text,
        p_ids uuid[], p_threads uuid[], p_seqs integer[], p_read_ats timestamptz[],
        p_mark_threads uuid[], p_mark_seqs integer[], p_mark_ids uuid[], p_mark_sent timestamptz[],
        p_mark_complete integer[], p_now timestamptz)
        returns table (message_id uuid, thread_id uuid, changed_read_at timestamptz, stored_read_at timestamptz)
      language plpgsql as $$
      #variable_conflict use_column
      begin
        -- Receipts keep the latest read_at ever reported; watermarks only move forward. Rows are written
        -- in key order, so concurrent marks cannot deadlock. Returns each input row's receipt after the
        -- call: changed_read_at when written now, else the snapshot's stored (later) read_at.
        return query
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
        )
        select i.message_id, i.thread_id, u.read_at, r.read_at
          from input i
          left join upserted u on u.message_id = i.message_id
          left join read_receipt r on r.tenant_id = p_tenant and r.message_id = i.message_id and r.user_id = p_user;
      end $$`;

/**
 * The two hot writes as PL/pgSQL functions. MikroORM sends every statement unprepared, so a large
 * statement is parsed and planned on each call, which cost more than the writes themselves; inside a
 * function PostgreSQL caches the plans per connection. The functions are the aggregates' append
 * primitives: they decide nothing the TypeScript policies do not also check, they only make sure the
 * invariants hold in the database (participants only, active threads only, one message per key, order
 * equals commit order, last-write-wins receipts, forward-only watermarks).
 */
export class Migration20261129040000_write_functions extends Migration {
  override name = 'Migration20261129040000_write_functions';

  override up(): void {
    // Receipts are rewritten in place on every later mark: leave room on each page for HOT updates.
    this.addSql('alter table read_receipt set (fillfactor = 80)');
    this.addSql(SEND_MESSAGE_SQL);
    this.addSql(MARK_SQL);
    this.addSql(`
      create function comms_mark_read(p_tenant text, p_user text, p_ids uuid[], p_read_at timestamptz,
                                      p_now timestamptz) returns json
      language plpgsql as $$
      declare
        v_ids uuid[];
        v_threads uuid[];
        v_seqs integer[];
        v_sent timestamptz[];
        v_read_ats timestamptz[];
        v_member boolean[];
        k_threads uuid[];
        k_seqs integer[];
        k_ids uuid[];
        k_sent timestamptz[];
        receipts json;
        watermarks json;
      begin
        -- The messages asked for (p_ids holds no duplicates), with whether the reader takes part.
        select array_agg(m.message_id), array_agg(m.thread_id), array_agg(m.seq), array_agg(m.sent_at),
               array_agg(greatest(m.sent_at, p_read_at)),
               array_agg(exists (select 1 from thread_participant p
                                  where p.tenant_id = m.tenant_id and p.thread_id = m.thread_id
                                    and p.user_id = p_user))
          into v_ids, v_threads, v_seqs, v_sent, v_read_ats, v_member
          from unnest(p_ids) as r(id)
          join message m on m.tenant_id = p_tenant and m.message_id = r.id;
        if coalesce(array_length(v_ids, 1), 0) < array_length(p_ids, 1) or false = any(v_member) then
          -- Refused as a whole: say what was found, write nothing.
          return json_build_object('found', (
            select coalesce(json_agg(json_build_object('message_id', x.i, 'thread_id', x.t, 'member', x.m)), '[]')
              from unnest(v_ids, v_threads, v_member) as x(i, t, m)));
        end if;
        -- Each thread's watermark moves to the furthest message marked in it.
        select array_agg(k.t), array_agg(k.s), array_agg(k.i), array_agg(k.a)
          into k_threads, k_seqs, k_ids, k_sent
          from (select distinct on (x.t) x.t, x.s, x.i, x.a
                  from unnest(v_threads, v_seqs, v_ids, v_sent) as x(t, s, i, a)
                 order by x.t, x.s desc) k;
        select json_agg(c) into receipts
          from comms_mark(p_tenant, p_user, v_ids, v_threads, v_seqs, v_read_ats,
                          k_threads, k_seqs, k_ids, k_sent, array_fill(0, array[array_length(k_threads, 1)]),
                          p_now) c;
        -- The watermarks after the call (this function sees its own writes), with unread counts.
        select coalesce(json_agg(json_build_object(
                 'thread_id', w.thread_id, 'seq', w.seq, 'message_id', w.message_id, 'sent_at', w.sent_at,
                 'unread', t.message_seq - w.seq
                   - (select count(*) from message m
                       where m.tenant_id = t.tenant_id and m.thread_id = t.thread_id
                         and m.sender_user_id = p_user and m.seq > w.seq))), '[]')
          into watermarks
          from unnest(k_threads) as k(thread_id)
          join read_watermark w on w.tenant_id = p_tenant and w.thread_id = k.thread_id and w.user_id = p_user
          join thread t on t.tenant_id = w.tenant_id and t.thread_id = w.thread_id;
        return json_build_object('found', '[]'::json, 'receipts', receipts, 'watermarks', watermarks);
      end $$`);
  }

  override down(): void {
    this.addSql('drop function comms_mark_read, comms_mark, comms_send_message');
    this.addSql('alter table read_receipt reset (fillfactor)');
  }
}
