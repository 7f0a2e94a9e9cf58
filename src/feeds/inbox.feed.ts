import type { Actor } from '../domain/actor.js';
import type { Db } from '../domain/db.js';
import { type InboxEvent, type InboxPosition, streams } from '../domain/feed/feed.repository.js';
import type { ThreadView } from '../domain/thread/thread.entity.js';
import type { ThreadService } from '../domain/thread/thread.service.js';
import type { FeedHub } from './hub.js';
import { inboxLog } from './logs.js';
import { type FeedOutput, watch } from './watch.js';

/** What an inbox feed delivers: a thread as the caller's inbox shows it now, or that it left the inbox. */
export type InboxFeedItem =
  | { readonly kind: 'thread_updated'; readonly thread: ThreadView }
  | { readonly kind: 'thread_removed'; readonly threadId: string };

/**
 * WatchInbox: the caller's threads as they change. Each event delivers the thread's summary as it is
 * when delivered (so a replay after a long disconnect shows current unread counts), or thread_removed
 * when the caller no longer takes part.
 */
export function watchInbox(
  hub: FeedHub,
  threads: ThreadService,
  actor: Actor,
  db: Db & { readonly signal: AbortSignal; readonly expiresAt: Date },
  input: { resumeToken: string; heartbeatMs: number },
): AsyncIterable<FeedOutput<InboxFeedItem>> {
  const stream = streams.inbox(actor.userId);
  return watch<undefined, InboxEvent, InboxPosition, InboxFeedItem>({
    hub,
    tenantId: actor.tenantId,
    stream,
    log: (sub) => inboxLog(hub, actor.tenantId, actor.userId, stream, sub),
    resumeToken: input.resumeToken,
    present: async (em, batch) => {
      const ids = [...new Set(batch.map((p) => p.event.threadId))];
      const views = await threads.inboxViews(
        actor,
        { em: em(), deadline: db.deadline, statementTimeoutMs: db.statementTimeoutMs },
        ids,
      );
      return batch.map(({ event }) => {
        const thread = views.get(event.threadId);
        return {
          item: thread
            ? { kind: 'thread_updated' as const, thread }
            : { kind: 'thread_removed' as const, threadId: event.threadId },
        };
      });
    },
    signal: db.signal,
    heartbeatMs: input.heartbeatMs,
    expiresAt: db.expiresAt,
  });
}
