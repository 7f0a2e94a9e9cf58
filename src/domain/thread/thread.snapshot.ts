import type { EntityManager } from '@mikro-orm/postgresql';
import { Thread, ThreadParticipant, type ThreadView } from './thread.entity.js';

/** A thread and its participants as JSON, as a thread_changed feed event keeps them. */
export type ThreadSnapshot = Record<string, unknown> & { participants: Record<string, unknown>[] };

const DATES = ['createdAt', 'updatedAt', 'lastActivityAt', 'archivedAt', 'escalatedAt', 'lastMessageAt'] as const;

/** The thread as it is after a change, for the change's feed event (read back by `fromSnapshot`). */
export function toSnapshot(view: ThreadView): ThreadSnapshot {
  const t = view.thread;
  return {
    tenantId: t.tenantId,
    threadId: t.threadId,
    subject: t.subject,
    state: t.state,
    createdBy: t.createdBy,
    createdAt: t.createdAt,
    updatedAt: t.updatedAt,
    lastActivityAt: t.lastActivityAt,
    archivedAt: t.archivedAt,
    escalationLevel: t.escalationLevel,
    escalationAssignee: t.escalationAssignee,
    escalationReason: t.escalationReason,
    escalatedBy: t.escalatedBy,
    escalatedAt: t.escalatedAt,
    createRequestId: t.createRequestId,
    messageSeq: t.messageSeq,
    lastMessageId: t.lastMessageId,
    lastMessageAt: t.lastMessageAt,
    version: t.version,
    participants: view.participants.map((p) => ({
      tenantId: p.tenantId,
      threadId: p.threadId,
      userId: p.userId,
      role: p.role,
      addedAt: p.addedAt,
      addedBy: p.addedBy,
    })),
  };
}

/** A snapshot back as a (detached, never persisted) thread view. */
export function fromSnapshot(em: EntityManager, snapshot: ThreadSnapshot): ThreadView {
  const { participants, ...fields } = snapshot;
  for (const key of DATES) if (fields[key] != null) fields[key] = new Date(fields[key] as string);
  return {
    thread: em.create(Thread, fields as never, { persist: false }),
    participants: participants.map((p) =>
      em.create(ThreadParticipant, { ...p, addedAt: new Date(p.addedAt as string) } as never, { persist: false }),
    ),
  };
}
