import { defineEntity, p } from '@mikro-orm/core';

export const THREAD_STATES = ['active', 'archived'] as const;
export type ThreadState = (typeof THREAD_STATES)[number];

export const ESCALATION_LEVELS = ['none', 'elevated', 'urgent', 'emergency'] as const;
export type EscalationLevel = (typeof ESCALATION_LEVELS)[number];

export const PARTICIPANT_ROLES = ['patient', 'provider', 'care_staff', 'family', 'interpreter'] as const;
export type ParticipantRole = (typeof PARTICIPANT_ROLES)[number];

/**
 * A message thread (server_authoritative). Table `thread`, primary key (tenant_id, thread_id); the
 * schema (checks, keys) is in the migrations. `version` is the optimistic-concurrency counter behind the
 * etag: every metadata change increments it, and MikroORM adds `WHERE version = ?` to the UPDATE.
 */
const ThreadSchema = defineEntity({
  name: 'Thread',
  tableName: 'thread',
  properties: {
    tenantId: p.string().primary(),
    threadId: p.uuid().primary(),
    subject: p.text(),
    state: p.enum(THREAD_STATES),
    createdBy: p.text(),
    createdAt: p.datetime(),
    updatedAt: p.datetime(),
    lastActivityAt: p.datetime(),
    archivedAt: p.datetime().nullable(),
    escalationLevel: p.enum(ESCALATION_LEVELS),
    escalationAssignee: p.text().nullable(),
    escalationReason: p.text().nullable(),
    escalatedBy: p.text().nullable(),
    escalatedAt: p.datetime().nullable(),
    createRequestId: p.text().nullable(),
    /** Messages sent so far; the last one's seq. Written only by the send path (raw SQL, no etag bump). */
    messageSeq: p.integer(),
    lastMessageId: p.uuid().nullable(),
    lastMessageAt: p.datetime().nullable(),
    version: p.integer().version(),
  },
});

export class Thread extends ThreadSchema.class {}
ThreadSchema.setClass(Thread);

/**
 * One participant of a thread. Table `thread_participant`, primary key (tenant_id, thread_id, user_id),
 * foreign key (tenant_id, thread_id) → thread. Kept as plain columns (no ORM relation) so every key
 * carries tenant_id exactly as the schema declares it.
 */
const ThreadParticipantSchema = defineEntity({
  name: 'ThreadParticipant',
  tableName: 'thread_participant',
  properties: {
    tenantId: p.string().primary(),
    threadId: p.uuid().primary(),
    userId: p.text().primary(),
    role: p.enum(PARTICIPANT_ROLES),
    addedAt: p.datetime(),
    addedBy: p.text(),
  },
});

export class ThreadParticipant extends ThreadParticipantSchema.class {}
ThreadParticipantSchema.setClass(ThreadParticipant);

/** The caller's read state in a thread: its watermark position and unread count. */
export interface ReadState {
  readonly readUpTo: { readonly messageId: string; readonly sentAt: Date; readonly cursor: string } | undefined;
  readonly unreadCount: number;
}

/** A thread with its participants (and, once looked up, the caller's read state), as use cases return it. */
export interface ThreadView {
  readonly thread: Thread;
  readonly participants: readonly ThreadParticipant[];
  readonly readState?: ReadState;
}

/** The etag (AIP-154) of a thread version. */
export function threadEtag(thread: Pick<Thread, 'version'>): string {
  return `"${thread.version}"`;
}
