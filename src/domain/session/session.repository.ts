import { UniqueConstraintViolationException } from '@mikro-orm/core';
import type { EntityManager } from '@mikro-orm/postgresql';
import type { ParticipantRole } from '../thread/thread.entity.js';
import type { AdmitState, SessionSettings, SessionState, Suggestion } from './session.policy.js';

/** A virtual_session row. */
export interface SessionRecord {
  tenantId: string;
  sessionId: string;
  threadId: string | null;
  state: SessionState;
  stateReason: string;
  scheduledStartAt: Date;
  scheduledEndAt: Date;
  waitingRoomOpensAt: Date;
  expiresAt: Date | null;
  latestEndAt: Date | null;
  providersGoneAt: Date | null;
  nextTimerAt: Date | null;
  provider: string;
  providerRoomId: string;
  createdBy: string;
  createRequestId: string | null;
  createdAt: Date;
  updatedAt: Date;
  openedAt: Date | null;
  startedAt: Date | null;
  endedAt: Date | null;
  version: number;
}

/** A session_participant row (without the session's keys). */
export interface ParticipantRecord {
  userId: string;
  role: ParticipantRole;
  ordinal: number;
  admitState: AdmitState;
  admitStateChangedAt: Date;
  admitStateChangedBy: string;
  invitedBy: string;
  invitedAt: Date;
  joinedAt: Date | null;
  admittedAt: Date | null;
  admittedBy: string;
  leftAt: Date | null;
  waitingExpiresAt: Date | null;
  rejoinExpiresAt: Date | null;
}

/** A session with its participants in invite order. */
export interface SessionView {
  readonly session: SessionRecord;
  readonly participants: ParticipantRecord[];
}

export type SessionEventKind =
  | 'created'
  | 'transitioned'
  | 'transition_rejected'
  | 'rescheduled'
  | 'invited'
  | 'joined'
  | 'admitted'
  | 'denied'
  | 'removed'
  | 'left'
  | 'expired';

/** A session_event row (append-only). */
export interface SessionEventRecord {
  readonly sessionId: string;
  readonly eventId: string;
  readonly kind: SessionEventKind;
  readonly fromState: SessionState | null;
  readonly toState: SessionState;
  readonly transition: Suggestion | null;
  readonly subjectUserId: string;
  readonly fromAdmitState: AdmitState | null;
  readonly toAdmitState: AdmitState | null;
  readonly actorUserId: string;
  readonly reasonCode: string;
  readonly reason: string;
  readonly occurredAt: Date;
}

/** Filters of ListSessions, with the caller's restriction (`memberOf`: only sessions this user takes part in). */
export interface SessionFilter {
  readonly state: SessionState | undefined;
  readonly threadId: string | undefined;
  readonly participantUserId: string | undefined;
  readonly memberOf: string | undefined;
  readonly startFrom: Date | undefined;
  readonly startUntil: Date | undefined;
}

const snake = (key: string) => key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
const camel = (key: string) => key.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());

/** A row as to_jsonb gives it (snake_case, timestamps as text) → camelCase with Dates for `*At` keys. */
export function fromJson<T>(row: Record<string, unknown>): T {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(row)) {
    const name = camel(key);
    out[name] = name.endsWith('At') && typeof value === 'string' ? new Date(value) : value;
  }
  return out as T;
}

/** A record → snake_case JSON for jsonb_populate_record(set) (Dates become ISO strings). */
function toJson(record: object, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return Object.fromEntries([...Object.entries(extra), ...Object.entries(record)].map(([k, v]) => [snake(k), v]));
}

// The session's columns a change may write (identity and creation columns never change).
const MUTABLE = [
  'thread_id',
  'state',
  'state_reason',
  'scheduled_start_at',
  'scheduled_end_at',
  'waiting_room_opens_at',
  'expires_at',
  'latest_end_at',
  'providers_gone_at',
  'next_timer_at',
  'updated_at',
  'opened_at',
  'started_at',
  'ended_at',
  'version',
];

const PARTICIPANT_COLUMNS = [
  'role',
  'admit_state',
  'admit_state_changed_at',
  'admit_state_changed_by',
  'invited_by',
  'invited_at',
  'joined_at',
  'admitted_at',
  'admitted_by',
  'left_at',
  'waiting_expires_at',
  'rejoin_expires_at',
];

// A session's participants as one JSON array, in invite order (for a query over `virtual_session v`).
const PARTICIPANTS_JSON = `(select coalesce(jsonb_agg(to_jsonb(p) - 'tenant_id' - 'session_id' order by p.ordinal), '[]')
     from session_participant p where p.tenant_id = v.tenant_id and p.session_id = v.session_id)`;

// The tenant's session settings (its own row, else the defaults of tenant ''), for a query over `virtual_session v`.
const SETTINGS_JSON = `(select to_jsonb(s) - 'tenant_id' from session_settings s where s.tenant_id in (v.tenant_id, '')
     order by s.tenant_id desc limit 1)`;

function viewFromRow(row: Record<string, unknown>): SessionView {
  return {
    session: fromJson<SessionRecord>(row.session as Record<string, unknown>),
    participants: (row.participants as Record<string, unknown>[]).map((p) => fromJson<ParticipantRecord>(p)),
  };
}

/**
 * SQL access for the session aggregate. Every query is scoped by tenant_id first. Rows travel as JSON
 * (to_jsonb / jsonb_populate_record), so a record's fields are its columns.
 */
export class SessionRepository {
  constructor(private readonly em: EntityManager) {}

  /**
   * A session with its participants; with `lock`, first locks the session row until commit. The lock is
   * its own statement: a `FOR UPDATE` that waits for another command re-reads only the locked row, while
   * a participants subquery of the same statement would still see the snapshot from before the wait. The
   * read that follows is a new statement, so it sees everything the previous holder committed.
   */
  async load(tenantId: string, sessionId: string, lock = false): Promise<SessionView | undefined> {
    return (await this.#load(tenantId, sessionId, lock, false))?.view;
  }

  /** `load` with the tenant's session settings, read in the same statement (what a command needs). */
  async loadForChange(
    tenantId: string,
    sessionId: string,
  ): Promise<{ view: SessionView; settings: SessionSettings } | undefined> {
    const loaded = await this.#load(tenantId, sessionId, true, true);
    return loaded && { view: loaded.view, settings: loaded.settings! };
  }

  async #load(
    tenantId: string,
    sessionId: string,
    lock: boolean,
    withSettings: boolean,
  ): Promise<{ view: SessionView; settings: SessionSettings | undefined } | undefined> {
    if (lock) {
      const locked: unknown[] = await this.em.execute(
        'select 1 from virtual_session where tenant_id = ? and session_id = ? for update',
        [tenantId, sessionId],
      );
      if (locked.length === 0) return undefined;
    }
    const rows: Record<string, unknown>[] = await this.em.execute(
      `select to_jsonb(v) as session, ${PARTICIPANTS_JSON} as participants${withSettings ? `, ${SETTINGS_JSON} as settings` : ''}
         from virtual_session v where v.tenant_id = ? and v.session_id = ?`,
      [tenantId, sessionId],
    );
    const row = rows[0];
    if (!row) return undefined;
    if (withSettings && !row.settings) throw new Error('session_settings has no defaults row');
    return {
      view: viewFromRow(row),
      settings: withSettings ? fromJson<SessionSettings>(row.settings as Record<string, unknown>) : undefined,
    };
  }

  /** The session a caller created with this idempotency key, if any. */
  async findByCreateRequest(tenantId: string, createdBy: string, requestId: string): Promise<SessionView | undefined> {
    const rows: Record<string, unknown>[] = await this.em.execute(
      `select to_jsonb(v) as session, ${PARTICIPANTS_JSON} as participants
         from virtual_session v where v.tenant_id = ? and v.created_by = ? and v.create_request_id = ?`,
      [tenantId, createdBy, requestId],
    );
    return rows[0] && viewFromRow(rows[0]);
  }

  /** The tenant's session settings (its own row, else the defaults of tenant ''). */
  async settings(tenantId: string): Promise<SessionSettings> {
    const rows: { s: Record<string, unknown> }[] = await this.em.execute(
      `select ${SETTINGS_JSON.replaceAll('v.tenant_id', '?')} as s`,
      [tenantId],
    );
    if (!rows[0]) throw new Error('session_settings has no defaults row');
    return fromJson<SessionSettings>(rows[0].s);
  }

  /** Writes the default settings (tenant ''), as every start does. */
  async saveDefaultSettings(settings: SessionSettings): Promise<void> {
    const columns = Object.keys(toJson(settings));
    await this.em.execute(
      `insert into session_settings select * from jsonb_populate_record(null::session_settings, ?::jsonb)
       on conflict (tenant_id) do update set (${columns.join(', ')}) = (${columns.map((c) => `excluded.${c}`).join(', ')})`,
      [JSON.stringify(toJson(settings, { tenant_id: '' }))],
    );
  }

  /** Inserts a new session and its participants. False when the create request id is already taken. */
  async insert(view: SessionView): Promise<boolean> {
    try {
      await this.em.execute(
        `with s as (
           insert into virtual_session select * from jsonb_populate_record(null::virtual_session, ?::jsonb)
           returning tenant_id, session_id
         )
         insert into session_participant
         select r.* from s, jsonb_populate_recordset(null::session_participant, ?::jsonb) r`,
        [
          JSON.stringify(toJson(view.session)),
          JSON.stringify(
            view.participants.map((p) =>
              toJson(p, { tenant_id: view.session.tenantId, session_id: view.session.sessionId }),
            ),
          ),
        ],
      );
      return true;
    } catch (err) {
      if (err instanceof UniqueConstraintViolationException && view.session.createRequestId !== null) return false;
      throw err;
    }
  }

  /** Writes the session's mutable columns and the given participants (inserted or updated). */
  async update(session: SessionRecord, participants: readonly ParticipantRecord[]): Promise<void> {
    await this.em.execute(
      `update virtual_session v set (${MUTABLE.join(', ')}) = (${MUTABLE.map((c) => `r.${c}`).join(', ')})
         from jsonb_populate_record(null::virtual_session, ?::jsonb) r
        where v.tenant_id = r.tenant_id and v.session_id = r.session_id`,
      [JSON.stringify(toJson(session))],
    );
    if (participants.length === 0) return;
    await this.em.execute(
      `insert into session_participant as p
       select * from jsonb_populate_recordset(null::session_participant, ?::jsonb)
       on conflict (tenant_id, session_id, user_id) do update
         set (${PARTICIPANT_COLUMNS.join(', ')}) = (${PARTICIPANT_COLUMNS.map((c) => `excluded.${c}`).join(', ')})`,
      [
        JSON.stringify(
          participants.map((p) => toJson(p, { tenant_id: session.tenantId, session_id: session.sessionId })),
        ),
      ],
    );
  }

  /** Appends events to the session's history. */
  async record(tenantId: string, events: readonly SessionEventRecord[]): Promise<void> {
    if (events.length === 0) return;
    await this.em.execute(
      `insert into session_event select * from jsonb_populate_recordset(null::session_event, ?::jsonb)`,
      [JSON.stringify(events.map((e) => toJson(e, { tenant_id: tenantId })))],
    );
  }

  /** Enqueues the session's timer job for `at` (comms_enqueue_session_timer). */
  async enqueueTimer(tenantId: string, sessionId: string, at: Date): Promise<void> {
    await this.em.execute('select comms_enqueue_session_timer(?, ?::uuid, ?::timestamptz)', [tenantId, sessionId, at]);
  }

  /** Sessions (of one tenant, or all) whose next timer is at or before `now`, earliest first. */
  async due(now: Date, limit: number, tenantId?: string): Promise<{ tenantId: string; sessionId: string }[]> {
    const rows: { tenant_id: string; session_id: string }[] = await this.em.execute(
      `select tenant_id, session_id from virtual_session
        where next_timer_at <= ?::timestamptz and (?::text is null or tenant_id = ?)
        order by next_timer_at limit ?`,
      [now, tenantId ?? null, tenantId ?? null, limit],
    );
    return rows.map((r) => ({ tenantId: r.tenant_id, sessionId: r.session_id }));
  }

  /**
   * One page of sessions matching `filter`, earliest scheduled start first (ties by id), after `after`.
   * Returns up to `limit` views plus whether more follow.
   */
  async list(
    tenantId: string,
    filter: SessionFilter,
    after: { at: Date; id: string } | undefined,
    limit: number,
  ): Promise<{ views: SessionView[]; more: boolean }> {
    const params: unknown[] = [tenantId];
    let where = '';
    const member = (userId: string) => {
      params.push(userId);
      where += ` and exists (select 1 from session_participant m
                 where m.tenant_id = v.tenant_id and m.session_id = v.session_id and m.user_id = ?)`;
    };
    if (filter.memberOf !== undefined) member(filter.memberOf);
    if (filter.participantUserId !== undefined) member(filter.participantUserId);
    if (filter.state) {
      params.push(filter.state);
      where += ' and v.state = ?';
    }
    if (filter.threadId) {
      params.push(filter.threadId);
      where += ' and v.thread_id = ?::uuid';
    }
    if (filter.startFrom) {
      params.push(filter.startFrom);
      where += ' and v.scheduled_start_at >= ?::timestamptz';
    }
    if (filter.startUntil) {
      params.push(filter.startUntil);
      where += ' and v.scheduled_start_at < ?::timestamptz';
    }
    if (after) {
      params.push(after.at, after.id);
      where += ' and (v.scheduled_start_at, v.session_id) > (?::timestamptz, ?::uuid)';
    }
    params.push(limit + 1);
    const rows: Record<string, unknown>[] = await this.em.execute(
      `select to_jsonb(v) as session, ${PARTICIPANTS_JSON} as participants
         from virtual_session v where v.tenant_id = ?${where}
        order by v.scheduled_start_at, v.session_id limit ?`,
      params,
    );
    return { views: rows.slice(0, limit).map(viewFromRow), more: rows.length > limit };
  }

  /** One page of a session's events, oldest first, after `after`; optionally about one participant. */
  async events(
    tenantId: string,
    sessionId: string,
    subjectUserId: string | undefined,
    after: { at: Date; id: string } | undefined,
    limit: number,
  ): Promise<{ events: SessionEventRecord[]; more: boolean }> {
    const params: unknown[] = [tenantId, sessionId];
    let where = '';
    if (subjectUserId !== undefined) {
      params.push(subjectUserId);
      where += ' and e.subject_user_id = ?';
    }
    if (after) {
      params.push(after.at, after.id);
      where += ' and (e.occurred_at, e.event_id) > (?::timestamptz, ?::uuid)';
    }
    params.push(limit + 1);
    const rows: { e: Record<string, unknown> }[] = await this.em.execute(
      `select to_jsonb(e) - 'tenant_id' as e from session_event e
        where e.tenant_id = ? and e.session_id = ?::uuid${where}
        order by e.occurred_at, e.event_id limit ?`,
      params,
    );
    return { events: rows.slice(0, limit).map((r) => fromJson<SessionEventRecord>(r.e)), more: rows.length > limit };
  }
}
