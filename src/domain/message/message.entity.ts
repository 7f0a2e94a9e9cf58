import { defineEntity, p } from '@mikro-orm/core';
import { encodeCursor } from './message.cursor.js';

/**
 * One message (append_only). Table `message`, primary key (tenant_id, message_id); unique keys
 * (tenant_id, thread_id, seq) and (tenant_id, sender_user_id, client_mutation_id). The database refuses
 * UPDATE, DELETE and TRUNCATE of these rows (migration 20261129010000), but for the retention purge of a
 * body (migration 20261202000000).
 */
const MessageSchema = defineEntity({
  name: 'Message',
  tableName: 'message',
  properties: {
    tenantId: p.string().primary(),
    messageId: p.uuid().primary(),
    threadId: p.uuid(),
    seq: p.integer(),
    senderUserId: p.text(),
    clientMutationId: p.text(),
    // NULL once the retention purge cleared it (purgedAt set).
    body: p.text().nullable(),
    bodySha256: p.blob().$type<Buffer>().nullable(),
    clientSentAt: p.datetime().nullable(),
    sentAt: p.datetime(),
    purgedAt: p.datetime().nullable(),
  },
});

export class Message extends MessageSchema.class {}
MessageSchema.setClass(Message);

/** A position in a thread: the message at it, its send time and its cursor. */
export interface MessagePosition {
  readonly messageId: string;
  readonly sentAt: Date;
  readonly cursor: string;
}

/** The position of message `seq` of a thread. */
export function position(threadId: string, seq: number, messageId: string, sentAt: Date): MessagePosition {
  return { messageId, sentAt, cursor: encodeCursor(threadId, seq) };
}

/** The newest message of a thread as a position; undefined when the thread has none. */
export function latestPosition(thread: {
  readonly threadId: string;
  readonly messageSeq: number;
  readonly lastMessageId?: string | null;
  readonly lastMessageAt?: Date | null;
}): MessagePosition | undefined {
  return thread.lastMessageId && thread.lastMessageAt
    ? position(thread.threadId, thread.messageSeq, thread.lastMessageId, thread.lastMessageAt)
    : undefined;
}
