import { IsolationLevel } from '@mikro-orm/core';
import type { EntityManager } from '@mikro-orm/postgresql';
import type { Actor } from '../actor.js';
import { governsTenant } from '../actor.js';
import type { Clock } from '../clock.js';
import { boundByDeadline, type Db } from '../db.js';
import { DomainError, EtagMismatch, PermissionDenied, Violations } from '../errors.js';
import { FeedRepository, type NewFeedEvent, streams } from '../feed/feed.repository.js';
import { newId } from '../ids.js';
import { NotificationRepository } from '../notification/notification.repository.js';
import { decodePositionToken, encodePositionToken } from '../page-token.js';
import type { ParticipantRole } from '../thread/thread.entity.js';
import { ThreadNotFound } from '../thread/thread.errors.js';
import { memberPermissions } from '../thread/thread.policy.js';
import { ThreadRepository } from '../thread/thread.repository.js';
import { checkRequestId, checkText, checkUserId, checkUuid, pageSize } from '../validation.js';
import { governingRole, SessionChange } from './session.change.js';
import {
  NotAParticipant,
  participantPrecondition,
  SessionNotFound,
  SessionParticipantNotFound,
  SessionPreconditionFailed,
  SessionRoleNotAllowed,
  sessionClosed,
} from './session.errors.js';
import {
  CLOSED_STATES,
  decideSuggestion,
  mayCreateSession,
  type SessionAccess,
  sessionAccess,
  SESSION_LIMITS,
  type SessionState,
  type Suggestion,
} from './session.policy.js';
import {
  type ParticipantRecord,
  type SessionEventRecord,
  SessionRepository,
  type SessionView,
} from './session.repository.js';
import type { RoomCredential, RoomProvider } from './session.room.js';

/** A participant as a request names it. */
export interface SessionParticipantSpec {
  readonly userId: string;
  readonly role: ParticipantRole | undefined;
}

export interface CreateSessionInput {
  readonly threadId: string;
  readonly scheduledStartAt: Date | undefined;
  readonly scheduledEndAt: Date | undefined;
  readonly waitingRoomOpensAt: Date | undefined;
  readonly participants: readonly SessionParticipantSpec[];
  readonly requestId: string;
}

export interface ListSessionsInput {
  readonly pageSize: number;
  readonly pageToken: string;
  readonly state: SessionState | undefined;
  readonly threadId: string;
  readonly participantUserId: string;
  readonly scheduledStartFrom: Date | undefined;
  readonly scheduledStartUntil: Date | undefined;
}

export interface UpdateSessionInput {
  readonly paths: readonly string[];
  readonly threadId: string;
  readonly scheduledStartAt: Date | undefined;
  readonly scheduledEndAt: Date | undefined;
  readonly waitingRoomOpensAt: Date | undefined;
  readonly etag: string;
}

/** The server's answer to RequestTransition. */
export interface TransitionResult {
  readonly accepted: boolean;
  readonly rejectionReason: string;
  readonly view: SessionView;
  readonly participant: ParticipantRecord | undefined;
}

/** A participant command's result: the participant and the session after it. */
export interface ParticipantResult {
  readonly participant: ParticipantRecord;
  readonly view: SessionView;
}

/** JoinSession's result: also a fresh room credential when the caller is ADMITTED. */
export interface JoinResult extends ParticipantResult {
  readonly credential: (RoomCredential & { readonly provider: string; readonly roomId: string }) | undefined;
}

/** The session's etag (AIP-154): its version, which every change moves. */
export function sessionEtag(session: { version: number }): string {
  return `"${session.version}"`;
}

const UPDATABLE = ['scheduled_start_at', 'scheduled_end_at', 'waiting_room_opens_at', 'thread_id'] as const;
const SCHEDULE_ONLY: ReadonlySet<string> = new Set(['scheduled_start_at', 'waiting_room_opens_at']);

/**
 * The virtual session aggregate's use cases (server_authoritative). Every command runs in one transaction
 * that locks the session row first, applies whatever the clock has made due, checks access against the
 * locked state, then changes the session through a SessionChange and writes the rows, the events, the
 * notifications, the timer job and the feed events together. Racing commands serialize on the row lock,
 * so each decides on what the previous one committed: two admits record one change; an admit and a deny
 * resolve to whichever commits first.
 */
export class SessionService {
  constructor(
    private readonly clock: Clock,
    private readonly rooms: RoomProvider,
    /** Told when a call to the realtime provider after commit fails (the change itself stands). */
    private readonly onRoomError: (err: unknown, what: string) => void,
  ) {}

  async create(actor: Actor, db: Db, input: CreateSessionInput): Promise<SessionView> {
    if (!mayCreateSession(actor)) throw new PermissionDenied('ROLE_NOT_ALLOWED', 'not allowed to create sessions');
    const now = this.clock.now();
    const v = new Violations();
    const threadId = input.threadId === '' ? null : checkUuid(v, 'thread_id', input.threadId);
    checkSchedule(v, input.scheduledStartAt, input.scheduledEndAt, input.waitingRoomOpensAt, now);
    checkRequestId(v, 'request_id', input.requestId);
    const specs = [...input.participants];
    const seen = new Set<string>();
    specs.forEach((spec, i) => {
      checkUserId(v, `participants[${i}].user_id`, spec.userId);
      if (spec.role === undefined) v.add(`participants[${i}].role`, 'is required');
      if (seen.has(spec.userId)) v.add(`participants[${i}].user_id`, 'is listed twice');
      seen.add(spec.userId);
    });
    if (actor.roles.has('provider') && !seen.has(actor.userId))
      specs.unshift({ userId: actor.userId, role: 'provider' });
    if (specs.length > SESSION_LIMITS.maxParticipants) {
      v.add('participants', `a session has at most ${SESSION_LIMITS.maxParticipants} participants`);
    }
    if (!specs.some((s) => s.role === 'provider')) v.add('participants', 'must include a PROVIDER participant');
    v.throwIfAny();
    const repo = new SessionRepository(db.em);
    if (input.requestId !== '') {
      const existing = await repo.findByCreateRequest(actor.tenantId, actor.userId, input.requestId);
      if (existing) return existing;
    }
    if (threadId) await this.#requireThread(actor, db.em, threadId);
    const settings = await repo.settings(actor.tenantId);
    const start = input.scheduledStartAt!;
    const opens = input.waitingRoomOpensAt ?? new Date(start.getTime() - settings.leadMs);
    const sessionId = newId();
    const roomId = await this.rooms.createRoom(actor.tenantId, sessionId, now);
    const open = opens.getTime() <= now.getTime();
    const view: SessionView = {
      session: {
        tenantId: actor.tenantId,
        sessionId,
        threadId,
        state: open ? 'open' : 'scheduled',
        stateReason: open ? 'CREATED_OPEN' : 'CREATED',
        scheduledStartAt: start,
        scheduledEndAt: input.scheduledEndAt!,
        waitingRoomOpensAt: opens,
        expiresAt: expiry(start, now, settings.noShowMs),
        latestEndAt: null,
        providersGoneAt: null,
        nextTimerAt: null,
        provider: this.rooms.name,
        providerRoomId: roomId,
        createdBy: actor.userId,
        createRequestId: input.requestId === '' ? null : input.requestId,
        createdAt: now,
        updatedAt: now,
        openedAt: open ? now : null,
        startedAt: null,
        endedAt: null,
        version: 1,
      },
      participants: [],
    };
    const c = new SessionChange(view, settings, actor, now);
    c.record('created', { fromState: null, reasonCode: view.session.stateReason });
    for (const spec of specs) c.invite(spec.userId, spec.role!, actor.userId);
    const created = await db.em
      .transactional(async (em) => {
        await boundByDeadline(em, db);
        return this.#write(em, c, { isNew: true });
      })
      .catch((err: unknown) => {
        void this.#closeOrphanRoom(view);
        throw err;
      });
    if (created) return view;
    // The room this call opened belongs to no session.
    await this.#closeOrphanRoom(view);
    // A concurrent retry with the same request id committed first: answer with its session.
    const winner = await new SessionRepository(db.em.fork()).findByCreateRequest(
      actor.tenantId,
      actor.userId,
      input.requestId,
    );
    if (!winner) throw new Error('create request id conflict without a stored session');
    return winner;
  }

  async get(actor: Actor, db: Db, sessionId: string): Promise<SessionView> {
    const id = validId(sessionId);
    const view = await new SessionRepository(db.em).load(actor.tenantId, id);
    if (!view || !sessionAccess(actor, view.participants).see) throw new SessionNotFound(id);
    return view;
  }

  /** A session and where its feed stands, read in one snapshot (WatchSession's first event). */
  async snapshot(actor: Actor, db: Db, sessionId: string): Promise<{ view: SessionView; head: number }> {
    const id = validId(sessionId);
    return db.em.transactional(
      async (em) => {
        const view = await new SessionRepository(em).load(actor.tenantId, id);
        if (!view || !sessionAccess(actor, view.participants).see) throw new SessionNotFound(id);
        const { head } = await new FeedRepository(em).head(actor.tenantId, streams.session(id));
        return { view, head };
      },
      { isolationLevel: IsolationLevel.REPEATABLE_READ, readOnly: true },
    );
  }

  async list(
    actor: Actor,
    db: Db,
    input: ListSessionsInput,
  ): Promise<{ views: SessionView[]; nextPageToken: string; asOf: Date }> {
    const size = pageSize(input.pageSize, 50, 200);
    const v = new Violations();
    const threadId = input.threadId === '' ? undefined : checkUuid(v, 'thread_id', input.threadId);
    if (input.participantUserId !== '') checkUserId(v, 'participant_user_id', input.participantUserId);
    v.throwIfAny();
    const tenantWide = governsTenant(actor);
    if (input.participantUserId !== '' && input.participantUserId !== actor.userId && !tenantWide) {
      throw new PermissionDenied('ROLE_NOT_ALLOWED', 'only staff and service callers list sessions of other users');
    }
    const filter = {
      state: input.state ?? null,
      thread: threadId ?? null,
      participant: input.participantUserId || null,
      from: input.scheduledStartFrom?.toISOString() ?? null,
      until: input.scheduledStartUntil?.toISOString() ?? null,
    };
    const after = input.pageToken === '' ? undefined : decodePositionToken('sessions', input.pageToken, filter);
    const asOf = this.clock.now();
    const { views, more } = await new SessionRepository(db.em).list(
      actor.tenantId,
      {
        state: input.state,
        threadId,
        participantUserId: input.participantUserId || undefined,
        memberOf: tenantWide ? undefined : actor.userId,
        startFrom: input.scheduledStartFrom,
        startUntil: input.scheduledStartUntil,
      },
      after,
      size,
    );
    const last = views.at(-1)?.session;
    const nextPageToken =
      more && last ? encodePositionToken('sessions', filter, { at: last.scheduledStartAt, id: last.sessionId }) : '';
    return { views, nextPageToken, asOf };
  }

  async update(actor: Actor, db: Db, sessionId: string, input: UpdateSessionInput): Promise<SessionView> {
    const v = new Violations();
    if (input.paths.length === 0) v.add('update_mask', 'must name at least one field');
    for (const path of input.paths) {
      if (!(UPDATABLE as readonly string[]).includes(path)) v.add('update_mask', `cannot update ${path}`);
    }
    if (input.etag === '') v.add('etag', 'is required');
    const paths = new Set(input.paths);
    if (paths.has('scheduled_start_at') && !input.scheduledStartAt) v.add('session.scheduled_start_at', 'is required');
    if (paths.has('scheduled_end_at') && !input.scheduledEndAt) v.add('session.scheduled_end_at', 'is required');
    const threadId =
      !paths.has('thread_id') || input.threadId === '' ? null : checkUuid(v, 'session.thread_id', input.threadId);
    const { view } = await this.#mutate(actor, db, sessionId, v, async (c, access, em) => {
      const s = c.session;
      if (!access.governs) throw new SessionRoleNotAllowed(s.sessionId, 'update');
      if (input.etag !== sessionEtag(s))
        throw new EtagMismatch(`session ${s.sessionId}`, { session_id: s.sessionId }, sessionEtag(s));
      if (CLOSED_STATES.has(s.state)) throw sessionClosed(s.sessionId, s.state);
      if (s.state !== 'scheduled' && [...paths].some((p) => SCHEDULE_ONLY.has(p))) {
        throw new SessionPreconditionFailed(
          'SESSION_NOT_SCHEDULED',
          `session ${s.sessionId} has opened: only scheduled_end_at and thread_id may change`,
          { session_id: s.sessionId, state: `SESSION_STATE_${s.state.toUpperCase()}` },
        );
      }
      const start = paths.has('scheduled_start_at') ? input.scheduledStartAt! : s.scheduledStartAt;
      const end = paths.has('scheduled_end_at') ? input.scheduledEndAt! : s.scheduledEndAt;
      let opens = s.waitingRoomOpensAt;
      if (paths.has('waiting_room_opens_at')) {
        opens = input.waitingRoomOpensAt ?? new Date(start.getTime() - c.settings.leadMs);
      } else if (paths.has('scheduled_start_at')) {
        // A rescheduled visit keeps its waiting room's lead.
        opens = new Date(opens.getTime() + start.getTime() - s.scheduledStartAt.getTime());
      }
      const check = new Violations();
      checkSchedule(check, start, end, opens, c.now, { prefix: 'session.', endChanged: paths.has('scheduled_end_at') });
      check.throwIfAny();
      const newThread = paths.has('thread_id') ? threadId : s.threadId;
      if (newThread && newThread !== s.threadId) await this.#requireThread(actor, em, newThread);
      const same =
        start.getTime() === s.scheduledStartAt.getTime() &&
        end.getTime() === s.scheduledEndAt.getTime() &&
        opens.getTime() === s.waitingRoomOpensAt.getTime() &&
        newThread === s.threadId;
      if (same) return;
      s.scheduledStartAt = start;
      s.scheduledEndAt = end;
      s.waitingRoomOpensAt = opens;
      s.threadId = newThread;
      // The no-show window moves with the start (a later edit of the end or the link leaves it alone).
      if (s.expiresAt && paths.has('scheduled_start_at')) s.expiresAt = expiry(start, c.now, c.settings.noShowMs);
      // Likewise the latest end moves only with the scheduled end.
      if (s.state === 'in_progress' && s.startedAt && paths.has('scheduled_end_at')) {
        const byDuration = s.startedAt.getTime() + c.settings.maxDurationMs;
        const byEnd = Math.max(end.getTime(), c.now.getTime()) + c.settings.overrunMs;
        s.latestEndAt = new Date(Math.min(byDuration, byEnd));
      }
      c.touch();
      c.record('rescheduled', { reasonCode: 'RESCHEDULED' });
      // Rescheduled so that the waiting room is open already.
      if (s.state === 'scheduled' && opens.getTime() <= c.now.getTime()) {
        c.move('waiting_room_opens', 'WAITING_ROOM_OPENED');
      }
    });
    return view;
  }

  async requestTransition(
    actor: Actor,
    db: Db,
    sessionId: string,
    suggestion: Suggestion | undefined,
    reason: string,
  ): Promise<TransitionResult> {
    const v = new Violations();
    if (suggestion === undefined) v.add('transition', 'is required');
    checkText(v, 'reason', reason, 0, SESSION_LIMITS.reasonMaxChars);
    const { view, result } = await this.#mutate(actor, db, sessionId, v, (c, access) => {
      const decision = decideSuggestion(c.session.state, suggestion!, access.governs);
      if (!decision.accepted) {
        c.record('transition_rejected', { transition: suggestion!, reasonCode: decision.reason, reason });
        const me = c.participant(actor.userId);
        if (decision.callerLeaves && me) this.#leave(c, me, 'CALLER_LEFT_ONLY', reason);
        return { accepted: false, rejectionReason: decision.reason };
      }
      if (decision.changed) {
        const verb = { open: 'OPENED', end: 'ENDED', cancel: 'CANCELLED' }[suggestion!];
        c.move(suggestion!, `${verb}_BY_${governingRole(actor, access.providerOfSession)}`, { suggestion, reason });
      }
      return { accepted: true, rejectionReason: '' };
    });
    return { ...result, view, participant: view.participants.find((p) => p.userId === actor.userId) };
  }

  async invite(actor: Actor, db: Db, sessionId: string, spec: SessionParticipantSpec): Promise<ParticipantResult> {
    const v = new Violations();
    checkUserId(v, 'participant.user_id', spec.userId);
    if (spec.role === undefined) v.add('participant.role', 'is required');
    return this.#participantCommand(actor, db, sessionId, v, spec.userId, (c, access) => {
      const s = c.session;
      if (!access.governs) throw new SessionRoleNotAllowed(s.sessionId, 'invite to');
      if (CLOSED_STATES.has(s.state)) throw sessionClosed(s.sessionId, s.state);
      const p = c.participant(spec.userId);
      if (p) {
        if (p.role !== spec.role) {
          throw participantPrecondition(
            'PARTICIPANT_ROLE_CONFLICT',
            s.sessionId,
            p.userId,
            p.admitState,
            `takes part as ${p.role}`,
          );
        }
        if (p.admitState === 'denied' || p.admitState === 'removed') {
          c.setAdmit(p, 'invited', { kind: 'invited', reasonCode: 'INVITED', by: actor.userId });
          p.invitedBy = actor.userId;
          p.invitedAt = c.now;
        }
        return;
      }
      if (c.view.participants.length >= SESSION_LIMITS.maxParticipants) {
        throw new SessionPreconditionFailed(
          'SESSION_FULL',
          `a session has at most ${SESSION_LIMITS.maxParticipants} participants`,
          { session_id: s.sessionId, max_participants: String(SESSION_LIMITS.maxParticipants) },
        );
      }
      c.invite(spec.userId, spec.role!, actor.userId);
    });
  }

  async join(actor: Actor, db: Db, sessionId: string): Promise<JoinResult> {
    const result = await this.#participantCommand(actor, db, sessionId, new Violations(), actor.userId, (c, access) => {
      const s = c.session;
      const me = c.participant(actor.userId);
      if (!me) throw new NotAParticipant(s.sessionId);
      if (CLOSED_STATES.has(s.state)) throw sessionClosed(s.sessionId, s.state);
      if (me.admitState === 'denied' || me.admitState === 'removed') {
        throw participantPrecondition(
          me.admitState === 'denied' ? 'PARTICIPANT_DENIED' : 'PARTICIPANT_REMOVED',
          s.sessionId,
          me.userId,
          me.admitState,
          `was ${me.admitState}; needs a new invite`,
        );
      }
      if (access.providerOfSession) {
        if (s.state === 'scheduled') c.move('provider_joined', 'PROVIDER_JOINED');
        if (me.admitState !== 'admitted') {
          c.setAdmit(me, 'admitted', { kind: 'joined', reasonCode: 'JOINED_ADMITTED', by: actor.userId });
          me.joinedAt = c.now;
          me.admittedAt = c.now;
          me.admittedBy = actor.userId;
        }
      } else if (s.state === 'scheduled') {
        throw new SessionPreconditionFailed(
          'WAITING_ROOM_NOT_OPEN',
          `the waiting room of session ${s.sessionId} is not open yet`,
          {
            session_id: s.sessionId,
            waiting_room_opens_at: s.waitingRoomOpensAt.toISOString(),
          },
        );
      } else if (me.admitState === 'left' && me.rejoinExpiresAt && me.rejoinExpiresAt.getTime() > c.now.getTime()) {
        c.setAdmit(me, 'admitted', { kind: 'joined', reasonCode: 'REJOINED_WITHIN_GRACE', by: '' });
        me.joinedAt = c.now;
        me.admittedAt = c.now;
      } else if (me.admitState !== 'waiting' && me.admitState !== 'admitted') {
        const event = c.setAdmit(me, 'waiting', { kind: 'joined', reasonCode: 'JOINED_WAITING', by: actor.userId });
        me.joinedAt = c.now;
        const providers = c.view.participants.filter(
          (p) =>
            p.role === 'provider' && p.userId !== me.userId && p.admitState !== 'denied' && p.admitState !== 'removed',
        );
        if (providers.length > 0) {
          c.notices.push({
            kind: 'patient_waiting',
            eventId: event.eventId,
            recipients: providers.map((p) => p.userId),
            urgent: c.now.getTime() >= s.scheduledStartAt.getTime(),
          });
        }
      }
      c.settle();
    });
    // Of the committed session version: a removal, leave or closing commits a later one and revokes it.
    const s = result.view.session;
    const credential =
      result.participant.admitState === 'admitted'
        ? {
            ...this.rooms.credential(s.tenantId, s.providerRoomId, actor.userId, s.version, this.clock.now()),
            provider: s.provider,
            roomId: s.providerRoomId,
          }
        : undefined;
    return { ...result, credential };
  }

  leave(actor: Actor, db: Db, sessionId: string, reason: string): Promise<ParticipantResult> {
    const v = new Violations();
    checkText(v, 'reason', reason, 0, SESSION_LIMITS.reasonMaxChars);
    return this.#participantCommand(actor, db, sessionId, v, actor.userId, (c) => {
      const me = c.participant(actor.userId);
      if (!me) throw new NotAParticipant(c.session.sessionId);
      this.#leave(c, me, 'LEFT', reason);
    });
  }

  admit(actor: Actor, db: Db, sessionId: string, userId: string, reason: string): Promise<ParticipantResult> {
    return this.#providerCommand(actor, db, sessionId, userId, reason, 'admit', (c, p) => {
      if (CLOSED_STATES.has(c.session.state)) throw sessionClosed(c.session.sessionId, c.session.state);
      if (p.admitState === 'admitted') return;
      if (p.admitState !== 'waiting') throw notWaiting(c, p);
      const event = c.setAdmit(p, 'admitted', { kind: 'admitted', reasonCode: 'ADMITTED', reason, by: actor.userId });
      p.admittedAt = c.now;
      p.admittedBy = actor.userId;
      c.notices.push({ kind: 'participant_admitted', eventId: event.eventId, recipients: [p.userId], urgent: false });
    });
  }

  deny(actor: Actor, db: Db, sessionId: string, userId: string, reason: string): Promise<ParticipantResult> {
    return this.#providerCommand(actor, db, sessionId, userId, reason, 'deny', (c, p) => {
      if (p.admitState === 'denied') return;
      if (p.admitState !== 'waiting') throw notWaiting(c, p);
      c.setAdmit(p, 'denied', { kind: 'denied', reasonCode: 'DENIED', reason, by: actor.userId });
    });
  }

  remove(actor: Actor, db: Db, sessionId: string, userId: string, reason: string): Promise<ParticipantResult> {
    return this.#providerCommand(actor, db, sessionId, userId, reason, 'remove', (c, p) => {
      if (CLOSED_STATES.has(c.session.state)) throw sessionClosed(c.session.sessionId, c.session.state);
      if (p.admitState === 'removed') return;
      c.setAdmit(p, 'removed', { kind: 'removed', reasonCode: 'REMOVED', reason, by: actor.userId });
    });
  }

  async events(
    actor: Actor,
    db: Db,
    input: { sessionId: string; subjectUserId: string; pageSize: number; pageToken: string },
  ): Promise<{ events: SessionEventRecord[]; nextPageToken: string }> {
    const size = pageSize(input.pageSize, 50, 200);
    const v = new Violations();
    const id = checkUuid(v, 'session_id', input.sessionId);
    if (input.subjectUserId !== '') checkUserId(v, 'subject_user_id', input.subjectUserId);
    v.throwIfAny();
    const filter = { session: id, subject: input.subjectUserId || null };
    const after = input.pageToken === '' ? undefined : decodePositionToken('session-events', input.pageToken, filter);
    const repo = new SessionRepository(db.em);
    const view = await repo.load(actor.tenantId, id);
    const access = view && sessionAccess(actor, view.participants);
    if (!view || !access?.see) throw new SessionNotFound(id);
    if (!access.governs) throw new SessionRoleNotAllowed(id, 'read the history of');
    const { events, more } = await repo.events(actor.tenantId, id, input.subjectUserId || undefined, after, size);
    const last = events.at(-1);
    const nextPageToken =
      more && last ? encodePositionToken('session-events', filter, { at: last.occurredAt, id: last.eventId }) : '';
    return { events, nextPageToken };
  }

  /**
   * The server's clock for one session: applies everything due now (see SessionChange.applyDue), once,
   * on the locked row. Returns whether anything changed. With `at` (the timer job's due time), throws
   * TimerNotDue when that is still the session's next timer but this replica's clock has not reached it,
   * so the job queue tries again shortly.
   */
  async tick(db: Db, tenantId: string, sessionId: string, at?: Date): Promise<boolean> {
    const c = await db.em.transactional(async (em) => {
      const loaded = await new SessionRepository(em).loadForChange(tenantId, sessionId);
      if (!loaded) return undefined;
      const { view } = loaded;
      const c = new SessionChange(view, loaded.settings, undefined, this.clock.now());
      c.applyDue();
      c.settle();
      if (!c.changed) {
        const next = view.session.nextTimerAt;
        if (at && next && next.getTime() === at.getTime() && next.getTime() > c.now.getTime()) {
          throw new TimerNotDue(sessionId, next);
        }
        return undefined;
      }
      await this.#write(em, c, { isNew: false });
      return c;
    });
    if (c) await this.#afterCommit(c);
    return c !== undefined;
  }

  /** Ticks every session (of one tenant, or all) whose next timer has come; returns how many changed. */
  async runDue(db: Db, tenantId?: string): Promise<number> {
    let changed = 0;
    const seen = new Set<string>();
    for (;;) {
      const due = (await new SessionRepository(db.em.fork()).due(this.clock.now(), 100, tenantId)).filter(
        (d) => !seen.has(d.sessionId),
      );
      if (due.length === 0) return changed;
      for (const d of due) {
        seen.add(d.sessionId);
        if (await this.tick({ ...db, em: db.em.fork() }, d.tenantId, d.sessionId)) changed++;
      }
    }
  }

  /** A participant leaves (WAITING or ADMITTED → LEFT, with the rejoin grace when admitted); else nothing. */
  #leave(c: SessionChange, me: ParticipantRecord, reasonCode: string, reason: string): void {
    if (me.admitState !== 'waiting' && me.admitState !== 'admitted') return;
    const wasAdmitted = me.admitState === 'admitted';
    c.setAdmit(me, 'left', { kind: 'left', reasonCode, reason, by: me.userId });
    if (wasAdmitted && c.settings.rejoinAllowed && !CLOSED_STATES.has(c.session.state)) {
      me.rejoinExpiresAt = new Date(c.now.getTime() + c.settings.rejoinGraceMs);
    }
    c.settle();
  }

  /** Admit, deny, remove: providers of the session only, on a participant who exists. */
  #providerCommand(
    actor: Actor,
    db: Db,
    sessionId: string,
    userId: string,
    reason: string,
    action: 'admit' | 'deny' | 'remove',
    work: (c: SessionChange, p: ParticipantRecord) => void,
  ): Promise<ParticipantResult> {
    const v = new Violations();
    checkUserId(v, 'user_id', userId);
    checkText(v, 'reason', reason, 0, SESSION_LIMITS.reasonMaxChars);
    return this.#participantCommand(actor, db, sessionId, v, userId, (c, access) => {
      const s = c.session;
      if (!access.providerOfSession) throw new SessionRoleNotAllowed(s.sessionId, action);
      if (action === 'remove' && userId === actor.userId) {
        throw new SessionPreconditionFailed('CANNOT_REMOVE_SELF', 'a provider cannot remove itself; leave instead', {
          session_id: s.sessionId,
        });
      }
      if (action !== 'deny' && CLOSED_STATES.has(s.state)) throw sessionClosed(s.sessionId, s.state);
      const p = c.participant(userId);
      if (!p) throw new SessionParticipantNotFound(s.sessionId, userId);
      work(c, p);
      c.settle();
    });
  }

  /** A command about one participant; answers with that participant and the session after it. */
  async #participantCommand(
    actor: Actor,
    db: Db,
    sessionId: string,
    v: Violations,
    userId: string,
    work: (c: SessionChange, access: SessionAccess) => void,
  ): Promise<ParticipantResult> {
    const { view } = await this.#mutate(actor, db, sessionId, v, (c, access) => work(c, access));
    return { view, participant: view.participants.find((p) => p.userId === userId)! };
  }

  /**
   * Runs one command: validate, lock the session row, apply what the clock made due, check visibility,
   * run `work` on a SessionChange, write it all, commit; then tell the realtime provider about room
   * access that went.
   */
  async #mutate<R>(
    actor: Actor,
    db: Db,
    sessionId: string,
    v: Violations,
    work: (c: SessionChange, access: SessionAccess, em: EntityManager) => R | Promise<R>,
  ): Promise<{ view: SessionView; result: R }> {
    const id = checkUuid(v, 'session_id', sessionId);
    v.throwIfAny();
    const { c, result, due, refused } = await db.em.transactional(async (em) => {
      await boundByDeadline(em, db);
      const loaded = await new SessionRepository(em).loadForChange(actor.tenantId, id);
      const access = loaded && sessionAccess(actor, loaded.view.participants);
      if (!loaded || !access?.see) throw new SessionNotFound(id);
      const c = new SessionChange(loaded.view, loaded.settings, actor, this.clock.now());
      // What the clock made due first (a late timer job must not let a command act on a stale state).
      const due = new SessionChange(c.view, c.settings, undefined, c.now);
      due.applyDue();
      due.settle();
      if (due.changed) await this.#write(em, due, { isNew: false });
      try {
        const result = await work(c, access, em);
        await this.#write(em, c, { isNew: false });
        return { c, result, due, refused: undefined };
      } catch (err) {
        // A refusal (often caused by what was due: the session expired, the wait timed out) keeps what
        // the clock did: commit that, then answer with the refusal. `work` writes nothing itself.
        if (due.changed && err instanceof DomainError) return { c, result: undefined, due, refused: err };
        throw err;
      }
    });
    await this.#afterCommit(due);
    if (refused) throw refused;
    await this.#afterCommit(c);
    return { view: c.view, result: result as R };
  }

  /**
   * Writes a change in the caller's transaction: the session row (version and updated_at move), the
   * participants it touched, its events, its notifications, the next timer job when the due time moved,
   * and last the feed events (their stream heads stay locked until commit). An unchanged session writes
   * only its events (a rejected suggestion). Returns false when a new session's request id was taken.
   */
  async #write(em: EntityManager, c: SessionChange, opts: { isNew: boolean }): Promise<boolean> {
    const repo = new SessionRepository(em);
    const s = c.session;
    if (!opts.isNew && !c.changed) {
      await repo.record(s.tenantId, c.events);
      return true;
    }
    const previousTimer = opts.isNew ? null : s.nextTimerAt;
    s.nextTimerAt = c.nextTimerAt();
    if (opts.isNew) {
      if (!(await repo.insert(c.view))) return false;
    } else {
      s.version += 1;
      s.updatedAt = c.now;
      await repo.update(
        s,
        c.view.participants.filter((p) => c.touched.has(p.userId)),
      );
    }
    await repo.record(s.tenantId, c.events);
    for (const notice of c.notices) {
      await new NotificationRepository(em).create({
        tenantId: s.tenantId,
        kind: notice.kind,
        requestedBy: '',
        eventId: notice.eventId,
        recipients: notice.recipients,
        threadId: null,
        messageId: null,
        sessionId: s.sessionId,
        templateKey: '',
        urgent: notice.urgent,
        plan: undefined,
        now: c.now,
      });
    }
    if (s.nextTimerAt && s.nextTimerAt.getTime() !== previousTimer?.getTime()) {
      await repo.enqueueTimer(s.tenantId, s.sessionId, s.nextTimerAt);
    }
    await new FeedRepository(em).append(s.tenantId, feedEvents(c, opts.isNew), c.now);
    return true;
  }

  /** Room access that went: the room closes with the session; otherwise each leaver's access is revoked. */
  async #afterCommit(c: SessionChange): Promise<void> {
    const s = c.session;
    try {
      if (c.closed) await this.rooms.closeRoom(s.tenantId, s.providerRoomId, c.now);
      else if (c.revoked.size > 0) {
        await this.rooms.revoke(s.tenantId, s.providerRoomId, [...c.revoked], s.version);
      }
    } catch (err) {
      this.onRoomError(err, c.closed ? 'close room' : 'revoke room access');
    }
  }

  /** Closes the room of a session that was not stored (a lost create race, a failed insert). */
  async #closeOrphanRoom(view: SessionView): Promise<void> {
    const s = view.session;
    try {
      await this.rooms.closeRoom(s.tenantId, s.providerRoomId, this.clock.now());
    } catch (err) {
      this.onRoomError(err, 'close an unused room');
    }
  }

  async #requireThread(actor: Actor, em: EntityManager, threadId: string): Promise<void> {
    const access = await new ThreadRepository(em).access(actor.tenantId, threadId, actor.userId);
    if (!access || !memberPermissions(actor, access.member).see) throw new ThreadNotFound(threadId);
  }
}

/** Thrown by a timer job that came before its time on this replica's clock: the queue retries it. */
export class TimerNotDue extends Error {
  constructor(sessionId: string, at: Date) {
    super(`session ${sessionId}: timer due at ${at.toISOString()}`);
  }
}

/** A change's feed events: each touched participant, then the session (a new session: the session only). */
function feedEvents(c: SessionChange, isNew: boolean): NewFeedEvent[] {
  const id = c.session.sessionId;
  const stream = streams.session(id);
  const participants = isNew ? [] : c.view.participants.filter((p) => c.touched.has(p.userId));
  return [
    ...participants.map((p): NewFeedEvent => ({
      stream,
      kind: 'participant_changed',
      aggregate_id: id,
      user_id: p.userId,
      snapshot: { ...p },
    })),
    { stream, kind: 'session_changed', aggregate_id: id, snapshot: { ...c.view } },
  ];
}

function validId(sessionId: string): string {
  const v = new Violations();
  const id = checkUuid(v, 'session_id', sessionId);
  v.throwIfAny();
  return id;
}

function notWaiting(c: SessionChange, p: ParticipantRecord) {
  return participantPrecondition(
    'PARTICIPANT_NOT_WAITING',
    c.session.sessionId,
    p.userId,
    p.admitState,
    `is ${p.admitState}, not waiting`,
  );
}

/** When a session that has not started expires: the no-show window after its start (or after now, if later). */
function expiry(start: Date, now: Date, noShowMs: number): Date {
  return new Date(Math.max(start.getTime(), now.getTime()) + noShowMs);
}

/**
 * Validates a schedule: both ends set, end after start and at most 8 hours after it, opening not after the
 * start, and a new end in the future (an untouched end of a running visit may have passed).
 */
function checkSchedule(
  v: Violations,
  start: Date | undefined,
  end: Date | undefined,
  opens: Date | undefined,
  now: Date,
  opts: { prefix?: string; endChanged?: boolean } = {},
): void {
  const prefix = opts.prefix ?? '';
  if (!start) v.add(`${prefix}scheduled_start_at`, 'is required');
  if (!end) v.add(`${prefix}scheduled_end_at`, 'is required');
  if (start && end) {
    if (end.getTime() <= start.getTime()) v.add(`${prefix}scheduled_end_at`, 'must be after scheduled_start_at');
    else if (end.getTime() - start.getTime() > SESSION_LIMITS.maxScheduledMs) {
      v.add(`${prefix}scheduled_end_at`, 'must be at most 8 hours after scheduled_start_at');
    }
  }
  if (end && (opts.endChanged ?? true) && end.getTime() <= now.getTime()) {
    v.add(`${prefix}scheduled_end_at`, 'must be in the future');
  }
  if (start && opens && opens.getTime() > start.getTime()) {
    v.add(`${prefix}waiting_room_opens_at`, 'must not be after scheduled_start_at');
  }
}
