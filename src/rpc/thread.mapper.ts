import {
  EscalationLevel as PbEscalationLevel,
  ParticipantRole as PbParticipantRole,
  type Participant as PbParticipant,
  type Thread as PbThread,
  ThreadState as PbThreadState,
} from '../../gen/comms/v1/thread.js';
import { latestPosition } from '../domain/message/message.entity.js';
import type { ParticipantSpec } from '../domain/thread/thread.policy.js';
import {
  type EscalationLevel,
  type ParticipantRole,
  type ThreadState,
  type ThreadView,
  threadEtag,
} from '../domain/thread/thread.entity.js';

import { invert } from './enums.js';

const STATE_TO_PB: Record<ThreadState, PbThreadState> = {
  active: PbThreadState.THREAD_STATE_ACTIVE,
  archived: PbThreadState.THREAD_STATE_ARCHIVED,
};

/** Domain participant role → proto (threads and sessions share the enum). */
export const ROLE_TO_PB: Record<ParticipantRole, PbParticipantRole> = {
  patient: PbParticipantRole.PARTICIPANT_ROLE_PATIENT,
  provider: PbParticipantRole.PARTICIPANT_ROLE_PROVIDER,
  care_staff: PbParticipantRole.PARTICIPANT_ROLE_CARE_STAFF,
  family: PbParticipantRole.PARTICIPANT_ROLE_FAMILY,
  interpreter: PbParticipantRole.PARTICIPANT_ROLE_INTERPRETER,
};

const LEVEL_TO_PB: Record<EscalationLevel, PbEscalationLevel> = {
  none: PbEscalationLevel.ESCALATION_LEVEL_NONE,
  elevated: PbEscalationLevel.ESCALATION_LEVEL_ELEVATED,
  urgent: PbEscalationLevel.ESCALATION_LEVEL_URGENT,
  emergency: PbEscalationLevel.ESCALATION_LEVEL_EMERGENCY,
};

const STATE_FROM_PB = invert(STATE_TO_PB);
export const ROLE_FROM_PB = invert(ROLE_TO_PB);
const LEVEL_FROM_PB = invert(LEVEL_TO_PB);

/** Proto state filter → domain; UNSPECIFIED (or an unknown value) → undefined. */
export function threadStateFromPb(state: PbThreadState): ThreadState | undefined {
  return STATE_FROM_PB.get(state);
}

/** Proto participant (request) → domain spec; an unknown or unspecified role → undefined. */
export function participantSpecFromPb(p: PbParticipant | undefined): ParticipantSpec {
  return { userId: p?.userId ?? '', role: ROLE_FROM_PB.get(p?.role ?? 0) };
}

/** Proto escalation level → domain; UNSPECIFIED or unknown → undefined. */
export function escalationLevelFromPb(level: PbEscalationLevel): EscalationLevel | undefined {
  return LEVEL_FROM_PB.get(level);
}

/** Domain thread view → proto Thread, as the caller sees it. */
export function threadToPb(view: ThreadView): PbThread {
  const t = view.thread;
  return {
    threadId: t.threadId,
    subject: t.subject,
    state: STATE_TO_PB[t.state],
    participants: view.participants.map((p) => ({
      userId: p.userId,
      role: ROLE_TO_PB[p.role],
      addedAt: p.addedAt,
      addedBy: p.addedBy,
    })),
    escalation: {
      level: LEVEL_TO_PB[t.escalationLevel],
      assigneeUserId: t.escalationAssignee ?? '',
      reason: t.escalationReason ?? '',
      escalatedBy: t.escalatedBy ?? '',
      escalatedAt: t.escalatedAt ?? undefined,
    },
    createdBy: t.createdBy,
    createdAt: t.createdAt,
    updatedAt: t.updatedAt,
    lastActivityAt: t.lastActivityAt,
    archivedAt: t.archivedAt ?? undefined,
    etag: threadEtag(t),
    unreadCount: view.readState?.unreadCount ?? 0,
    readUpTo: view.readState?.readUpTo,
    latestMessage: latestPosition(t),
  };
}
