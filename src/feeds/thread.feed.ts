import type { EntityManager } from '@mikro-orm/postgresql';
import type { Actor } from '../domain/actor.js';
import type { Db } from '../domain/db.js';
import { type FeedEvent, streams } from '../domain/feed/feed.repository.js';
import { type MessageRecord, MessageRepository } from '../domain/message/message.repository.js';
import {
  ReadReceiptRepository,
  type ReceiptRecord,
  type WatermarkRecord,
} from '../domain/read-receipt/read-receipt.repository.js';
import type { ThreadView } from '../domain/thread/thread.entity.js';
import { ThreadAccessRevoked } from '../domain/thread/thread.errors.js';
import { threadPermissions } from '../domain/thread/thread.policy.js';
import { fromSnapshot, type ThreadSnapshot } from '../domain/thread/thread.snapshot.js';
import type { ThreadService } from '../domain/thread/thread.service.js';
import type { FeedHub, Prepared } from './hub.js';
import { seqLog } from './logs.js';
import { type FeedOutput, watch } from './watch.js';

/** What a thread feed delivers. */
export type ThreadFeedItem =
  | { readonly kind: 'message_posted' | 'message_retracted'; readonly message: MessageRecord }
  | {
      readonly kind: 'receipts_updated';
      readonly receipts: readonly ReceiptRecord[];
      readonly watermark: WatermarkRecord | undefined;
    }
  | { readonly kind: 'thread_changed'; readonly thread: ThreadView };

/** What every subscriber shares; a thread change gets each subscriber's read state added. */
type Shared = ThreadFeedItem;

/**
 * Reads the messages and receipts of a batch once, for every subscriber of the thread. A message is
 * read as it is now, so a replay of a message retracted or purged since shows it so.
 */
async function prepare(em: EntityManager, tenantId: string, events: readonly FeedEvent[]): Promise<Prepared<Shared>[]> {
  const ids = events
    .filter((e) => e.kind === 'message_posted' || e.kind === 'message_retracted')
    .map((e) => e.messageId!);
  const messages = new Map((await new MessageRepository(em).findByIds(tenantId, ids)).map((m) => [m.messageId, m]));
  const receipts = new ReadReceiptRepository(em);
  const out: Prepared<Shared>[] = [];
  for (const event of events) {
    if (event.kind === 'message_posted' || event.kind === 'message_retracted') {
      const message = messages.get(event.messageId!);
      if (!message) throw new Error(`feed event ${event.stream}#${event.seq}: message ${event.messageId} missing`);
      out.push({ event, shared: { kind: event.kind, message } });
    } else if (event.kind === 'receipts_updated') {
      const userId = event.userId!;
      const [rows, [watermark]] = await Promise.all([
        receipts.receiptsOf(tenantId, userId, event.messageIds),
        receipts.watermarks(tenantId, userId, [event.aggregateId]),
      ]);
      out.push({ event, shared: { kind: 'receipts_updated', receipts: rows, watermark } });
    } else {
      // thread_changed: the thread as the event kept it; each subscriber adds its own read state.
      if (!event.snapshot) throw new Error(`feed event ${event.stream}#${event.seq}: thread snapshot missing`);
      out.push({
        event,
        shared: { kind: 'thread_changed', thread: fromSnapshot(em, event.snapshot as ThreadSnapshot) },
      });
    }
  }
  return out;
}

/**
 * A retraction also rewrites what the replica's cache holds of the message, so a subscriber resuming
 * from before the post gets the retracted view from the cache as it would from the log.
 */
function retractedInCache(cached: Prepared<Shared>, fresh: Prepared<Shared>): Prepared<Shared> | undefined {
  if (fresh.shared.kind !== 'message_retracted' || cached.shared.kind !== 'message_posted') return undefined;
  if (cached.shared.message.messageId !== fresh.shared.message.messageId) return undefined;
  return { event: cached.event, shared: { kind: 'message_posted', message: fresh.shared.message } };
}

/** WatchThread: the thread's messages, receipts and changes, for those who may see the thread. */
export async function watchThread(
  hub: FeedHub,
  threads: ThreadService,
  actor: Actor,
  db: Db & { readonly signal: AbortSignal; readonly expiresAt: Date },
  input: { threadId: string; resumeToken: string; heartbeatMs: number },
): Promise<AsyncIterable<FeedOutput<ThreadFeedItem>>> {
  // Refuses an invalid id, an unknown or invisible thread before anything streams.
  const threadId = await threads.requireVisible(actor, db, input.threadId);
  const stream = streams.thread(threadId);
  return watch<Shared, FeedEvent, number, ThreadFeedItem>({
    hub,
    tenantId: actor.tenantId,
    stream,
    log: (sub) => seqLog(hub, actor.tenantId, stream, prepare, sub, retractedInCache),
    resumeToken: input.resumeToken,
    present: async (em, batch) => {
      const out = [];
      for (const { event, shared } of batch) {
        if (shared.kind !== 'thread_changed') {
          out.push({ item: shared, shared: true });
          continue;
        }
        const thread = await threads.withReadState(
          actor,
          { em: em(), deadline: db.deadline, statementTimeoutMs: db.statementTimeoutMs },
          shared.thread,
        );
        // The change that removed the caller ends its feed, unless its role governs the thread anyway.
        const revoked = event.userId === actor.userId && !threadPermissions(actor, thread.participants).see;
        out.push({
          item: { kind: 'thread_changed' as const, thread },
          endAfter: revoked ? new ThreadAccessRevoked(threadId) : undefined,
        });
      }
      return out;
    },
    signal: db.signal,
    heartbeatMs: input.heartbeatMs,
    expiresAt: db.expiresAt,
  });
}
