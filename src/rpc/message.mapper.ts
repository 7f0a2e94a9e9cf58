import { ListDirection, type Message as PbMessage } from '../../gen/comms/v1/message.js';
import type {
  ReadReceipt as PbReadReceipt,
  ReadWatermark as PbReadWatermark,
} from '../../gen/comms/v1/read_receipt.js';
import { encodeCursor } from '../domain/message/message.cursor.js';
import type { MessageRecord } from '../domain/message/message.repository.js';
import type { ReceiptRecord, WatermarkRecord } from '../domain/read-receipt/read-receipt.repository.js';

/**
 * Domain message → proto Message. Readers never get a retracted message's body (`original` is for the
 * audit path, GetAuditedMessage); a purged body is gone for everyone.
 */
export function messageToPb(m: MessageRecord, original = false): PbMessage {
  const r = m.retraction;
  return {
    messageId: m.messageId,
    threadId: m.threadId,
    senderUserId: m.senderUserId,
    body: (r && !original) || m.purgedAt ? '' : (m.body ?? ''),
    retraction: r && { retractedByUserId: r.retractedBy, retractedAt: r.retractedAt, byModerator: r.byModerator },
    bodyPurgedAt: m.purgedAt ?? undefined,
    clientMutationId: m.clientMutationId,
    clientSentAt: m.clientSentAt ?? undefined,
    sentAt: m.sentAt,
    cursor: encodeCursor(m.threadId, m.seq),
  };
}

/** Proto direction → domain; UNSPECIFIED or unknown → undefined (the default, backward). */
export function directionFromPb(direction: ListDirection): 'forward' | 'backward' | undefined {
  if (direction === ListDirection.LIST_DIRECTION_FORWARD) return 'forward';
  if (direction === ListDirection.LIST_DIRECTION_BACKWARD) return 'backward';
  return undefined;
}

export function receiptToPb(r: ReceiptRecord): PbReadReceipt {
  return { messageId: r.messageId, threadId: r.threadId, userId: r.userId, readAt: r.readAt };
}

export function watermarkToPb(w: WatermarkRecord): PbReadWatermark {
  return { threadId: w.threadId, userId: w.userId, readUpTo: w.readUpTo, unreadCount: w.unreadCount };
}
