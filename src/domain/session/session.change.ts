import type { Actor } from '../actor.js';
import { hasRole } from '../actor.js';
import { newId } from '../ids.js';
import type { NotificationKind } from '../notification/notification.policy.js';
import {
  type AdmitState,
  admitAllowed,
  CLOSED_STATES,
  type SessionSettings,
  type Suggestion,
  transition,
  type Trigger,
} from './session.policy.js';
import type {
  ParticipantRecord,
  SessionEventKind,
  SessionEventRecord,
  SessionRecord,
  SessionView,
} from './session.repository.js';

/** A notification the change causes, created in its transaction. */
export interface SessionNotice {
  readonly kind: NotificationKind;
  readonly eventId: string;
  readonly recipients: readonly string[];
  readonly urgent: boolean;
}

/** A participant-level change: who, to which admit_state, recorded as which event. */
export interface AdmitMove {
  readonly kind: SessionEventKind;
  readonly reasonCode: string;
  readonly reason?: string;
  /** Who made it: the caller, or '' when the server did (expiry, closing, rejoin within grace). */
  readonly by: string;
}

/** True for a participant with role PROVIDER who is in the room. */
function admittedProvider(p: ParticipantRecord): boolean {
  return p.role === 'provider' && p.admitState === 'admitted';
}

/**
 * One change to a session, made on the locked row: every state and admit_state move goes through here,
 * so each is checked against the policy's tables, timestamped and recorded as an event, and its
 * consequences follow (closing expires the waiting room; a provider and another participant in the room
 * start the visit; no provider left starts the grace period). The service writes the result in the same
 * transaction: the rows, the events, the notifications, the feed, the next timer.
 */
export class SessionChange {
  readonly events: SessionEventRecord[] = [];
  readonly notices: SessionNotice[] = [];
  /** Participants whose entry changed, by user id. */
  readonly touched = new Set<string>();
  /** Users whose room access goes (they were in the room and are not any more). */
  readonly revoked = new Set<string>();
  /** The session closed: the room closes after commit. */
  closed = false;
  #changed = false;

  constructor(
    readonly view: SessionView,
    readonly settings: SessionSettings,
    /** The caller, or undefined when the server acts on its own (its clock). */
    readonly actor: Actor | undefined,
    readonly now: Date,
  ) {}

  get session(): SessionRecord {
    return this.view.session;
  }

  /** Something changed (the session's version moves, and the change is published). */
  get changed(): boolean {
    return this.#changed;
  }

  /** Marks the session changed without an event of its own (e.g. a field another event explains). */
  touch(): void {
    this.#changed = true;
  }

  participant(userId: string): ParticipantRecord | undefined {
    return this.view.participants.find((p) => p.userId === userId);
  }

  /** Records an event with the session's current state as both from and to unless given. */
  record(kind: SessionEventKind, fields: Partial<SessionEventRecord> & { reasonCode: string }): SessionEventRecord {
    const event: SessionEventRecord = {
      sessionId: this.session.sessionId,
      eventId: newId(),
      kind,
      fromState: this.session.state,
      toState: this.session.state,
      transition: null,
      subjectUserId: '',
      fromAdmitState: null,
      toAdmitState: null,
      actorUserId: this.actor?.userId ?? '',
      reason: '',
      occurredAt: this.now,
      ...fields,
    };
    this.events.push(event);
    return event;
  }

  /**
   * Moves the session by `trigger` along the transition table (a move the table does not have is a bug),
   * with its consequences: timestamps, deadlines, and on closing the waiting room expired, the room
   * emptied and closed.
   */
  move(trigger: Trigger, reasonCode: string, opts: { suggestion?: Suggestion; reason?: string } = {}): void {
    const s = this.session;
    const from = s.state;
    const to = transition(from, trigger);
    if (!to) throw new Error(`session ${s.sessionId}: no transition ${from} --${trigger}→`);
    s.state = to;
    s.stateReason = reasonCode;
    this.#changed = true;
    this.record('transitioned', {
      fromState: from,
      toState: to,
      transition: opts.suggestion ?? null,
      reasonCode,
      reason: opts.reason ?? '',
    });
    if (to === 'open') s.openedAt = this.now;
    if (to === 'in_progress') {
      s.startedAt = this.now;
      s.expiresAt = null;
      const byDuration = this.now.getTime() + this.settings.maxDurationMs;
      const byEnd = Math.max(s.scheduledEndAt.getTime(), this.now.getTime()) + this.settings.overrunMs;
      s.latestEndAt = new Date(Math.min(byDuration, byEnd));
    }
    if (CLOSED_STATES.has(to)) {
      s.endedAt = this.now;
      s.expiresAt = null;
      s.latestEndAt = null;
      s.providersGoneAt = null;
      this.closed = true;
      for (const p of this.view.participants) {
        if (p.admitState === 'waiting') this.expireWaiting(p, 'SESSION_CLOSED');
        else if (p.admitState === 'admitted') {
          this.setAdmit(p, 'left', { kind: 'left', reasonCode: 'SESSION_CLOSED', by: '' });
        }
      }
    }
  }

  /**
   * Moves a participant's admit_state along the admit table (a move the table does not have is a bug) and
   * records it.
   */
  setAdmit(p: ParticipantRecord, to: AdmitState, move: AdmitMove): SessionEventRecord {
    const from = p.admitState;
    if (!admitAllowed(from, to)) throw new Error(`participant ${p.userId}: admit_state ${from} → ${to} not allowed`);
    p.admitState = to;
    p.admitStateChangedAt = this.now;
    p.admitStateChangedBy = move.by;
    p.waitingExpiresAt = to === 'waiting' ? new Date(this.now.getTime() + this.settings.waitingMs) : null;
    p.rejoinExpiresAt = null;
    if (to === 'left') p.leftAt = this.now;
    if (from === 'admitted') this.revoked.add(p.userId);
    if (to === 'admitted') this.revoked.delete(p.userId);
    this.touched.add(p.userId);
    this.#changed = true;
    return this.record(move.kind, {
      subjectUserId: p.userId,
      fromAdmitState: from,
      toAdmitState: to,
      actorUserId: move.by,
      reasonCode: move.reasonCode,
      reason: move.reason ?? '',
    });
  }

  /** Adds a participant (INVITED, listed after everyone invited before) and records the invite. */
  invite(userId: string, role: ParticipantRecord['role'], by: string): void {
    this.view.participants.push({
      userId,
      role,
      ordinal: Math.max(-1, ...this.view.participants.map((p) => p.ordinal)) + 1,
      admitState: 'invited',
      admitStateChangedAt: this.now,
      admitStateChangedBy: by,
      invitedBy: by,
      invitedAt: this.now,
      joinedAt: null,
      admittedAt: null,
      admittedBy: '',
      leftAt: null,
      waitingExpiresAt: null,
      rejoinExpiresAt: null,
    });
    this.touched.add(userId);
    this.#changed = true;
    this.record('invited', { subjectUserId: userId, toAdmitState: 'invited', actorUserId: by, reasonCode: 'INVITED' });
  }

  /** A waiting entry expires (nobody admitted it in time, or the session closed); the person is told. */
  expireWaiting(p: ParticipantRecord, reasonCode: string): void {
    const event = this.setAdmit(p, 'expired', { kind: 'expired', reasonCode, by: '' });
    this.notices.push({ kind: 'waiting_expired', eventId: event.eventId, recipients: [p.userId], urgent: false });
  }

  /**
   * The consequences of the participants' states: the visit starts once a provider and someone else are
   * in the room; with no provider left in a running visit the grace period starts (and stops when one
   * comes back).
   */
  settle(): void {
    const s = this.session;
    const inRoom = this.view.participants.filter((p) => p.admitState === 'admitted');
    if (s.state === 'open' && inRoom.some(admittedProvider) && inRoom.length >= 2) {
      this.move('visit_started', 'FIRST_PARTICIPANT_ADMITTED');
    }
    if (s.state === 'in_progress') {
      const providerIn = inRoom.some(admittedProvider);
      if (!providerIn && !s.providersGoneAt) s.providersGoneAt = this.now;
      if (providerIn && s.providersGoneAt) s.providersGoneAt = null;
    }
  }

  /** The earliest time the server's clock has something to do for this session (null when closed). */
  nextTimerAt(): Date | null {
    const s = this.session;
    if (CLOSED_STATES.has(s.state)) return null;
    const times: number[] = [];
    if (s.state === 'scheduled') times.push(s.waitingRoomOpensAt.getTime());
    if (s.expiresAt) times.push(s.expiresAt.getTime());
    if (s.latestEndAt) times.push(s.latestEndAt.getTime());
    if (s.providersGoneAt) times.push(s.providersGoneAt.getTime() + this.settings.providerGraceMs);
    for (const p of this.view.participants) if (p.waitingExpiresAt) times.push(p.waitingExpiresAt.getTime());
    return times.length === 0 ? null : new Date(Math.min(...times));
  }

  /**
   * Applies everything due by the clock: the no-show expiry (or else the waiting room opening), the
   * maximum duration (or else the provider grace period), and waiting entries past their time.
   */
  applyDue(): void {
    const s = this.session;
    const now = this.now.getTime();
    if ((s.state === 'scheduled' || s.state === 'open') && s.expiresAt && s.expiresAt.getTime() <= now) {
      this.move('no_show', 'NO_SHOW');
    } else if (s.state === 'scheduled' && s.waitingRoomOpensAt.getTime() <= now) {
      this.move('waiting_room_opens', 'WAITING_ROOM_OPENED');
    }
    if (s.state === 'in_progress') {
      if (s.latestEndAt && s.latestEndAt.getTime() <= now) this.move('max_duration', 'MAX_DURATION_REACHED');
      else if (s.providersGoneAt && s.providersGoneAt.getTime() + this.settings.providerGraceMs <= now) {
        this.move('last_provider_gone', 'LAST_PROVIDER_LEFT');
      }
    }
    for (const p of this.view.participants) {
      if (p.admitState === 'waiting' && p.waitingExpiresAt && p.waitingExpiresAt.getTime() <= now) {
        this.expireWaiting(p, 'WAITING_TIMED_OUT');
      }
    }
  }
}

/** The caller's governing role as reason codes name it (PROVIDER, STAFF, SERVICE). */
export function governingRole(actor: Actor, providerOfSession: boolean): 'PROVIDER' | 'STAFF' | 'SERVICE' {
  if (providerOfSession) return 'PROVIDER';
  return hasRole(actor, 'staff') ? 'STAFF' : 'SERVICE';
}
