import { Migration } from '@mikro-orm/migrations';
import { withText } from './Migration20261129060000_feed.js';
import { DISPATCH_LOAD_SQL } from './Migration20261130000000_notifications.js';

/**
 * Virtual sessions (issue 7): sessions, their participants, their append-only event history, per-tenant
 * session settings, the sandbox realtime provider's own store, and the session timer queue.
 *
 * Every change to a session runs in one transaction that locks the session row first (SELECT … FOR
 * UPDATE), so racing commands serialize and each decides on the state the previous one committed. The
 * database refuses what the policy forbids, whatever the code does:
 * - `virtual_session.state` moves only along the transition table of src/domain/session/session.policy.ts
 *   (TRANSITIONS); a closed session (ENDED, CANCELLED, EXPIRED) never changes; identity columns never change;
 *   sessions are never deleted.
 * - `session_participant.admit_state` moves only along ADMIT_TRANSITIONS; rows are never deleted; the
 *   waiting deadline is set exactly while WAITING.
 * - `session_event` is append-only (UPDATE, DELETE and TRUNCATE refused).
 * test/session/guards.test.ts tries every pair of states against the triggers and the code's tables.
 *
 * Time-driven changes: `next_timer_at` is the session's earliest due time; every change that moves it
 * enqueues a job on pg-boss's `session-timer` queue in the same transaction (`comms_enqueue_session_timer`,
 * singleton-keyed by the session).
 */
export class Migration20261201000000_sessions extends Migration {
  override name = 'Migration20261201000000_sessions';

  override up(): void {
    this.addSql(`
      create table session_settings (
        tenant_id         text    not null,
        lead_ms           bigint  not null check (lead_ms >= 0),
        no_show_ms        bigint  not null check (no_show_ms > 0),
        waiting_ms        bigint  not null check (waiting_ms > 0),
        rejoin_allowed    boolean not null,
        rejoin_grace_ms   bigint  not null check (rejoin_grace_ms >= 0),
        provider_grace_ms bigint  not null check (provider_grace_ms >= 0),
        max_duration_ms   bigint  not null check (max_duration_ms > 0),
        overrun_ms        bigint  not null check (overrun_ms >= 0),
        primary key (tenant_id)
      )`);
    this.addSql(`
      create table virtual_session (
        tenant_id             text        not null,
        session_id            uuid        not null,
        thread_id             uuid,
        state                 text        not null
                              check (state in ('scheduled', 'open', 'in_progress', 'ended', 'cancelled', 'expired')),
        state_reason          text        not null,
        scheduled_start_at    timestamptz not null,
        scheduled_end_at      timestamptz not null,
        waiting_room_opens_at timestamptz not null,
        expires_at            timestamptz,
        latest_end_at         timestamptz,
        -- IN_PROGRESS with no admitted provider since then (the grace period runs from here).
        providers_gone_at     timestamptz,
        next_timer_at         timestamptz,
        provider              text        not null,
        provider_room_id      text        not null,
        created_by            text        not null,
        create_request_id     text,
        created_at            timestamptz not null,
        updated_at            timestamptz not null,
        opened_at             timestamptz,
        started_at            timestamptz,
        ended_at              timestamptz,
        version               integer     not null,
        primary key (tenant_id, session_id),
        constraint virtual_session_create_once unique (tenant_id, created_by, create_request_id),
        constraint virtual_session_schedule
          check (scheduled_end_at > scheduled_start_at and waiting_room_opens_at <= scheduled_start_at),
        constraint virtual_session_expiry check ((state in ('scheduled', 'open')) = (expires_at is not null)),
        constraint virtual_session_latest_end check ((state = 'in_progress') = (latest_end_at is not null)),
        constraint virtual_session_providers_gone check (state = 'in_progress' or providers_gone_at is null),
        constraint virtual_session_closed
          check ((state in ('ended', 'cancelled', 'expired')) = (ended_at is not null and next_timer_at is null)),
        constraint virtual_session_opened check (state not in ('open', 'in_progress', 'ended') or opened_at is not null),
        constraint virtual_session_started check (state not in ('in_progress', 'ended') or started_at is not null)
      )`);
    this.addSql('create index virtual_session_by_start on virtual_session (tenant_id, scheduled_start_at, session_id)');
    this.addSql(
      'create index virtual_session_by_thread on virtual_session (tenant_id, thread_id) where thread_id is not null',
    );
    this.addSql(
      'create index virtual_session_timer on virtual_session (next_timer_at) where next_timer_at is not null',
    );
    this.addSql(`
      create table session_participant (
        tenant_id              text        not null,
        session_id             uuid        not null,
        user_id                text        not null check (char_length(user_id) between 1 and 128),
        role                   text        not null
                               check (role in ('patient', 'provider', 'care_staff', 'family', 'interpreter')),
        -- Invite order (participants are listed in it).
        ordinal                smallint    not null,
        admit_state            text        not null
                               check (admit_state in ('invited', 'waiting', 'admitted', 'denied', 'removed', 'left',
                                                      'expired')),
        admit_state_changed_at timestamptz not null,
        admit_state_changed_by text        not null,
        invited_by             text        not null,
        invited_at             timestamptz not null,
        joined_at              timestamptz,
        admitted_at            timestamptz,
        admitted_by            text        not null,
        left_at                timestamptz,
        waiting_expires_at     timestamptz,
        rejoin_expires_at      timestamptz,
        primary key (tenant_id, session_id, user_id),
        foreign key (tenant_id, session_id) references virtual_session (tenant_id, session_id),
        constraint session_participant_ordinal unique (tenant_id, session_id, ordinal),
        constraint session_participant_waiting check ((admit_state = 'waiting') = (waiting_expires_at is not null)),
        constraint session_participant_rejoin check (admit_state = 'left' or rejoin_expires_at is null),
        constraint session_participant_admitted check (admit_state <> 'admitted' or admitted_at is not null)
      )`);
    this.addSql('create index session_participant_by_user on session_participant (tenant_id, user_id, session_id)');
    this.addSql(`
      create table session_event (
        tenant_id        text        not null,
        session_id       uuid        not null,
        event_id         uuid        not null,
        kind             text        not null
                         check (kind in ('created', 'transitioned', 'transition_rejected', 'rescheduled', 'invited',
                                         'joined', 'admitted', 'denied', 'removed', 'left', 'expired')),
        from_state       text,
        to_state         text        not null,
        transition       text        check (transition in ('open', 'end', 'cancel')),
        subject_user_id  text        not null,
        from_admit_state text,
        to_admit_state   text,
        actor_user_id    text        not null,
        reason_code      text        not null,
        reason           text        not null check (char_length(reason) <= 1000),
        occurred_at      timestamptz not null,
        primary key (tenant_id, session_id, event_id),
        foreign key (tenant_id, session_id) references virtual_session (tenant_id, session_id)
      )`);
    this.addSql('create index session_event_order on session_event (tenant_id, session_id, occurred_at, event_id)');
    this.addSql(`
      create function comms_refuse_session_event_change() returns trigger language plpgsql as $$
      begin
        raise exception 'session events are append-only: % refused', tg_op using errcode = 'insufficient_privilege';
      end $$`);
    this.addSql(`
      create trigger session_event_append_only before update or delete on session_event
        for each row execute function comms_refuse_session_event_change()`);
    this.addSql(`
      create trigger session_event_no_truncate before truncate on session_event
        for each statement execute function comms_refuse_session_event_change()`);

    // The state machine: the pairs of TRANSITIONS in session.policy.ts (from, to), whatever the trigger.
    this.addSql(`
      create function comms_guard_virtual_session() returns trigger language plpgsql as $$
      begin
        if tg_op = 'DELETE' then
          raise exception 'sessions are never deleted' using errcode = 'insufficient_privilege';
        end if;
        if old.state in ('ended', 'cancelled', 'expired') then
          raise exception 'session % is closed (%)', old.session_id, old.state using errcode = 'check_violation';
        end if;
        if (new.tenant_id, new.session_id, new.created_by, new.created_at, new.provider, new.provider_room_id)
           is distinct from
           (old.tenant_id, old.session_id, old.created_by, old.created_at, old.provider, old.provider_room_id) then
          raise exception 'a session''s identity never changes' using errcode = 'check_violation';
        end if;
        if new.state <> old.state and (old.state, new.state) not in (
             ('scheduled', 'open'), ('open', 'in_progress'), ('in_progress', 'ended'), ('scheduled', 'cancelled'),
             ('open', 'cancelled'), ('scheduled', 'expired'), ('open', 'expired')) then
          raise exception 'session state % → % is not a transition', old.state, new.state
            using errcode = 'check_violation';
        end if;
        return new;
      end $$`);
    this.addSql(`
      create trigger virtual_session_guard before update or delete on virtual_session
        for each row execute function comms_guard_virtual_session()`);
    this.addSql(`
      create trigger virtual_session_no_truncate before truncate on virtual_session
        for each statement execute function comms_refuse_session_event_change()`);

    // The admit-state machine: the pairs of ADMIT_TRANSITIONS in session.policy.ts.
    this.addSql(`
      create function comms_guard_session_participant() returns trigger language plpgsql as $$
      begin
        if tg_op = 'DELETE' then
          raise exception 'session participants are never deleted' using errcode = 'insufficient_privilege';
        end if;
        if (new.tenant_id, new.session_id, new.user_id, new.ordinal)
           is distinct from (old.tenant_id, old.session_id, old.user_id, old.ordinal) then
          raise exception 'a participant''s identity never changes' using errcode = 'check_violation';
        end if;
        if new.admit_state <> old.admit_state and (old.admit_state, new.admit_state) not in (
             ('invited', 'waiting'), ('invited', 'admitted'), ('invited', 'removed'),
             ('waiting', 'admitted'), ('waiting', 'denied'), ('waiting', 'removed'), ('waiting', 'left'),
             ('waiting', 'expired'), ('admitted', 'left'), ('admitted', 'removed'),
             ('denied', 'invited'), ('denied', 'removed'), ('removed', 'invited'),
             ('left', 'waiting'), ('left', 'admitted'), ('left', 'removed'),
             ('expired', 'waiting'), ('expired', 'admitted'), ('expired', 'removed')) then
          raise exception 'admit_state % → % is not allowed', old.admit_state, new.admit_state
            using errcode = 'check_violation';
        end if;
        return new;
      end $$`);
    this.addSql(`
      create trigger session_participant_guard before update or delete on session_participant
        for each row execute function comms_guard_session_participant()`);
    this.addSql(`
      create trigger session_participant_no_truncate before truncate on session_participant
        for each statement execute function comms_refuse_session_event_change()`);

    // The sandbox realtime provider's own store: rooms, and revocations (a user's credential of a session
    // version before revoked_generation is refused).
    this.addSql(`
      create table sandbox_room (
        tenant_id  text        not null,
        room_id    text        not null,
        created_at timestamptz not null,
        closed_at  timestamptz,
        primary key (tenant_id, room_id)
      )`);
    this.addSql(`
      create table sandbox_room_revocation (
        tenant_id          text    not null,
        room_id            text    not null,
        user_id            text    not null,
        revoked_generation integer not null,
        primary key (tenant_id, room_id, user_id)
      )`);

    // One timer job per (session, due time), keyed by the session so one session's ticks never overlap.
    this.addSql(`
      create function comms_enqueue_session_timer(p_tenant text, p_session uuid, p_at timestamptz) returns void
      language plpgsql as $$
      begin
        insert into pgboss.job (name, data, start_after, singleton_key, retry_limit, retry_delay, retry_backoff,
                                retry_delay_max, expire_seconds, deletion_seconds, keep_until, policy,
                                heartbeat_seconds, dead_letter)
        select q.name, jsonb_build_object('tenant', p_tenant, 'id', p_session, 'at', p_at), p_at, p_session::text,
               q.retry_limit, q.retry_delay, q.retry_backoff, q.retry_delay_max, q.expire_seconds,
               q.deletion_seconds, p_at + q.retention_seconds * interval '1 second', q.policy, q.heartbeat_seconds,
               q.dead_letter
          from pgboss.queue q where q.name = 'session-timer';
        if not found then
          raise exception 'the session-timer queue does not exist' using errcode = 'undefined_object';
        end if;
      end $$`);

    this.addSql('drop function comms_dispatch_load');
    this.addSql(DISPATCH_LOAD_WITH_SESSIONS_SQL);
  }

  override down(): void {
    this.addSql('drop function comms_dispatch_load');
    this.addSql(DISPATCH_LOAD_SQL);
    this.addSql('drop function comms_enqueue_session_timer');
    this.addSql('drop table sandbox_room_revocation, sandbox_room');
    this.addSql('drop table session_event, session_participant, virtual_session, session_settings');
    this.addSql(
      'drop function comms_guard_session_participant, comms_guard_virtual_session, comms_refuse_session_event_change',
    );
  }
}

/**
 * comms_dispatch_load of migration 20261130000000, plus relevance for session kinds: a PATIENT_WAITING
 * intent stands while the patient still waits from the join that caused it and the session is not closed;
 * a PARTICIPANT_ADMITTED intent while the session is not closed. WAITING_EXPIRED always stands.
 */
const DISPATCH_LOAD_WITH_SESSIONS_SQL = withText(
  DISPATCH_LOAD_SQL,
  `            into v_member, v_read;
`,
  `        elsif i.kind = 'patient_waiting' then
          select exists (
            select 1 from session_event e
              join session_participant p
                on p.tenant_id = e.tenant_id and p.session_id = e.session_id and p.user_id = e.subject_user_id
              join virtual_session s on s.tenant_id = e.tenant_id and s.session_id = e.session_id
             where e.tenant_id = p_tenant and e.session_id = i.session_id and e.event_id = i.event_id::uuid
               and p.admit_state = 'waiting' and p.joined_at = e.occurred_at
               and s.state in ('scheduled', 'open', 'in_progress'))
            into v_member;
        elsif i.kind = 'participant_admitted' then
          select exists (select 1 from virtual_session s
                          where s.tenant_id = p_tenant and s.session_id = i.session_id
                            and s.state in ('scheduled', 'open', 'in_progress'))
            into v_member;
`,
);
