import { Migration } from '@mikro-orm/migrations';
import { SEND_MESSAGE_WITH_EVENTS_SQL, withText } from './Migration20261129060000_feed.js';

/**
 * Notifications (issue 6): intents, their append-only dispatch records, per-user preferences, per-tenant
 * settings, and the sandbox channel provider's own store.
 *
 * `notification_intent` is server-authoritative: rows are created only by `comms_notify`, called in the
 * transaction of the event that causes them (a send, an escalation, a service's request). The unique key
 * (tenant_id, requested_by, event_id, recipient_user_id) makes at most one intent per event and recipient
 * (`requested_by` is '' for the server's own events, the calling service's subject otherwise). A trigger
 * keeps what an intent is about immutable, keeps SUPPRESSED and CANCELLED final, and refuses deletes.
 *
 * `dispatch_record` is append-only (a trigger refuses UPDATE, DELETE and TRUNCATE): attempts, delivery
 * reports and reconciliation answers. A report is stored as it arrives, with the provider and the
 * provider's message id, and is linked to its attempt when read (the attempt, or a reconciliation record
 * of it, carries the same provider message id), so a report that arrives before its attempt is committed
 * is never lost and no row is ever rewritten to link it. (tenant_id, provider, provider_event_id) is
 * unique: a repeated report is stored once.
 *
 * Jobs go to pg-boss's `notification-dispatch` queue in the same transaction, through
 * `comms_enqueue_dispatch`, the only code that writes pg-boss's job table directly (a documented use of
 * pg-boss: its columns have defaults, and the queue's row holds the options each job copies). One job per
 * intent and due time, keyed by the intent (`singleton_key`, queue policy `singleton`), so at most one job
 * per intent runs at a time on any replica.
 */
export class Migration20261130000000_notifications extends Migration {
  override name = 'Migration20261130000000_notifications';

  override up(): void {
    this.addSql(`
      create table notification_settings (
        tenant_id     text    not null,
        -- Default channel plan per kind: {"message_posted": [{"channel": "push", "delay_ms": 0,
        -- "condition": "always"}, ...], ...}
        kind_plans    jsonb   not null,
        deep_link_base text   not null check (deep_link_base ~ '^[a-z][a-z0-9+.-]*://'),
        previews      boolean not null default false,
        primary key (tenant_id)
      )`);
    this.addSql(`
      create table notification_preference (
        tenant_id     text        not null,
        user_id       text        not null check (char_length(user_id) between 1 and 128),
        -- {"message_posted": ["push", "sms"], ...}; kinds not listed use the tenant default.
        kind_channels jsonb       not null default '{}',
        quiet_start   smallint check (quiet_start between 0 and 1439),
        quiet_end     smallint check (quiet_end between 0 and 1439),
        time_zone     text,
        version       integer     not null default 1,
        updated_at    timestamptz not null,
        primary key (tenant_id, user_id),
        constraint notification_preference_quiet_complete
          check ((quiet_start is null) = (quiet_end is null) and (quiet_start is null) = (time_zone is null)),
        constraint notification_preference_quiet_not_empty check (quiet_start <> quiet_end)
      )`);
    this.addSql(`
      create table notification_intent (
        tenant_id            text        not null,
        notification_id      uuid        not null,
        recipient_user_id    text        not null check (char_length(recipient_user_id) between 1 and 128),
        kind                 text        not null check (kind in ('message_posted', 'thread_escalated',
                               'patient_waiting', 'participant_admitted', 'waiting_expired', 'service_event')),
        requested_by         text        not null default '',
        event_id             text        not null check (char_length(event_id) between 1 and 128),
        thread_id            uuid,
        message_id           uuid,
        session_id           uuid,
        template_key         text        not null default '',
        deep_link            text        not null,
        plan                 jsonb       not null,
        urgent               boolean     not null,
        -- The dispatcher's state; SENT, DELIVERED and FAILED are derived from the records when read.
        state                text        not null check (state in ('pending', 'dispatching', 'settled',
                                                                   'suppressed', 'cancelled')),
        state_reason         text        not null default '',
        quiet_hours_bypassed boolean     not null default false,
        quiet_hours_bypass_reason text   not null default '',
        next_step            integer     not null default 0 check (next_step >= 0),
        next_dispatch_at     timestamptz,
        -- An attempt in flight: claimed before the provider is called, cleared when its record is
        -- appended. A claim found by the next job means the dispatcher stopped mid-call.
        claim_reference      uuid,
        claim_attempt        integer,
        claim_step           integer,
        claim_channel        text,
        claim_provider       text,
        claimed_at           timestamptz,
        created_at           timestamptz not null,
        updated_at           timestamptz not null,
        primary key (tenant_id, notification_id),
        constraint notification_intent_once unique (tenant_id, requested_by, event_id, recipient_user_id),
        constraint notification_intent_message_has_thread check (message_id is null or thread_id is not null),
        constraint notification_intent_claim_complete check (
          (claim_reference is null) = (claim_attempt is null) and (claim_reference is null) = (claimed_at is null))
      )`);
    this.addSql(`
      create index notification_intent_by_recipient
        on notification_intent (tenant_id, recipient_user_id, created_at desc, notification_id desc)`);
    this.addSql(`
      create function comms_guard_notification_intent() returns trigger language plpgsql as $$
      begin
        if tg_op in ('DELETE', 'TRUNCATE') then
          raise exception 'notification intents are never deleted' using errcode = 'insufficient_privilege';
        end if;
        if (new.tenant_id, new.notification_id, new.recipient_user_id, new.kind, new.requested_by, new.event_id,
            new.thread_id, new.message_id, new.session_id, new.template_key, new.deep_link, new.plan, new.urgent,
            new.created_at)
           is distinct from
           (old.tenant_id, old.notification_id, old.recipient_user_id, old.kind, old.requested_by, old.event_id,
            old.thread_id, old.message_id, old.session_id, old.template_key, old.deep_link, old.plan, old.urgent,
            old.created_at) then
          raise exception 'what a notification intent is about never changes' using errcode = 'insufficient_privilege';
        end if;
        if old.state in ('suppressed', 'cancelled')
           and (new.state, new.state_reason) is distinct from (old.state, old.state_reason) then
          raise exception 'a % notification intent stays so', old.state using errcode = 'insufficient_privilege';
        end if;
        if old.quiet_hours_bypassed
           and (not new.quiet_hours_bypassed or new.quiet_hours_bypass_reason <> old.quiet_hours_bypass_reason) then
          raise exception 'a recorded quiet-hours bypass is never cleared' using errcode = 'insufficient_privilege';
        end if;
        return new;
      end $$`);
    this.addSql(`
      create trigger notification_intent_guard before update or delete on notification_intent
        for each row execute function comms_guard_notification_intent()`);
    this.addSql(`
      create trigger notification_intent_no_truncate before truncate on notification_intent
        for each statement execute function comms_guard_notification_intent()`);

    this.addSql(`
      create table dispatch_record (
        tenant_id           text        not null,
        record_id           uuid        not null,
        kind                text        not null check (kind in ('attempt', 'delivery_report', 'reconciliation')),
        -- Attempts and reconciliation answers belong to an intent; reports are linked when read.
        notification_id     uuid,
        attempt_number      integer check (attempt_number >= 1),
        plan_step           integer check (plan_step >= 0),
        channel             text check (channel in ('push', 'sms', 'email', 'in_app')),
        provider            text        not null check (char_length(provider) between 1 and 64),
        provider_message_id text        not null default '' check (char_length(provider_message_id) <= 256),
        provider_event_id   text check (char_length(provider_event_id) between 1 and 256),
        status              text        not null check (status in ('unspecified', 'queued', 'sent', 'delivered',
                                                                   'undelivered', 'failed', 'read')),
        provider_timestamp  timestamptz,
        error_code          text        not null default '' check (char_length(error_code) <= 64),
        error_message       text        not null default '' check (char_length(error_message) <= 500),
        outcome             text check (outcome in ('accepted', 'rejected', 'error', 'timeout')),
        -- Attempts: the reference the dispatcher gave the provider (its idempotency key and lookup key).
        reference           uuid,
        -- Reconciliation answers: the attempt looked up.
        attempt_record_id   uuid,
        recorded_at         timestamptz not null,
        primary key (tenant_id, record_id),
        constraint dispatch_record_report_once unique (tenant_id, provider, provider_event_id),
        constraint dispatch_record_shape check (case kind
          when 'attempt' then notification_id is not null and attempt_number is not null and plan_step is not null
                              and channel is not null and outcome is not null and reference is not null
                              and provider_event_id is null and attempt_record_id is null
          when 'delivery_report' then notification_id is null and provider_event_id is not null
                              and provider_message_id <> '' and outcome is null and status <> 'unspecified'
          else notification_id is not null and attempt_record_id is not null and outcome is null
                              and provider_event_id is null end)
      )`);
    this.addSql(`
      create unique index dispatch_record_attempt_once
        on dispatch_record (tenant_id, notification_id, attempt_number) where kind = 'attempt'`);
    this.addSql(`
      create index dispatch_record_by_intent on dispatch_record (tenant_id, notification_id, recorded_at)
        where notification_id is not null`);
    this.addSql(`
      create index dispatch_record_by_provider_message
        on dispatch_record (tenant_id, provider_message_id, provider) where provider_message_id <> ''`);
    this.addSql(`
      create function comms_refuse_dispatch_record_change() returns trigger language plpgsql as $$
      begin
        raise exception 'dispatch records are append-only' using errcode = 'insufficient_privilege';
      end $$`);
    this.addSql(`
      create trigger dispatch_record_append_only before update or delete on dispatch_record
        for each row execute function comms_refuse_dispatch_record_change()`);
    this.addSql(`
      create trigger dispatch_record_no_truncate before truncate on dispatch_record
        for each statement execute function comms_refuse_dispatch_record_change()`);

    // The sandbox channel provider's store: what it was asked to send (one row per request, so a
    // double send shows as two rows) and how tests and benches tell it to behave per recipient.
    this.addSql(`
      create table sandbox_message (
        tenant_id           text        not null,
        provider_message_id uuid        not null,
        reference           uuid        not null,
        recipient_user_id   text        not null,
        channel             text        not null,
        address             text        not null,
        text                text        not null,
        deep_link           text        not null,
        accepted_at         timestamptz not null,
        primary key (tenant_id, provider_message_id)
      )`);
    this.addSql('create index sandbox_message_by_reference on sandbox_message (tenant_id, reference)');
    this.addSql(`
      create table sandbox_behavior (
        tenant_id         text    not null,
        recipient_user_id text    not null,
        -- A channel, or '*' for every channel.
        channel           text    not null,
        outcome           text    not null default 'accept'
                          check (outcome in ('accept', 'reject', 'error', 'timeout')),
        -- How long the provider takes to answer, after it has stored the message.
        delay_ms          integer not null default 0 check (delay_ms between 0 and 600000),
        -- Statuses the provider reports after accepting; null: the configured default.
        reports           text[],
        primary key (tenant_id, recipient_user_id, channel)
      )`);

    // A UUIDv7 for time p_at: a random v4 id with its first 48 bits replaced by the millisecond timestamp
    // and its version nibble set to 7 (PL/pgSQL: its plan is cached, a SQL function's is not).
    this.addSql(`
      create function comms_uuid_v7(p_at timestamptz) returns uuid language plpgsql volatile as $$
      declare
        b bytea := uuid_send(gen_random_uuid());
      begin
        b := overlay(b placing substring(int8send(floor(extract(epoch from p_at) * 1000)::bigint) from 3) from 1 for 6);
        b := set_byte(b, 6, (get_byte(b, 6) & 15) | 112);
        return encode(b, 'hex')::uuid;
      end $$`);

    // Enqueues one dispatch job per (intent, due time). pg-boss creates its schema when the service
    // starts; PL/pgSQL resolves the table when this first runs.
    this.addSql(`
      create function comms_enqueue_dispatch(p_tenant text, p_ids uuid[], p_at timestamptz[]) returns void
      language plpgsql as $$
      begin
        insert into pgboss.job (name, data, start_after, singleton_key, retry_limit, retry_delay, retry_backoff,
                                retry_delay_max, expire_seconds, deletion_seconds, keep_until, policy,
                                heartbeat_seconds, dead_letter)
        select q.name, jsonb_build_object('tenant', p_tenant, 'id', j.id), j.at, j.id::text, q.retry_limit,
               q.retry_delay, q.retry_backoff, q.retry_delay_max, q.expire_seconds, q.deletion_seconds,
               j.at + q.retention_seconds * interval '1 second', q.policy, q.heartbeat_seconds, q.dead_letter
          from unnest(p_ids, p_at) as j(id, at)
          join pgboss.queue q on q.name = 'notification-dispatch';
        if not found then
          raise exception 'the notification-dispatch queue does not exist' using errcode = 'undefined_object';
        end if;
      end $$`);

    // Creates the intents of one event, one per recipient (none for a recipient that already has one for
    // this event), and enqueues their first dispatch. The plan is p_plan, or the tenant's (else the
    // default settings', tenant '') plan for the kind, restricted to the channels each recipient allows
    // for the kind (IN_APP is always allowed); an empty plan makes the intent SUPPRESSED
    // (NO_CHANNEL_ALLOWED).
    this.addSql(`
      create function comms_create_intents(
        p_tenant text, p_kind text, p_requested_by text, p_event_id text, p_recipients text[],
        p_thread uuid, p_message uuid, p_session uuid, p_template text, p_urgent boolean, p_plan jsonb,
        p_now timestamptz)
        returns void
      language plpgsql as $$
      declare
        s notification_settings;
        v_plan jsonb;
        v_link text;
        v_ids uuid[];
        v_at timestamptz[];
      begin
        select * into s from notification_settings where tenant_id in (p_tenant, '')
         order by tenant_id desc limit 1;
        v_plan := coalesce(p_plan, s.kind_plans -> p_kind, '[]');
        v_link := coalesce(s.deep_link_base, 'comms://') || case
          when p_message is not null then 'threads/' || p_thread || '/messages/' || p_message
          when p_thread is not null then 'threads/' || p_thread
          when p_session is not null then 'sessions/' || p_session
          else 'notifications' end;
        with planned as materialized (
          select r.user_id,
                 (select coalesce(jsonb_agg(st.step order by st.n), '[]')
                    from jsonb_array_elements(v_plan) with ordinality as st(step, n)
                   where st.step ->> 'channel' = 'in_app' or p.kind_channels is null
                      or not (p.kind_channels ? p_kind) or (p.kind_channels -> p_kind) ? (st.step ->> 'channel')) as plan
            from unnest(p_recipients) as r(user_id)
            left join notification_preference p on p.tenant_id = p_tenant and p.user_id = r.user_id
        ), inserted as (
          insert into notification_intent as i (
            tenant_id, notification_id, recipient_user_id, kind, requested_by, event_id, thread_id, message_id,
            session_id, template_key, deep_link, plan, urgent, state, state_reason, next_dispatch_at,
            created_at, updated_at)
          select p_tenant, comms_uuid_v7(p_now), pl.user_id, p_kind, p_requested_by, p_event_id,
                 p_thread, p_message, p_session, p_template,
                 v_link,
                 pl.plan, p_urgent,
                 case when jsonb_array_length(pl.plan) = 0 then 'suppressed' else 'pending' end,
                 case when jsonb_array_length(pl.plan) = 0 then 'NO_CHANNEL_ALLOWED' else '' end,
                 case when jsonb_array_length(pl.plan) = 0 then null
                      else p_now + ((pl.plan -> 0 ->> 'delay_ms')::bigint * interval '1 millisecond') end,
                 p_now, p_now
            from planned pl
          on conflict on constraint notification_intent_once do nothing
          returning i.notification_id, i.next_dispatch_at
        )
        select array_agg(x.notification_id), array_agg(x.next_dispatch_at) into v_ids, v_at
          from inserted x where x.next_dispatch_at is not null;
        if v_ids is not null then
          perform comms_enqueue_dispatch(p_tenant, v_ids, v_at);
        end if;
      end $$`);
    // comms_create_intents, then the intents of the event for these recipients, created now or before.
    this.addSql(`
      create function comms_notify(
        p_tenant text, p_kind text, p_requested_by text, p_event_id text, p_recipients text[],
        p_thread uuid, p_message uuid, p_session uuid, p_template text, p_urgent boolean, p_plan jsonb,
        p_now timestamptz)
        returns setof notification_intent
      language plpgsql as $$
      begin
        perform comms_create_intents(p_tenant, p_kind, p_requested_by, p_event_id, p_recipients, p_thread,
                                     p_message, p_session, p_template, p_urgent, p_plan, p_now);
        return query select * from notification_intent i
          where i.tenant_id = p_tenant and i.requested_by = p_requested_by and i.event_id = p_event_id
            and i.recipient_user_id = any (p_recipients);
      end $$`);

    // Serialises the writers of one provider message id until commit: the attempt that carries it and the
    // reports about it, so whichever commits second sees the other.
    this.addSql(`
      create function comms_lock_provider_message(p_tenant text, p_provider text, p_pmid text) returns void
      language sql as $$
        select pg_advisory_xact_lock(hashtextextended('dispatch ' || p_tenant || ' ' || p_provider || ' ' || p_pmid, 0))
      $$`);

    // What the dispatcher decides from, in one round trip with cached plans: the intent (locked), its
    // records with the linked delivery reports, whether a MESSAGE_POSTED recipient still takes part and
    // has read the message, the recipient's preferences, and whether the tenant opted into previews. With p_pmid, first takes the advisory lock
    // of that provider message id (the writers of one provider message id serialise on it) and includes
    // the reports already stored for it.
    this.addSql(DISPATCH_LOAD_SQL);

    this.addSql(SEND_MESSAGE_WITH_NOTIFICATIONS_SQL);
  }

  override down(): void {
    this.addSql('drop function comms_send_message');
    this.addSql(SEND_MESSAGE_WITH_EVENTS_SQL.replace('create or replace function', 'create function'));
    this.addSql(
      'drop function comms_dispatch_load, comms_notify, comms_create_intents, comms_enqueue_dispatch, comms_uuid_v7',
    );
    this.addSql('drop table sandbox_behavior, sandbox_message, dispatch_record, notification_intent');
    this.addSql('drop table notification_preference, notification_settings');
    this.addSql('drop function comms_refuse_dispatch_record_change, comms_guard_notification_intent');
  }
}

/**
 * comms_send_message of migration 20261129060000, plus a MESSAGE_POSTED intent for every other
 * participant, created with the message (a retry finds the earlier message and creates nothing), before
 * the feed append, which stays the last thing the transaction does.
 */
const SEND_MESSAGE_WITH_NOTIFICATIONS_SQL = withText(
  SEND_MESSAGE_WITH_EVENTS_SQL,
  `         where tenant_id = p_tenant and thread_id = p_thread;
`,
  `        perform comms_create_intents(
          p_tenant, 'message_posted', '', m.message_id::text,
          array(select p.user_id from thread_participant p
                 where p.tenant_id = p_tenant and p.thread_id = p_thread and p.user_id <> p_user),
          p_thread, m.message_id, null, '', false, null, m.sent_at);
`,
);

/** comms_dispatch_load (see its comment in `up`); migration 20261201000000 extends it for session kinds. */
export const DISPATCH_LOAD_SQL = `
      create function comms_dispatch_load(p_tenant text, p_id uuid, p_provider text, p_pmid text) returns json
      language plpgsql as $$
      declare
        i notification_intent;
        v_records json;
        v_keys text[];
        v_pmids text[];
        v_member boolean := true;
        v_read boolean := false;
        v_prefs json;
        v_previews boolean;
      begin
        if p_pmid is not null then
          perform comms_lock_provider_message(p_tenant, p_provider, p_pmid);
        end if;
        select * into i from notification_intent where tenant_id = p_tenant and notification_id = p_id for update;
        if not found then
          return null;
        end if;
        -- The provider message ids of the intent's attempts and reconciliation answers (and p_pmid), then
        -- the reports carrying one of them: two index lookups, whatever plan PL/pgSQL caches.
        select array_agg(d.provider || ' ' || d.provider_message_id), array_agg(d.provider_message_id)
          into v_keys, v_pmids
          from dispatch_record d
         where d.tenant_id = p_tenant and d.notification_id = p_id and d.provider_message_id <> '';
        if p_pmid is not null then
          v_keys := coalesce(v_keys, '{}') || (p_provider || ' ' || p_pmid);
          v_pmids := coalesce(v_pmids, '{}') || p_pmid;
        end if;
        select coalesce(json_agg(x order by x.recorded_at, x.record_id), '[]') into v_records
          from (select * from dispatch_record d where d.tenant_id = p_tenant and d.notification_id = p_id
                union all
                select r.* from dispatch_record r
                 where r.tenant_id = p_tenant and r.provider_message_id = any (coalesce(v_pmids, '{}'))
                   and r.provider_message_id <> '' and r.kind = 'delivery_report'
                   and r.provider || ' ' || r.provider_message_id = any (v_keys)) x;
        if i.kind = 'message_posted' then
          select exists (select 1 from thread_participant p
                          where p.tenant_id = p_tenant and p.thread_id = i.thread_id and p.user_id = i.recipient_user_id),
                 exists (select 1 from read_receipt r
                          where r.tenant_id = p_tenant and r.message_id = i.message_id and r.user_id = i.recipient_user_id)
                 or exists (select 1 from read_watermark w join message m
                              on m.tenant_id = w.tenant_id and m.thread_id = w.thread_id and m.message_id = i.message_id
                             where w.tenant_id = p_tenant and w.thread_id = i.thread_id
                               and w.user_id = i.recipient_user_id and w.seq >= m.seq)
            into v_member, v_read;
        end if;
        select row_to_json(p) into v_prefs from notification_preference p
         where p.tenant_id = p_tenant and p.user_id = i.recipient_user_id;
        select s.previews into v_previews from notification_settings s where s.tenant_id in (p_tenant, '')
         order by s.tenant_id desc limit 1;
        return json_build_object('intent', row_to_json(i), 'records', v_records, 'member', v_member, 'read', v_read,
                                 'prefs', v_prefs, 'previews', coalesce(v_previews, false));
      end $$`;
