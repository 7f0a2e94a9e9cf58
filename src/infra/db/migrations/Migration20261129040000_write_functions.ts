import { Migration } from '@mikro-orm/migrations';

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
    this.addSql(`
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
      end $$`);
    this.addSql(`
      create function comms_mark(p_tenant text, p_user text, p_input jsonb, p_marks jsonb, p_now timestamptz)
        returns json
      language plpgsql as $$
      declare
        result json;
      begin
        -- Receipts keep the latest read_at ever reported; watermarks only move forward. Rows are written
        -- in key order, so concurrent marks cannot deadlock. Returns each input row's receipt after the
        -- call: changed_read_at when written now, else the snapshot's stored (later) read_at.
        with input as (
            select * from jsonb_to_recordset(p_input)
                   as i(message_id uuid, thread_id uuid, seq integer, read_at timestamptz)
          ), marks as (
            select * from jsonb_to_recordset(p_marks)
                   as k(thread_id uuid, seq integer, message_id uuid, sent_at timestamptz, complete_seq integer)
          ), upserted as (
            insert into read_receipt as r (tenant_id, message_id, user_id, thread_id, seq, read_at)
            select p_tenant, message_id, p_user, thread_id, seq, read_at from input order by message_id
            on conflict (tenant_id, message_id, user_id) do update set read_at = excluded.read_at
              where r.read_at < excluded.read_at
            returning r.message_id, r.read_at
          ), moved as (
            insert into read_watermark as w
                   (tenant_id, thread_id, user_id, seq, message_id, sent_at, complete_seq, updated_at)
            select p_tenant, thread_id, p_user, seq, message_id, sent_at, complete_seq, p_now
              from marks order by thread_id
            on conflict (tenant_id, thread_id, user_id) do update
              set seq = greatest(w.seq, excluded.seq),
                  message_id = case when excluded.seq > w.seq then excluded.message_id else w.message_id end,
                  sent_at = case when excluded.seq > w.seq then excluded.sent_at else w.sent_at end,
                  complete_seq = greatest(w.complete_seq, excluded.complete_seq),
                  updated_at = excluded.updated_at
              where w.seq < excluded.seq or w.complete_seq < excluded.complete_seq
          )
          select coalesce(json_agg(json_build_object(
                   'message_id', i.message_id, 'thread_id', i.thread_id,
                   'changed_read_at', u.read_at, 'stored_read_at', r.read_at)), '[]')
            into result
            from input i
            left join upserted u on u.message_id = i.message_id
            left join read_receipt r on r.tenant_id = p_tenant and r.message_id = i.message_id and r.user_id = p_user;
        return result;
      end $$`);
    this.addSql(`
      create function comms_mark_read(p_tenant text, p_user text, p_ids jsonb, p_read_at timestamptz,
                                      p_now timestamptz) returns json
      language plpgsql as $$
      declare
        found_rows json;
        complete boolean;
        receipts json := '[]';
        watermarks json := '[]';
      begin
        -- The messages asked for, with whether the reader takes part in their threads.
        select coalesce(json_agg(json_build_object(
                 'message_id', m.message_id, 'thread_id', m.thread_id, 'seq', m.seq, 'sent_at', m.sent_at,
                 'member', exists (select 1 from thread_participant p
                                    where p.tenant_id = m.tenant_id and p.thread_id = m.thread_id
                                      and p.user_id = p_user))), '[]')
          into found_rows
          from message m
         where m.tenant_id = p_tenant
           and m.message_id in (select value::uuid from jsonb_array_elements_text(p_ids));
        select count(*) = jsonb_array_length(p_ids)
          into complete
          from json_array_elements(found_rows) f
         where (f ->> 'member')::boolean;
        if complete then
          receipts := comms_mark(
            p_tenant, p_user,
            (select jsonb_agg(jsonb_build_object(
                      'message_id', f ->> 'message_id', 'thread_id', f ->> 'thread_id', 'seq', f ->> 'seq',
                      'read_at', greatest((f ->> 'sent_at')::timestamptz, p_read_at)))
               from json_array_elements(found_rows) f),
            (select jsonb_agg(k) from (
               select distinct on (f ->> 'thread_id') jsonb_build_object(
                        'thread_id', f ->> 'thread_id', 'seq', f ->> 'seq', 'message_id', f ->> 'message_id',
                        'sent_at', f ->> 'sent_at', 'complete_seq', 0) as k
                 from json_array_elements(found_rows) f
                order by f ->> 'thread_id', (f ->> 'seq')::integer desc) marks),
            p_now);
          -- Each touched thread's watermark after the call, with the reader's unread count.
          select coalesce(json_agg(json_build_object(
                   'thread_id', w.thread_id, 'seq', w.seq, 'message_id', w.message_id, 'sent_at', w.sent_at,
                   'unread', t.message_seq - w.seq
                     - (select count(*) from message m
                         where m.tenant_id = t.tenant_id and m.thread_id = t.thread_id
                           and m.sender_user_id = p_user and m.seq > w.seq))), '[]')
            into watermarks
            from read_watermark w
            join thread t on t.tenant_id = w.tenant_id and t.thread_id = w.thread_id
           where w.tenant_id = p_tenant and w.user_id = p_user
             and w.thread_id in (select distinct (f ->> 'thread_id')::uuid from json_array_elements(found_rows) f);
        end if;
        return json_build_object('found', found_rows, 'receipts', receipts, 'watermarks', watermarks);
      end $$`);
  }

  override down(): void {
    this.addSql('drop function comms_mark_read, comms_mark, comms_send_message');
    this.addSql('alter table read_receipt reset (fillfactor)');
  }
}
