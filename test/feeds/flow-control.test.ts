import { status } from '@grpc/grpc-js';
import { expect } from 'chai';
import type { WatchInboxResponse, WatchThreadResponse } from '../../gen/comms/v1/feed.js';
import {
  expectEnd,
  expectUnique,
  feedInstance,
  postedIds,
  twoPartyThread,
  watchInbox,
  watchThread,
} from '../support/feeds.js';
import { send } from '../support/messages.js';
import { waitFor } from '../support/wait.js';

/** The heartbeats received after the response at `from`. */
function heartbeatsAfter<R extends WatchThreadResponse | WatchInboxResponse>(rs: R[], from: number): R[] {
  return rs.slice(from + 1).filter((r) => r.event?.$case === 'heartbeat');
}

describe('FeedService flow control', () => {
  it('sends heartbeats on idle streams, each carrying the current position', async function () {
    this.timeout(30_000);
    const srv = await feedInstance({ FEED_HEARTBEAT_MS: '200' });
    try {
      const { provider, patient, thread } = await twoPartyThread(srv.threads);
      const ofThread = srv.track(watchThread(srv.feeds, patient.md, thread.threadId));
      const ofInbox = srv.track(watchInbox(srv.feeds, patient.md));
      await Promise.all([ofThread.caughtUp(), ofInbox.caughtUp()]);
      const caughtUp = ofThread.responses[0]!;
      const inboxCaughtUp = ofInbox.responses[0]!;

      await ofThread.waitFor((rs) => heartbeatsAfter(rs, 0).length >= 2, 10_000, 'two heartbeats');
      await ofInbox.waitFor((rs) => heartbeatsAfter(rs, 0).length >= 2, 10_000, 'two inbox heartbeats');
      expect(heartbeatsAfter(ofThread.responses, 0).map((r) => r.resumeToken)).to.satisfy((ts: string[]) =>
        ts.every((t) => t === caughtUp.resumeToken),
      );
      expect(heartbeatsAfter(ofInbox.responses, 0).map((r) => r.resumeToken)).to.satisfy((ts: string[]) =>
        ts.every((t) => t === inboxCaughtUp.resumeToken),
      );
      const first = heartbeatsAfter(ofThread.responses, 0)[0]!;
      const asOf = caughtUp.event?.$case === 'caughtUp' ? caughtUp.event.value.asOf! : new Date(0);
      const sentAt = first.event?.$case === 'heartbeat' ? first.event.value.sentAt! : new Date(0);
      expect(sentAt.getTime() - asOf.getTime(), 'idle for the interval first').to.be.at.least(190);
      expect(first.occurredAt?.getTime()).to.equal(sentAt.getTime());

      // After an event, heartbeats carry that event's token; resuming from one replays nothing.
      await send(srv.messages, provider, thread.threadId, 'hello');
      await ofThread.eventCount(1);
      const at = ofThread.responses.indexOf(ofThread.events[0]!);
      await ofThread.waitFor((rs) => heartbeatsAfter(rs, at).length >= 2, 10_000, 'heartbeats after the event');
      const beats = heartbeatsAfter(ofThread.responses, at);
      expect(beats.every((r) => r.resumeToken === ofThread.events[0]!.resumeToken)).to.equal(true);
      expect(ofThread.events).to.have.length(1);

      const resumed = srv.track(watchThread(srv.feeds, patient.md, thread.threadId, beats[0]!.resumeToken));
      await resumed.caughtUp();
      expect(resumed.cases).to.deep.equal(['caughtUp']);
    } finally {
      await srv.close();
    }
  });

  it('ends a stalled consumer with RESOURCE_EXHAUSTED after all it was sent; its token resumes without loss', async function () {
    this.timeout(120_000);
    const srv = await feedInstance({ FEED_STALL_MS: '500' });
    try {
      const { provider, patient, thread } = await twoPartyThread(srv.threads);
      const stream = srv.track(watchThread(srv.feeds, patient.md, thread.threadId));
      await stream.caughtUp();
      expect(srv.app.feeds.stats().subscribers).to.equal(1);
      // The client stops reading: grpc-js's buffers and the HTTP/2 windows fill, then the server's writes.
      stream.call.pause();

      const count = 100;
      const filler = 'x'.repeat(15_000);
      const sent: string[] = [];
      for (let i = 0; i < count; i++) {
        sent.push((await send(srv.messages, provider, thread.threadId, `${i} ${filler}`)).message!.messageId);
      }
      // The server gave up on the stream (its subscription is gone) while the client was not reading.
      await waitFor(async () => srv.app.feeds.stats().subscribers === 0, 20_000);
      stream.call.resume();

      const { info } = await expectEnd(stream, status.RESOURCE_EXHAUSTED, 'SLOW_CONSUMER');
      const received = postedIds(stream);
      expect(received.length, 'some events came before the status').to.be.above(0);
      expect(received.length, 'the stream ended before the last event').to.be.below(count);
      expect(info?.metadata.resume_token, 'the token of the last response received').to.equal(stream.lastToken);
      expect(info?.metadata.stalled_ms).to.equal('500');

      const again = srv.track(watchThread(srv.feeds, patient.md, thread.threadId, info!.metadata.resume_token));
      await again.caughtUp(30_000);
      const all = [...received, ...postedIds(again)];
      expectUnique(all);
      expect(all, 'every message exactly once, in order').to.deep.equal(sent);
    } finally {
      await srv.close();
    }
  });
});
