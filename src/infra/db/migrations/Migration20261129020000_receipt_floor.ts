import { Migration } from '@mikro-orm/migrations';

/**
 * `read_watermark.complete_seq`: every message by others up to this seq has a receipt of the reader.
 * MarkThreadRead writes receipts from there on (not merely after the watermark, which a MarkRead of a
 * later message may have moved past unread ones), so it never rescans a thread it already covered.
 * Like the watermark itself, it only moves forward.
 */
export class Migration20261129020000_receipt_floor extends Migration {
  override name = 'Migration20261129020000_receipt_floor';

  override up(): void {
    this.addSql(
      'alter table read_watermark add column complete_seq integer not null default 0 check (complete_seq >= 0)',
    );
    this.addSql(`
      create or replace function comms_watermark_forward() returns trigger language plpgsql as $$
      begin
        if new.seq < old.seq or new.complete_seq < old.complete_seq then
          raise exception 'read watermarks never move backwards' using errcode = 'check_violation';
        end if;
        return new;
      end $$`);
  }

  override down(): void {
    this.addSql(`
      create or replace function comms_watermark_forward() returns trigger language plpgsql as $$
      begin
        if new.seq < old.seq then
          raise exception 'read watermarks never move backwards' using errcode = 'check_violation';
        end if;
        return new;
      end $$`);
    this.addSql('alter table read_watermark drop column complete_seq');
  }
}
