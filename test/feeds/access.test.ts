import { Metadata, type ServiceError, status } from '@grpc/grpc-js';
import { expect } from 'chai';
import { SignJWT } from 'jose';
import { v7 as uuidv7 } from 'uuid';
import type { WatchThreadResponse } from '../../gen/comms/v1/feed.js';
import { ParticipantRole } from '../../gen/comms/v1/thread.js';
import { signDevToken } from '../../src/infra/auth/dev-token.js';
import { bearer, call, errorDetails, newUser, type TestUser } from '../support/clients.js';
import { expectEnd, type FeedStream, feedInstance, postedIds, useFeedClients, watchThread } from '../support/feeds.js';
import { env } from '../support/hooks.js';
import { addMember, send } from '../support/messages.js';
import { expectFieldViolations, participant, threadScene } from '../support/threads.js';

/** A token for `user`'s subject, tenant and roles that expires `ttlSeconds` from now (whole seconds). */
async function shortLived(user: TestUser, ttlSeconds: number): Promise<{ md: Metadata; exp: Date }> {
  const token = await signDevToken(env.config.jwt.secret!, {
    sub: user.userId,
    tenant: user.tenantId,
    roles: user.roles,
    issuer: env.config.jwt.issuer,
    audience: env.config.jwt.audience,
    ttlSeconds,
  });
  const exp = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString('utf8')).exp as number;
  return { md: bearer(token), exp: new Date(exp * 1000) };
}

describe('FeedService access', () => {
  const c = useFeedClients();

  it('ends a removed participant stream after the removal with PERMISSION_DENIED; the others go on', async () => {
    const s = await threadScene(c.threads);
    const threadId = s.thread.threadId;
    const ofPatient = c.watchThread(s.patient.md, threadId);
    const ofProvider = c.watchThread(s.provider.md, threadId);
    const ofStaff = c.watchThread(s.staff.md, threadId);
    await Promise.all([ofPatient.caughtUp(), ofProvider.caughtUp(), ofStaff.caughtUp()]);

    const before = (await send(c.messages, s.provider, threadId, 'before removal')).message!;
    await ofPatient.eventCount(1);
    await call(c.threads, c.threads.removeParticipant, { threadId, userId: s.patient.userId, etag: '' }, s.provider.md);

    const { err, info } = await expectEnd(ofPatient, status.PERMISSION_DENIED, 'THREAD_ACCESS_REVOKED');
    expect(ofPatient.cases).to.deep.equal(['caughtUp', 'messagePosted', 'threadChanged']);
    expect(postedIds(ofPatient)).to.deep.equal([before.messageId]);
    const removal = ofPatient.events[1]!.event;
    expect(removal?.$case === 'threadChanged' && removal.value.participants.map((p) => p.userId)).to.not.include(
      s.patient.userId,
    );
    expect(info?.metadata.thread_id).to.equal(threadId);
    expect(info?.metadata.resume_token, 'resume token of the removal event').to.equal(ofPatient.lastToken);
    expect(err.details).to.be.a('string');

    // The others received the removal too and keep receiving the thread's messages.
    const after = (await send(c.messages, s.provider, threadId, 'after removal')).message!;
    for (const other of [ofProvider, ofStaff]) {
      await other.eventCount(3);
      expect(other.events.map((e) => e.event?.$case)).to.deep.equal([
        'messagePosted',
        'threadChanged',
        'messagePosted',
      ]);
      expect(postedIds(other)).to.deep.equal([before.messageId, after.messageId]);
    }

    // Subscribing again, with or without its last token, is refused: the thread no longer exists for it.
    await expectEnd(c.watchThread(s.patient.md, threadId, ofPatient.lastToken), status.NOT_FOUND, 'THREAD_NOT_FOUND');
    await expectEnd(c.watchThread(s.patient.md, threadId), status.NOT_FOUND, 'THREAD_NOT_FOUND');
  });

  it('keeps the stream of a removed participant who governs the tenant (staff) open', async () => {
    const s = await threadScene(c.threads);
    const threadId = s.thread.threadId;
    await addMember(c.threads, s.provider, threadId, s.staff.userId, ParticipantRole.PARTICIPANT_ROLE_CARE_STAFF);
    const ofStaff = c.watchThread(s.staff.md, threadId);
    await ofStaff.caughtUp();
    await call(c.threads, c.threads.removeParticipant, { threadId, userId: s.staff.userId, etag: '' }, s.provider.md);
    const sent = (await send(c.messages, s.provider, threadId, 'staff still watches')).message!;
    await ofStaff.eventCount(2);
    expect(ofStaff.events.map((e) => e.event?.$case)).to.deep.equal(['threadChanged', 'messagePosted']);
    expect(postedIds(ofStaff)).to.deep.equal([sent.messageId]);
  });

  it('lets staff and service of the tenant watch a thread they do not take part in', async () => {
    const s = await threadScene(c.threads);
    const threadId = s.thread.threadId;
    const ofStaff = c.watchThread(s.staff.md, threadId);
    const ofService = c.watchThread(s.service.md, threadId);
    await Promise.all([ofStaff.caughtUp(), ofService.caughtUp()]);
    const sent = (await send(c.messages, s.patient, threadId, 'question')).message!;
    for (const stream of [ofStaff, ofService]) {
      await stream.eventCount(1);
      expect(postedIds(stream)).to.deep.equal([sent.messageId]);
    }
  });

  it('refuses callers who may not see the thread with NOT_FOUND, and an unknown thread alike', async () => {
    const s = await threadScene(c.threads);
    const refused: [string, TestUser][] = [
      ['staff of another tenant', s.foreignStaff],
      ['service of another tenant', s.foreignService],
      ['provider not taking part', s.outsiderProvider],
      ['patient not taking part', s.outsiderPatient],
    ];
    for (const [what, user] of refused) {
      const { info } = await expectEnd(
        c.watchThread(user.md, s.thread.threadId),
        status.NOT_FOUND,
        'THREAD_NOT_FOUND',
      ).catch((e: Error) => expect.fail(`${what}: ${e.message}`));
      expect(info?.metadata.thread_id, what).to.equal(s.thread.threadId);
    }
    await expectEnd(c.watchThread(s.staff.md, uuidv7()), status.NOT_FOUND, 'THREAD_NOT_FOUND');
    const stream = c.watchThread(s.outsiderPatient.md, s.thread.threadId);
    await stream.ended;
    expect(stream.responses, 'nothing streamed before the refusal').to.deep.equal([]);
  });

  it('refuses a malformed thread_id with INVALID_ARGUMENT naming the field', async () => {
    const s = await threadScene(c.threads);
    for (const bad of ['not-a-uuid', '', `${s.thread.threadId}x`]) {
      const { err } = await expectEnd(c.watchThread(s.provider.md, bad), status.INVALID_ARGUMENT, 'INVALID_ARGUMENT');
      expectFieldViolations(err, ['thread_id']);
    }
  });

  it('refuses a missing or invalid bearer token with UNAUTHENTICATED, on both feeds', async () => {
    const s = await threadScene(c.threads);
    const expired = await signDevToken(env.config.jwt.secret!, {
      sub: s.patient.userId,
      tenant: s.tenantId,
      roles: ['patient'],
      issuer: env.config.jwt.issuer,
      audience: env.config.jwt.audience,
      ttlSeconds: -10,
    });
    const wrongSecret = await new SignJWT({ tenant: s.tenantId, roles: ['patient'] })
      .setProtectedHeader({ alg: 'HS256' })
      .setSubject(s.patient.userId)
      .setIssuer(env.config.jwt.issuer)
      .setAudience(env.config.jwt.audience)
      .setExpirationTime('1h')
      .sign(new TextEncoder().encode('not-the-secret-not-the-secret-not-the-secret'));
    const notBearer = new Metadata();
    notBearer.set('authorization', `Basic ${Buffer.from('a:b').toString('base64')}`);
    const cases: [string, Metadata][] = [
      ['no authorization', new Metadata()],
      ['not a bearer', notBearer],
      ['garbage token', bearer('garbage')],
      ['wrong secret', bearer(wrongSecret)],
      ['expired', bearer(expired)],
    ];
    for (const [what, md] of cases) {
      for (const stream of [c.watchThread(md, s.thread.threadId), c.watchInbox(md)]) {
        await expectEnd(stream, status.UNAUTHENTICATED, 'UNAUTHENTICATED').catch((e: Error) =>
          expect.fail(`${what}: ${e.message}`),
        );
        expect(stream.responses, `${what}: nothing streamed`).to.deep.equal([]);
      }
    }
  });

  it('ends open streams with UNAUTHENTICATED when the token expires; a fresh token resumes without loss', async function () {
    this.timeout(30_000);
    const s = await threadScene(c.threads);
    const threadId = s.thread.threadId;
    const { md, exp } = await shortLived(s.patient, 4);
    const ofThread = c.watchThread(md, threadId);
    const ofInbox = c.watchInbox(md);
    await Promise.all([ofThread.caughtUp(), ofInbox.caughtUp()]);
    const early = (await send(c.messages, s.provider, threadId, 'while the token is valid')).message!;
    await Promise.all([ofThread.eventCount(1), ofInbox.eventCount(1)]);
    expect(Date.now(), 'the setup finished before the token expired').to.be.below(exp.getTime());

    for (const stream of [ofThread, ofInbox]) {
      const { info } = await expectEnd(stream, status.UNAUTHENTICATED, 'UNAUTHENTICATED');
      expect(Date.now(), 'not ended before exp').to.be.at.least(exp.getTime() - 50);
      expect(info?.metadata.resume_token, 'the last token received').to.equal(stream.lastToken);
      expect(stream.events).to.have.length(1);
    }
    expect(postedIds(ofThread)).to.deep.equal([early.messageId]);

    // The token that ended the stream is refused; a fresh one resumes exactly where it stopped.
    await expectEnd(c.watchThread(md, threadId, ofThread.lastToken), status.UNAUTHENTICATED, 'UNAUTHENTICATED');
    const late = (await send(c.messages, s.provider, threadId, 'after expiry')).message!;
    const resumed = c.watchThread(s.patient.md, threadId, ofThread.lastToken);
    const resumedInbox = c.watchInbox(s.patient.md, ofInbox.lastToken);
    await Promise.all([resumed.caughtUp(), resumedInbox.caughtUp()]);
    expect(postedIds(resumed)).to.deep.equal([late.messageId]);
    expect(resumed.cases).to.deep.equal(['messagePosted', 'caughtUp']);
    expect(resumedInbox.cases).to.deep.equal(['threadUpdated', 'caughtUp']);
  });

  it('refuses a stream whose token is valid but carries no known role with PERMISSION_DENIED', async () => {
    const s = await threadScene(c.threads);
    const token = await new SignJWT({ tenant: s.tenantId, roles: ['admin'] })
      .setProtectedHeader({ alg: 'HS256' })
      .setSubject(s.patient.userId)
      .setIssuer(env.config.jwt.issuer)
      .setAudience(env.config.jwt.audience)
      .setExpirationTime('1h')
      .sign(new TextEncoder().encode(env.config.jwt.secret!));
    const err: ServiceError | undefined = await c.watchThread(bearer(token), s.thread.threadId).ended;
    expect(err?.code).to.equal(status.PERMISSION_DENIED);
    expect(errorDetails(err!).info?.reason).to.equal('NO_ROLE');
  });

  // The removal check runs when an event is delivered, against the thread as it is then. A consumer
  // that is behind gets a batch holding an earlier thread change, later messages and the removal; the
  // stream must still deliver everything up to the removal event, and end only after it.
  it('ends a lagging stream after the removal event, not at an earlier thread change', async function () {
    this.timeout(120_000);
    const srv = await feedInstance({ FEED_STALL_MS: '60000' });
    const { threads: t, messages: m, feeds: f } = srv;
    let ofPatient: FeedStream<WatchThreadResponse> | undefined;
    try {
      const s = await threadScene(t);
      const threadId = s.thread.threadId;
      ofPatient = watchThread(f, s.patient.md, threadId);
      await ofPatient.caughtUp();
      ofPatient.call.pause();
      // Fill the client's buffers and the HTTP/2 window so the server waits for the client.
      const sent: string[] = [];
      const filler = 'x'.repeat(15_000);
      for (let i = 0; i < 60; i++)
        sent.push((await send(m, s.provider, threadId, `${i} ${filler}`)).message!.messageId);
      const added = await newUser(s.tenantId, 'patient');
      await call(
        t,
        t.addParticipant,
        { threadId, participant: participant(added.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT), etag: '' },
        s.provider.md,
      );
      sent.push((await send(m, s.provider, threadId, 'last one the patient may read')).message!.messageId);
      await call(t, t.removeParticipant, { threadId, userId: s.patient.userId, etag: '' }, s.provider.md);
      ofPatient.call.resume();

      const { info } = await expectEnd(ofPatient, status.PERMISSION_DENIED, 'THREAD_ACCESS_REVOKED');
      expect(
        ofPatient.events.slice(-3).map((e) => e.event?.$case),
        'the addition, the last message, then the removal',
      ).to.deep.equal(['threadChanged', 'messagePosted', 'threadChanged']);
      expect(info?.metadata.resume_token, 'ended after the last event').to.equal(ofPatient.lastToken);
      expect(postedIds(ofPatient), 'every message posted before the removal').to.deep.equal(sent);
      const removal = ofPatient.events.at(-1)!.event;
      expect(removal?.$case === 'threadChanged' && removal.value.participants.map((p) => p.userId)).to.not.include(
        s.patient.userId,
      );
    } finally {
      ofPatient?.cancel();
      await srv.close();
    }
  });
});
