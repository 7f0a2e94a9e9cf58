import { Migration } from '@mikro-orm/migrations';

/**
 * Messages (append_only), read receipts (last-write-wins on (message_id, user_id)) and per-reader read
 * watermarks (never move backwards). The database itself refuses what the policies forbid: UPDATE,
 * DELETE and TRUNCATE of messages, a receipt's read_at moving earlier, a watermark moving backwards.
 */
export class Migration20261129010000_messages extends Migration {
  override name = 'Migration20261129010000_messages';

  override up(): void {
    // The thread row carries its message sequence: a send locks the row, takes message_seq + 1 and
    // moves sent_at forward, so (sent_at, message_id) order equals seq order equals commit order.
    this.addSql(`
      alter table thread
        add column message_seq     integer     not null default 0 check (message_seq >= 0),
        add column last_message_id uuid,
        add column last_message_at timestamptz,
        add constraint thread_last_message_matches_seq
          check ((message_seq = 0) = (last_message_id is null) and (message_seq = 0) = (last_message_at is null))`);
    this.addSql(`
      create table message (
        tenant_id          text        not null,
        message_id         uuid        not null,
        thread_id          uuid        not null,
        seq                integer     not null check (seq >= 1),
        sender_user_id     text        not null,
        client_mutation_id text        not null check (char_length(client_mutation_id) between 1 and 128),
        body               text        not null check (body <> ''),
        body_sha256        bytea       not null check (length(body_sha256) = 32),
        client_sent_at     timestamptz,
        sent_at            timestamptz not null,
        primary key (tenant_id, message_id),
        foreign key (tenant_id, thread_id) references thread (tenant_id, thread_id),
        constraint message_thread_seq_uq unique (tenant_id, thread_id, seq),
        -- The idempotency key: one send per (tenant, sender, client_mutation_id), on every replica,
        -- for as long as the message exists.
        constraint message_idempotency_uq unique (tenant_id, sender_user_id, client_mutation_id)
      )`);
    // Unread counts subtract the reader's own messages after its watermark: a range over its own rows.
    this.addSql('create index message_by_sender on message (tenant_id, thread_id, sender_user_id, seq)');
    this.addSql(`
      create function comms_refuse_message_change() returns trigger language plpgsql as $$
      begin
        raise exception 'messages are append-only: % refused', tg_op using errcode = 'insufficient_privilege';
      end $$`);
    this.addSql(`
      create trigger message_append_only before update or delete on message
        for each row execute function comms_refuse_message_change()`);
    this.addSql(`
      create trigger message_no_truncate before truncate on message
        for each statement execute function comms_refuse_message_change()`);

    this.addSql(`
      create table read_receipt (
        tenant_id  text        not null,
        message_id uuid        not null,
        user_id    text        not null check (char_length(user_id) between 1 and 128),
        thread_id  uuid        not null,
        seq        integer     not null,
        read_at    timestamptz not null,
        primary key (tenant_id, message_id, user_id),
        foreign key (tenant_id, message_id) references message (tenant_id, message_id)
      )`);
    this.addSql('create index read_receipt_by_thread on read_receipt (tenant_id, thread_id, seq, user_id)');
    this.addSql(`
      create function comms_receipt_lww() returns trigger language plpgsql as $$
      begin
        if new.read_at < old.read_at or (new.tenant_id, new.message_id, new.user_id, new.thread_id, new.seq)
             is distinct from (old.tenant_id, old.message_id, old.user_id, old.thread_id, old.seq) then
          raise exception 'read receipts only move later' using errcode = 'check_violation';
        end if;
        return new;
      end $$`);
    this.addSql(`
      create trigger read_receipt_lww before update on read_receipt
        for each row execute function comms_receipt_lww()`);

    this.addSql(`
      create table read_watermark (
        tenant_id  text        not null,
        thread_id  uuid        not null,
        user_id    text        not null check (char_length(user_id) between 1 and 128),
        seq        integer     not null check (seq >= 1),
        message_id uuid        not null,
        sent_at    timestamptz not null,
        updated_at timestamptz not null,
        primary key (tenant_id, thread_id, user_id),
        foreign key (tenant_id, thread_id) references thread (tenant_id, thread_id),
        foreign key (tenant_id, message_id) references message (tenant_id, message_id)
      )`);
    this.addSql(`
      create function comms_watermark_forward() returns trigger language plpgsql as $$
      begin
        if new.seq < old.seq then
          raise exception 'read watermarks never move backwards' using errcode = 'check_violation';
        end if;
        return new;
      end $$`);
    this.addSql(`
      create trigger read_watermark_forward before update on read_watermark
        for each row execute function comms_watermark_forward()`);
  }

  override down(): void {
    this.addSql('drop table read_watermark');
    this.addSql('drop table read_receipt');
    this.addSql('drop table message');
    this.addSql('drop function comms_watermark_forward, comms_receipt_lww, comms_refuse_message_change');
    this.addSql(
      'alter table thread drop constraint thread_last_message_matches_seq, drop column message_seq, drop column last_message_id, drop column last_message_at',
    );
  }
}
