import type {
  WatchInboxRequest,
  WatchInboxResponse,
  WatchSessionRequest,
  WatchSessionResponse,
  WatchThreadRequest,
  WatchThreadResponse,
} from '../../gen/comms/v1/feed.js';
import type { SessionService } from '../domain/session/session.service.js';
import type { ThreadService } from '../domain/thread/thread.service.js';
import type { FeedHub } from '../feeds/hub.js';
import { watchInbox } from '../feeds/inbox.feed.js';
import { watchSession } from '../feeds/session.feed.js';
import { watchThread } from '../feeds/thread.feed.js';
import type { StreamHandler } from './adapter.js';
import { inboxFeedToPb, sessionFeedToPb, threadFeedToPb } from './feed.mapper.js';

/**
 * The response of each shared feed output (an event every subscriber on this replica receives alike):
 * mapped once, and the same object lets the server encode it once (see `encodeOnce` in server.ts).
 */
const responses = new WeakMap<object, unknown>();

function mapped<T extends object, R>(out: T, map: (out: T) => R): R {
  let res = responses.get(out) as R | undefined;
  if (res === undefined) responses.set(out, (res = map(out)));
  return res;
}

/** FeedService handlers: decode → feed → encode, one response per feed output. */
export function feedHandlers(
  hub: FeedHub,
  threads: ThreadService,
  sessions: SessionService,
  options: { heartbeatMs: number },
) {
  const { heartbeatMs } = options;

  const watchThreadHandler: StreamHandler<WatchThreadRequest, WatchThreadResponse> = async function* (req, ctx) {
    const feed = await watchThread(hub, threads, ctx.actor, ctx, {
      threadId: req.threadId,
      resumeToken: req.resumeToken,
      heartbeatMs,
    });
    for await (const out of feed) {
      // Message content reaches this caller: the audit hears of it first (and may refuse).
      if (out.type === 'event' && (out.item.kind === 'message_posted' || out.item.kind === 'message_retracted')) {
        ctx.audit({ threadId: out.item.message.threadId, messages: [out.item.message] });
      }
      yield mapped(out, threadFeedToPb);
    }
  };

  const watchInboxHandler: StreamHandler<WatchInboxRequest, WatchInboxResponse> = async function* (req, ctx) {
    for await (const out of watchInbox(hub, threads, ctx.actor, ctx, { resumeToken: req.resumeToken, heartbeatMs })) {
      yield mapped(out, inboxFeedToPb);
    }
  };

  const watchSessionHandler: StreamHandler<WatchSessionRequest, WatchSessionResponse> = async function* (req, ctx) {
    const feed = await watchSession(hub, sessions, ctx.actor, ctx, {
      sessionId: req.sessionId,
      resumeToken: req.resumeToken,
      heartbeatMs,
    });
    for await (const out of feed) yield mapped(out, sessionFeedToPb);
  };

  return { watchThread: watchThreadHandler, watchInbox: watchInboxHandler, watchSession: watchSessionHandler };
}
