import {
  AdmitState as PbAdmitState,
  type JoinCredential as PbJoinCredential,
  SessionEventKind as PbEventKind,
  type SessionEvent as PbSessionEvent,
  SessionState as PbSessionState,
  SessionTransition as PbTransition,
  type VirtualParticipant as PbParticipant,
  type VirtualSession as PbSession,
} from '../../gen/comms/v1/session.js';
import type {
  ParticipantRecord,
  SessionEventKind,
  SessionEventRecord,
  SessionView,
} from '../domain/session/session.repository.js';
import type { AdmitState, SessionState, Suggestion } from '../domain/session/session.policy.js';
import { type JoinResult, type SessionParticipantSpec, sessionEtag } from '../domain/session/session.service.js';
import { fromPb, invert } from './enums.js';
import { ROLE_FROM_PB, ROLE_TO_PB } from './thread.mapper.js';

const STATE: Record<SessionState, PbSessionState> = {
  scheduled: PbSessionState.SESSION_STATE_SCHEDULED,
  open: PbSessionState.SESSION_STATE_OPEN,
  in_progress: PbSessionState.SESSION_STATE_IN_PROGRESS,
  ended: PbSessionState.SESSION_STATE_ENDED,
  cancelled: PbSessionState.SESSION_STATE_CANCELLED,
  expired: PbSessionState.SESSION_STATE_EXPIRED,
};

const ADMIT: Record<AdmitState, PbAdmitState> = {
  invited: PbAdmitState.ADMIT_STATE_INVITED,
  waiting: PbAdmitState.ADMIT_STATE_WAITING,
  admitted: PbAdmitState.ADMIT_STATE_ADMITTED,
  denied: PbAdmitState.ADMIT_STATE_DENIED,
  removed: PbAdmitState.ADMIT_STATE_REMOVED,
  left: PbAdmitState.ADMIT_STATE_LEFT,
  expired: PbAdmitState.ADMIT_STATE_EXPIRED,
};

const TRANSITION: Record<Suggestion, PbTransition> = {
  open: PbTransition.SESSION_TRANSITION_OPEN,
  end: PbTransition.SESSION_TRANSITION_END,
  cancel: PbTransition.SESSION_TRANSITION_CANCEL,
};

const EVENT_KIND: Record<SessionEventKind, PbEventKind> = {
  created: PbEventKind.SESSION_EVENT_KIND_CREATED,
  transitioned: PbEventKind.SESSION_EVENT_KIND_TRANSITIONED,
  transition_rejected: PbEventKind.SESSION_EVENT_KIND_TRANSITION_REJECTED,
  rescheduled: PbEventKind.SESSION_EVENT_KIND_RESCHEDULED,
  invited: PbEventKind.SESSION_EVENT_KIND_INVITED,
  joined: PbEventKind.SESSION_EVENT_KIND_JOINED,
  admitted: PbEventKind.SESSION_EVENT_KIND_ADMITTED,
  denied: PbEventKind.SESSION_EVENT_KIND_DENIED,
  removed: PbEventKind.SESSION_EVENT_KIND_REMOVED,
  left: PbEventKind.SESSION_EVENT_KIND_LEFT,
  expired: PbEventKind.SESSION_EVENT_KIND_EXPIRED,
};

const STATE_FROM = invert(STATE);
const TRANSITION_FROM = invert(TRANSITION);

export const sessionStateFromPb = (v: PbSessionState, field: string) => fromPb(STATE_FROM, v, field);
export const transitionFromPb = (v: PbTransition, field: string) => fromPb(TRANSITION_FROM, v, field);

/** A request's participant: an unknown or unspecified role → undefined (the domain refuses it). */
export function sessionParticipantFromPb(p: PbParticipant | undefined): SessionParticipantSpec {
  return { userId: p?.userId ?? '', role: ROLE_FROM_PB.get(p?.role ?? 0) };
}

export function participantToPb(p: ParticipantRecord): PbParticipant {
  return {
    userId: p.userId,
    role: ROLE_TO_PB[p.role],
    admitState: ADMIT[p.admitState],
    admitStateChangedAt: p.admitStateChangedAt,
    admitStateChangedBy: p.admitStateChangedBy,
    invitedBy: p.invitedBy,
    invitedAt: p.invitedAt,
    joinedAt: p.joinedAt ?? undefined,
    admittedAt: p.admittedAt ?? undefined,
    admittedBy: p.admittedBy,
    leftAt: p.leftAt ?? undefined,
    waitingExpiresAt: p.waitingExpiresAt ?? undefined,
    rejoinExpiresAt: p.rejoinExpiresAt ?? undefined,
  };
}

export function sessionToPb(view: SessionView): PbSession {
  const s = view.session;
  return {
    sessionId: s.sessionId,
    threadId: s.threadId ?? '',
    state: STATE[s.state],
    stateReason: s.stateReason,
    scheduledStartAt: s.scheduledStartAt,
    scheduledEndAt: s.scheduledEndAt,
    waitingRoomOpensAt: s.waitingRoomOpensAt,
    expiresAt: s.expiresAt ?? undefined,
    latestEndAt: s.latestEndAt ?? undefined,
    participants: view.participants.map(participantToPb),
    provider: s.provider,
    providerRoomId: s.providerRoomId,
    createdBy: s.createdBy,
    createdAt: s.createdAt,
    updatedAt: s.updatedAt,
    openedAt: s.openedAt ?? undefined,
    startedAt: s.startedAt ?? undefined,
    endedAt: s.endedAt ?? undefined,
    etag: sessionEtag(s),
  };
}

export function sessionEventToPb(e: SessionEventRecord): PbSessionEvent {
  return {
    eventId: e.eventId,
    sessionId: e.sessionId,
    kind: EVENT_KIND[e.kind],
    fromState: e.fromState ? STATE[e.fromState] : PbSessionState.SESSION_STATE_UNSPECIFIED,
    toState: STATE[e.toState],
    transition: e.transition ? TRANSITION[e.transition] : PbTransition.SESSION_TRANSITION_UNSPECIFIED,
    subjectUserId: e.subjectUserId,
    fromAdmitState: e.fromAdmitState ? ADMIT[e.fromAdmitState] : PbAdmitState.ADMIT_STATE_UNSPECIFIED,
    toAdmitState: e.toAdmitState ? ADMIT[e.toAdmitState] : PbAdmitState.ADMIT_STATE_UNSPECIFIED,
    actorUserId: e.actorUserId,
    reasonCode: e.reasonCode,
    reason: e.reason,
    occurredAt: e.occurredAt,
  };
}

export function credentialToPb(c: NonNullable<JoinResult['credential']>): PbJoinCredential {
  return { token: c.token, provider: c.provider, providerRoomId: c.roomId, expiresAt: c.expiresAt };
}
