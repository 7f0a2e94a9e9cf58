import { Migration } from '@mikro-orm/migrations';

/**
 * Support for sends and marks in one statement each (round trips are what a write costs here):
 * - `comms_uuid_next(uuid)`: the UUID right after another (the low 64 bits plus one), so a send can
 *   give its message an id greater than the thread's last one inside the statement that locks the
 *   thread (RFC 9562 §6.2 method 2: the random bits count up within a millisecond).
 * - The guard triggers get WHEN clauses: the condition is checked in the executor and the PL/pgSQL
 *   function runs only to refuse, instead of once per updated row.
 */
export class Migration20261129030000_one_statement_writes extends Migration {
  override name = 'Migration20261129030000_one_statement_writes';

  override up(): void {
    this.addSql(`
      create function comms_uuid_next(u uuid) returns uuid
        language sql immutable strict parallel safe as $$
        select encode(substring(b from 1 for 8)
                      || int8send((('x' || encode(substring(b from 9 for 8), 'hex'))::bit(64)::bigint) + 1), 'hex')::uuid
          from (select uuid_send(u) as b) s
      $$`);
    this.addSql(`
      create or replace function comms_refuse_receipt_change() returns trigger language plpgsql as $$
      begin
        raise exception 'read receipts only move later' using errcode = 'check_violation';
      end $$`);
    this.addSql('drop trigger read_receipt_lww on read_receipt');
    this.addSql('drop function comms_receipt_lww');
    this.addSql(`
      create trigger read_receipt_lww before update on read_receipt for each row
        when (new.read_at < old.read_at
              or (new.tenant_id, new.message_id, new.user_id, new.thread_id, new.seq)
                 is distinct from (old.tenant_id, old.message_id, old.user_id, old.thread_id, old.seq))
        execute function comms_refuse_receipt_change()`);
    this.addSql(`
      create or replace function comms_watermark_forward() returns trigger language plpgsql as $$
      begin
        raise exception 'read watermarks never move backwards' using errcode = 'check_violation';
      end $$`);
    this.addSql('drop trigger read_watermark_forward on read_watermark');
    this.addSql(`
      create trigger read_watermark_forward before update on read_watermark for each row
        when (new.seq < old.seq or new.complete_seq < old.complete_seq)
        execute function comms_watermark_forward()`);
  }

  override down(): void {
    this.addSql('drop function comms_uuid_next');
    this.addSql('drop trigger read_receipt_lww on read_receipt');
    this.addSql('drop function comms_refuse_receipt_change');
    this.addSql(`
      create function comms_receipt_lww() returns trigger language plpgsql as $$
      begin
        if new.read_at < old.read_at or (new.tenant_id, new.message_id, new.user_id, new.thread_id, new.seq)
             is distinct from (old.tenant_id, old.message_id, old.user_id, old.thread_id, old.seq) then
          raise exception 'read receipts only move later' using errcode = 'check_violation';
        end if;
        return new;
      end $$`);
    this.addSql(
      'create trigger read_receipt_lww before update on read_receipt for each row execute function comms_receipt_lww()',
    );
    this.addSql('drop trigger read_watermark_forward on read_watermark');
    this.addSql(`
      create or replace function comms_watermark_forward() returns trigger language plpgsql as $$
      begin
        if new.seq < old.seq or new.complete_seq < old.complete_seq then
          raise exception 'read watermarks never move backwards' using errcode = 'check_violation';
        end if;
        return new;
      end $$`);
    this.addSql(
      'create trigger read_watermark_forward before update on read_watermark for each row execute function comms_watermark_forward()',
    );
  }
}
