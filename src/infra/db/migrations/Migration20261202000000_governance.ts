import { Migration } from '@mikro-orm/migrations';

/**
 * Data governance (issue 9): the access audit, retractions, per-tenant retention of message bodies with
 * legal holds, and the database roles that keep the one change a message row may undergo (the
 * retention purge of its body) out of the service's reach.
 *
 * Roles (cluster-wide, created once, NOLOGIN):
 * - `comms_app`, the service's normal role: the app's pool runs as it (`-c role=comms_app`, or a login
 *   role that is a member of it). It may read and write the service's tables, but not UPDATE, DELETE or
 *   TRUNCATE messages, retractions or audit records, not DELETE legal holds, and not EXECUTE
 *   `comms_purge_bodies`.
 * - `comms_retention`, the retention job's role: it may only EXECUTE `comms_purge_bodies`.
 * - `comms_purger`, owner of `comms_purge_bodies` (SECURITY DEFINER): the only role the message trigger
 *   lets change a message row, and then only body → NULL with purged_at set. Nobody logs in as it.
 *
 * Migrations themselves run as the connecting (owner) user, before the pool switches roles.
 */
/**
 * The advisory lock that orders hold placements against purge batches, one per tenant:
 * (HOLD_LOCK, hashtext(tenant_id)).
 */
export const HOLD_LOCK = 7300;

export class Migration20261202000000_governance extends Migration {
  override name = 'Migration20261202000000_governance';

  override up(): void {
    // Roles are shared by every database of the server: create each once, tolerating a concurrent
    // migration of another database creating it at the same moment.
    this.addSql(`
      do $$
      declare r text;
      begin
        foreach r in array array['comms_app', 'comms_retention', 'comms_purger'] loop
          begin
            execute format('create role %I nologin', r);
          exception when duplicate_object or unique_violation then null;
          end;
        end loop;
        -- The migrating user switches to these roles (SET ROLE) for the pool and the retention job.
        execute format('grant comms_app, comms_retention to %I', current_user);
      exception when insufficient_privilege then
        raise notice 'cannot grant comms_app/comms_retention to %: give the service login roles that are members', current_user;
      end $$`);

    // Messages: the purge leaves a tombstone (id, thread, sender, sent_at, purged_at).
    this.addSql(`
      alter table message
        add column purged_at timestamptz,
        alter column body drop not null,
        alter column body_sha256 drop not null,
        add constraint message_purged_has_no_body
          check ((purged_at is null) = (body is not null) and (body is null) = (body_sha256 is null))`);
    this.addSql('create index message_unpurged_by_time on message (tenant_id, sent_at) where purged_at is null');
    // The append-only rule with its one exception: comms_purger (inside comms_purge_bodies) may clear a
    // body once. Nothing else about the row may change, and DELETE and TRUNCATE stay refused for all.
    this.addSql(`
      create or replace function comms_refuse_message_change() returns trigger language plpgsql as $$
      begin
        if tg_op = 'UPDATE' and current_user = 'comms_purger' then
          if old.purged_at is null and new.purged_at is not null and new.body is null and new.body_sha256 is null
             and (new.tenant_id, new.message_id, new.thread_id, new.seq, new.sender_user_id,
                  new.client_mutation_id, new.client_sent_at, new.sent_at)
                 is not distinct from
                 (old.tenant_id, old.message_id, old.thread_id, old.seq, old.sender_user_id,
                  old.client_mutation_id, old.client_sent_at, old.sent_at) then
            return new;
          end if;
        end if;
        raise exception 'messages are append-only: % refused', tg_op using errcode = 'insufficient_privilege';
      end $$`);

    // One generic refusal for the new append-only tables.
    this.addSql(`
      create function comms_refuse_change() returns trigger language plpgsql as $$
      begin
        raise exception '% is append-only: % refused', tg_table_name, tg_op using errcode = 'insufficient_privilege';
      end $$`);

    this.addSql(`
      create table message_retraction (
        tenant_id    text        not null,
        message_id   uuid        not null,
        thread_id    uuid        not null,
        retracted_by text        not null check (char_length(retracted_by) between 1 and 128),
        by_moderator boolean     not null,
        reason       text        not null default '' check (char_length(reason) <= 500),
        retracted_at timestamptz not null,
        primary key (tenant_id, message_id),
        foreign key (tenant_id, message_id) references message (tenant_id, message_id)
      )`);
    this.addSql(`
      create table access_audit (
        tenant_id        text        not null,
        -- UUIDv7 from the writer: time-ordered, no sequence shared across tenants.
        audit_id         uuid        not null,
        occurred_at      timestamptz not null,
        actor_user_id    text        not null,
        actor_roles      text[]      not null,
        method           text        not null,
        action           text        not null check (action in ('read', 'write')),
        request_id       text        not null,
        thread_id        uuid,
        resource         text        check (char_length(resource) <= 300),
        -- The ids when listed (at most 1000); a range read keeps only its ends and count.
        message_ids      uuid[]      check (cardinality(message_ids) <= 1000),
        first_seq        integer,
        last_seq         integer,
        first_message_id uuid,
        last_message_id  uuid,
        message_count    integer     not null default 0 check (message_count >= 0),
        primary key (tenant_id, audit_id),
        check ((first_seq is null) = (last_seq is null) and first_seq <= last_seq)
      )`);
    this.addSql('create index access_audit_by_thread on access_audit (tenant_id, thread_id, audit_id)');
    this.addSql('create index access_audit_by_actor on access_audit (tenant_id, actor_user_id, audit_id)');
    this.addSql('create index access_audit_by_time on access_audit (tenant_id, occurred_at)');
    for (const table of ['message_retraction', 'access_audit']) {
      this.addSql(`
        create trigger ${table}_append_only before update or delete on ${table}
          for each row execute function comms_refuse_change()`);
      this.addSql(`
        create trigger ${table}_no_truncate before truncate on ${table}
          for each statement execute function comms_refuse_change()`);
    }

    // Feeds tell WatchThread subscribers about retractions.
    this.addSql('alter table feed_event drop constraint feed_event_kind_check');
    this.addSql(`
      alter table feed_event add constraint feed_event_kind_check
        check (kind in ('message_posted', 'receipts_updated', 'thread_changed', 'session_changed',
                        'participant_changed', 'message_retracted'))`);

    this.addSql(`
      create table retention_policy (
        tenant_id           text        not null primary key,
        -- NULL: bodies are kept for ever.
        body_retention_days integer     check (body_retention_days between 1 and 5479),
        version             integer     not null check (version >= 1),
        updated_by          text        not null,
        updated_at          timestamptz not null
      )`);

    this.addSql(`
      create table legal_hold (
        tenant_id       text        not null,
        hold_id         uuid        not null,
        thread_id       uuid,
        patient_user_id text        check (char_length(patient_user_id) between 1 and 128),
        reason          text        not null check (char_length(reason) between 1 and 500),
        placed_by       text        not null,
        placed_at       timestamptz not null,
        released_by     text,
        released_at     timestamptz,
        release_reason  text        check (char_length(release_reason) between 1 and 500),
        primary key (tenant_id, hold_id),
        foreign key (tenant_id, thread_id) references thread (tenant_id, thread_id),
        check ((thread_id is null) <> (patient_user_id is null)),
        check ((released_at is null) = (released_by is null) and (released_at is null) = (release_reason is null))
      )`);
    // One active hold per target: placing it again finds the existing one.
    this.addSql(`
      create unique index legal_hold_active_thread on legal_hold (tenant_id, thread_id)
        where released_at is null and thread_id is not null`);
    this.addSql(`
      create unique index legal_hold_active_patient on legal_hold (tenant_id, patient_user_id)
        where released_at is null and patient_user_id is not null`);
    // A hold is a record: it is released once (who, when, why), never changed otherwise or deleted.
    this.addSql(`
      create function comms_legal_hold_release_only() returns trigger language plpgsql as $$
      begin
        if tg_op = 'UPDATE' then
          if old.released_at is null and new.released_at is not null
             and (new.tenant_id, new.hold_id, new.thread_id, new.patient_user_id, new.reason, new.placed_by,
                  new.placed_at) is not distinct from
                 (old.tenant_id, old.hold_id, old.thread_id, old.patient_user_id, old.reason, old.placed_by,
                  old.placed_at) then
            return new;
          end if;
          raise exception 'a legal hold is only released, once' using errcode = 'insufficient_privilege';
        end if;
        raise exception 'legal holds are kept: % refused', tg_op using errcode = 'insufficient_privilege';
      end $$`);
    this.addSql(`
      create trigger legal_hold_release_only before update or delete on legal_hold
        for each row execute function comms_legal_hold_release_only()`);
    this.addSql(`
      create trigger legal_hold_no_truncate before truncate on legal_hold
        for each statement execute function comms_refuse_change()`);
    // Placing a hold and purging exclude each other (advisory lock HOLD_LOCK): a new hold waits for a
    // running purge batch to commit, and a purge batch waits for holds being placed, then sees them.
    this.addSql(`
      create function comms_legal_hold_placing() returns trigger language plpgsql as $$
      begin
        perform pg_advisory_xact_lock_shared(${HOLD_LOCK}, hashtext(new.tenant_id));
        return new;
      end $$`);
    this.addSql(`
      create trigger legal_hold_placing before insert on legal_hold
        for each row execute function comms_legal_hold_placing()`);

    // The retention purge: the only path that changes a message row. SECURITY DEFINER, owned by
    // comms_purger; callable by comms_retention only.
    this.addSql(`
      create function comms_purge_bodies(p_tenant text, p_now timestamptz, p_limit integer) returns integer
      language plpgsql security definer set search_path = public, pg_temp as $$
      declare
        n integer;
      begin
        -- A hold being placed in this tenant (its insert holds the lock shared) commits before this
        -- batch reads, or waits until the batch commits: nothing it covers is purged after it is placed.
        perform pg_advisory_xact_lock(${HOLD_LOCK}, hashtext(p_tenant));
        with due as (
          select m.tenant_id, m.message_id
            from retention_policy r
            join message m on m.tenant_id = r.tenant_id and m.purged_at is null
                          and m.sent_at < p_now - make_interval(days => r.body_retention_days)
           where r.tenant_id = p_tenant and r.body_retention_days is not null
             and not exists (select 1 from legal_hold h
                              where h.tenant_id = m.tenant_id and h.thread_id = m.thread_id
                                and h.released_at is null)
             and not exists (select 1 from legal_hold h
                               join thread_participant p on p.tenant_id = h.tenant_id
                                                        and p.user_id = h.patient_user_id and p.role = 'patient'
                              where h.tenant_id = m.tenant_id and p.thread_id = m.thread_id
                                and h.released_at is null)
           limit p_limit
           for update of m skip locked
        )
        update message m set body = null, body_sha256 = null, purged_at = p_now
          from due where m.tenant_id = due.tenant_id and m.message_id = due.message_id;
        get diagnostics n = row_count;
        return n;
      end $$`);
    this.addSql('alter function comms_purge_bodies(text, timestamptz, integer) owner to comms_purger');
    this.addSql('revoke all on function comms_purge_bodies(text, timestamptz, integer) from public');
    this.addSql('grant execute on function comms_purge_bodies(text, timestamptz, integer) to comms_retention');
    // The job purges tenant by tenant (one tenant's rows per call, as Citus would route it).
    this.addSql('grant select on retention_policy to comms_retention');
    this.addSql('grant usage on schema public to comms_purger, comms_retention, comms_app');
    this.addSql(`
      grant select on message, retention_policy, legal_hold, thread_participant to comms_purger;
      grant update (body, body_sha256, purged_at) on message to comms_purger`);

    // pg-boss's tables belong to its own connection's user: the service enqueues only through these.
    this.addSql(`
      alter function comms_enqueue_dispatch(text, uuid[], timestamptz[])
        security definer set search_path = public, pg_temp`);
    this.addSql(`
      alter function comms_enqueue_session_timer(text, uuid, timestamptz)
        security definer set search_path = public, pg_temp`);
    this.addSql('revoke all on function comms_enqueue_dispatch(text, uuid[], timestamptz[]) from public');
    this.addSql('revoke all on function comms_enqueue_session_timer(text, uuid, timestamptz) from public');
    this.addSql('grant execute on function comms_enqueue_dispatch(text, uuid[], timestamptz[]) to comms_app');
    this.addSql('grant execute on function comms_enqueue_session_timer(text, uuid, timestamptz) to comms_app');

    // The service's normal role: everything it needs, minus what governance forbids. Tables a later
    // migration creates are granted to it by default: an append-only one revokes UPDATE, DELETE and
    // TRUNCATE itself, as this one does.
    this.addSql(`
      grant select, insert, update, delete on all tables in schema public to comms_app;
      grant usage, select on all sequences in schema public to comms_app;
      alter default privileges in schema public grant select, insert, update, delete on tables to comms_app;
      alter default privileges in schema public grant usage, select on sequences to comms_app;
      revoke all on mikro_orm_migrations from comms_app;
      revoke update, delete, truncate on message, message_retraction, access_audit from comms_app;
      revoke delete, truncate on legal_hold from comms_app`);
  }

  override down(): void {
    this.addSql(`
      revoke all on all tables in schema public from comms_app;
      revoke all on all sequences in schema public from comms_app;
      alter default privileges in schema public revoke all on tables from comms_app;
      alter default privileges in schema public revoke all on sequences from comms_app`);
    this.addSql('drop function comms_purge_bodies(text, timestamptz, integer)');
    this.addSql('drop table legal_hold');
    this.addSql('drop function comms_legal_hold_release_only, comms_legal_hold_placing');
    this.addSql('drop table retention_policy');
    this.addSql('alter table feed_event drop constraint feed_event_kind_check');
    this.addSql(`
      alter table feed_event add constraint feed_event_kind_check
        check (kind in ('message_posted', 'receipts_updated', 'thread_changed', 'session_changed',
                        'participant_changed'))`);
    this.addSql('drop table access_audit');
    this.addSql('drop table message_retraction');
    this.addSql('drop function comms_refuse_change');
    this.addSql('drop index message_unpurged_by_time');
    this.addSql(`
      alter table message drop constraint message_purged_has_no_body, drop column purged_at,
        alter column body set not null, alter column body_sha256 set not null`);
  }
}
