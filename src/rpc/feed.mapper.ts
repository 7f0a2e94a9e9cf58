import type { WatchInboxResponse, WatchSessionResponse, WatchThreadResponse } from '../../gen/comms/v1/feed.js';
import type { InboxFeedItem } from '../feeds/inbox.feed.js';
import type { SessionFeedItem } from '../feeds/session.feed.js';
import type { ThreadFeedItem } from '../feeds/thread.feed.js';
import type { FeedOutput } from '../feeds/watch.js';
import { messageToPb, receiptToPb, watermarkToPb } from './message.mapper.js';
import { participantToPb, sessionToPb } from './session.mapper.js';
import { threadToPb } from './thread.mapper.js';

type Marker = { $case: 'caughtUp'; value: { asOf: Date } } | { $case: 'heartbeat'; value: { sentAt: Date } };

/** The caught-up and heartbeat cases every feed response shares. */
function marker(out: Exclude<FeedOutput<unknown>, { type: 'event' }>): Marker {
  return out.type === 'caught_up'
    ? { $case: 'caughtUp', value: { asOf: out.at } }
    : { $case: 'heartbeat', value: { sentAt: out.at } };
}

export function threadFeedToPb(out: FeedOutput<ThreadFeedItem>): WatchThreadResponse {
  if (out.type !== 'event') return { resumeToken: out.resumeToken, occurredAt: out.at, event: marker(out) };
  const { item } = out;
  let event: WatchThreadResponse['event'];
  switch (item.kind) {
    case 'message_posted':
      event = { $case: 'messagePosted', value: messageToPb(item.message) };
      break;
    case 'message_retracted':
      event = { $case: 'messageRetracted', value: messageToPb(item.message) };
      break;
    case 'receipts_updated':
      event = {
        $case: 'receiptsUpdated',
        value: {
          receipts: item.receipts.map(receiptToPb),
          watermark: item.watermark && watermarkToPb(item.watermark),
        },
      };
      break;
    case 'thread_changed':
      event = { $case: 'threadChanged', value: threadToPb(item.thread) };
      break;
  }
  return { resumeToken: out.resumeToken, occurredAt: out.occurredAt, event };
}

export function inboxFeedToPb(out: FeedOutput<InboxFeedItem>): WatchInboxResponse {
  if (out.type !== 'event') return { resumeToken: out.resumeToken, occurredAt: out.at, event: marker(out) };
  const { item } = out;
  return {
    resumeToken: out.resumeToken,
    occurredAt: out.occurredAt,
    event:
      item.kind === 'thread_updated'
        ? { $case: 'threadUpdated', value: threadToPb(item.thread) }
        : { $case: 'threadRemoved', value: { threadId: item.threadId } },
  };
}

export function sessionFeedToPb(out: FeedOutput<SessionFeedItem>): WatchSessionResponse {
  if (out.type !== 'event') return { resumeToken: out.resumeToken, occurredAt: out.at, event: marker(out) };
  const { item } = out;
  return {
    resumeToken: out.resumeToken,
    occurredAt: out.occurredAt,
    event:
      item.kind === 'session_changed'
        ? { $case: 'sessionChanged', value: sessionToPb(item.session) }
        : { $case: 'participantChanged', value: participantToPb(item.participant) },
  };
}
