import { type ServiceError, status } from '@grpc/grpc-js';
import { expect } from 'chai';
import type { FeedServiceClient, WatchSessionResponse } from '../../gen/comms/v1/feed.js';
import {
  AdmitState,
  SessionState,
  type VirtualParticipant,
  type VirtualSession,
  type VirtualSessionServiceClient,
} from '../../gen/comms/v1/session.js';
import { streams } from '../../src/domain/feed/feed.repository.js';
import { decodeResumeToken } from '../../src/domain/feed/feed.token.js';
import { newId } from '../../src/domain/ids.js';
import type { TestUser } from '../support/clients.js';
import { expectError } from '../support/clients.js';
import { expectUnique, feedClient, type FeedStream, watchSession } from '../support/feeds.js';
import {
  admit,
  createSession,
  getSession,
  joinSession,
  leaveSession,
  participantOf,
  removeParticipant,
  sessionClient,
  sessionScene,
} from '../support/sessions.js';

const A = AdmitState;
type Stream = FeedStream<WatchSessionResponse>;

/** The feed position a resume token names. */
function position(sessionId: string, token: string): number {
  return Number(decodeResumeToken(token, streams.session(sessionId), /^\d+$/));
}

/** A compact picture of a feed event: `P <user> <admit state>` or `S <state> <etag>`. */
function picture(r: WatchSessionResponse): string {
  const e = r.event;
  if (e?.$case === 'participantChanged') return `P ${e.value.userId} ${A[e.value.admitState]}`;
  if (e?.$case === 'sessionChanged') return `S ${SessionState[e.value.state]} ${e.value.etag}`;
  return e?.$case ?? 'none';
}

const P = (p: VirtualParticipant | undefined) => `P ${p!.userId} ${A[p!.admitState]}`;
const Sx = (s: VirtualSession | undefined) => `S ${SessionState[s!.state]} ${s!.etag}`;

/** Asserts a stream ended with `code` and ErrorInfo `reason`. */
function expectStreamError(stream: Stream, code: number, reason: string) {
  return expectError(
    stream.ended.then((e: ServiceError | undefined) => Promise.reject(e ?? new Error('the stream ended OK'))),
    code,
    reason,
  );
}

describe('FeedService.WatchSession', () => {
  let sessions: VirtualSessionServiceClient;
  let feeds: FeedServiceClient;
  const open: Stream[] = [];
  before(() => {
    sessions = sessionClient();
    feeds = feedClient();
  });
  afterEach(() => {
    for (const s of open.splice(0)) s.cancel();
  });
  after(() => {
    sessions.close();
    feeds.close();
  });

  const watch = (user: TestUser, sessionId: string, resumeToken = '') => {
    const s = watchSession(feeds, user.md, sessionId, resumeToken);
    open.push(s);
    return s;
  };

  /** The events after the caught_up marker. */
  const live = (s: Stream) =>
    s.responses.slice(s.cases.indexOf('caughtUp') + 1).filter((r) => r.event?.$case !== 'heartbeat');

  it('starts with a snapshot (same etag as GetSession), then caught_up, then every change in order', async () => {
    const scene = await sessionScene();
    const created = await createSession(sessions, scene);
    const id = created.sessionId;
    const stream = watch(scene.patient, id);
    await stream.caughtUp();
    expect(stream.cases).to.deep.equal(['sessionChanged', 'caughtUp']);
    const snapshot = stream.responses[0]!;
    const current = await getSession(sessions, scene.staff, id);
    expect(snapshot.event?.$case === 'sessionChanged' && snapshot.event.value).to.deep.equal(current);
    expect(current.etag).to.equal(created.etag);
    expect(stream.responses[1]!.resumeToken, 'caught_up resumes where the snapshot does').to.equal(
      snapshot.resumeToken,
    );

    const joined = await joinSession(sessions, scene.patient, id);
    await stream.waitFor(() => live(stream).length >= 2, 10_000, 'join events');
    const providerIn = await joinSession(sessions, scene.provider, id);
    await stream.waitFor(() => live(stream).length >= 4, 10_000, 'provider join events');
    const admitted = await admit(sessions, scene.provider, id, scene.patient.userId);
    await stream.waitFor(() => live(stream).length >= 6, 10_000, 'admit events');

    const events = live(stream);
    expect(events.map(picture)).to.deep.equal([
      `P ${scene.patient.userId} ADMIT_STATE_WAITING`,
      Sx(joined.session),
      `P ${scene.provider.userId} ADMIT_STATE_ADMITTED`,
      Sx(providerIn.session),
      `P ${scene.patient.userId} ADMIT_STATE_ADMITTED`,
      `S SESSION_STATE_IN_PROGRESS ${admitted.session!.etag}`,
    ]);
    expect(Sx(admitted.session)).to.equal(`S SESSION_STATE_IN_PROGRESS ${admitted.session!.etag}`);
    const last = events[5]!.event;
    expect(last?.$case === 'sessionChanged' && last.value).to.deep.equal(await getSession(sessions, scene.staff, id));
    const first = events[0]!.event;
    expect(first?.$case === 'participantChanged' && first.value).to.deep.equal(joined.participant);

    const positions = [snapshot, ...events].map((r) => position(id, r.resumeToken));
    for (let i = 1; i < positions.length; i++) {
      expect(positions[i], `token ${i} after token ${i - 1}`).to.be.greaterThan(positions[i - 1]!);
    }
    expect(live(stream)).to.have.length(6);
  });

  it('resumes after an earlier event: replays exactly the missed events in order, then caught_up, then live', async () => {
    const scene = await sessionScene();
    const id = (await createSession(sessions, scene)).sessionId;
    const all = watch(scene.staff, id);
    await all.caughtUp();
    await joinSession(sessions, scene.patient, id);
    await joinSession(sessions, scene.provider, id);
    await all.waitFor(() => live(all).length >= 4, 10_000, 'two changes');
    const seen = live(all)[1]!; // the session_changed of the patient's join
    const midChange = live(all)[2]!; // the participant_changed of the provider's join
    await admit(sessions, scene.provider, id, scene.patient.userId);
    await joinSession(sessions, scene.family, id);
    await all.waitFor(() => live(all).length >= 8, 10_000, 'four changes');
    const missed = live(all).slice(2);

    const resumed = watch(scene.patient, id, seen.resumeToken);
    await resumed.caughtUp();
    expect(resumed.cases).to.deep.equal([...missed.map((r) => r.event!.$case), 'caughtUp']);
    expect(resumed.events).to.deep.equal(missed);
    expectUnique(resumed.events.map((r) => r.resumeToken));

    const fromMid = watch(scene.patient, id, midChange.resumeToken);
    await fromMid.caughtUp();
    expect(fromMid.events).to.deep.equal(missed.slice(1));

    const left = await leaveSession(sessions, scene.family, id);
    await resumed.waitFor(() => live(resumed).length >= 2, 10_000, 'leave events');
    expect(live(resumed).map(picture)).to.deep.equal([P(left.participant), Sx(left.session)]);
    await all.waitFor(() => live(all).length >= 10, 10_000, 'leave events on the first stream');
    expect(live(resumed)).to.deep.equal(live(all).slice(8));
    expect(resumed.events).to.have.length(missed.length + 2);
  });

  it('refuses outsiders and other tenants (NOT_FOUND SESSION_NOT_FOUND), unknown sessions, and tokens of other feeds', async () => {
    const scene = await sessionScene();
    const id = (await createSession(sessions, scene)).sessionId;
    const other = (await createSession(sessions, scene)).sessionId;
    for (const user of [scene.outsiderPatient, scene.outsiderProvider, scene.foreignStaff, scene.foreignService]) {
      await expectStreamError(watch(user, id), status.NOT_FOUND, 'SESSION_NOT_FOUND');
    }
    const mine = watch(scene.patient, id);
    await mine.caughtUp();
    await expectStreamError(watch(scene.outsiderPatient, id, mine.lastToken), status.NOT_FOUND, 'SESSION_NOT_FOUND');
    await expectStreamError(watch(scene.staff, newId()), status.NOT_FOUND, 'SESSION_NOT_FOUND');
    const wrongFeed = await watch(scene.patient, other, mine.lastToken).ended;
    expect(wrongFeed?.code, 'a token of another session feed').to.equal(status.INVALID_ARGUMENT);
  });

  it('lets staff of the tenant watch, and a removed participant too (it sees its REMOVED entry)', async () => {
    const scene = await sessionScene();
    const id = (await createSession(sessions, scene)).sessionId;
    const ofStaff = watch(scene.staff, id);
    const ofService = watch(scene.service, id);
    const ofPatient = watch(scene.patient, id);
    await Promise.all([ofStaff.caughtUp(), ofService.caughtUp(), ofPatient.caughtUp()]);

    const removed = await removeParticipant(sessions, scene.provider, id, scene.patient.userId);
    expect(removed.participant!.admitState).to.equal(A.ADMIT_STATE_REMOVED);
    for (const s of [ofStaff, ofService, ofPatient]) {
      await s.waitFor(() => live(s).length >= 2, 10_000, 'removal events');
      expect(live(s).map(picture)).to.deep.equal([P(removed.participant), Sx(removed.session)]);
    }
    // The removed participant's stream stays open and goes on.
    const joined = await joinSession(sessions, scene.family, id);
    await ofPatient.waitFor(() => live(ofPatient).length >= 4, 10_000, 'later events');
    expect(live(ofPatient).slice(2).map(picture)).to.deep.equal([P(joined.participant), Sx(joined.session)]);

    const again = watch(scene.patient, id);
    await again.caughtUp();
    const snap = again.responses[0]!.event;
    expect(snap?.$case).to.equal('sessionChanged');
    if (snap?.$case === 'sessionChanged') {
      expect(participantOf(snap.value, scene.patient.userId).admitState).to.equal(A.ADMIT_STATE_REMOVED);
      expect(snap.value.etag).to.equal(joined.session!.etag);
    }
  });
});
