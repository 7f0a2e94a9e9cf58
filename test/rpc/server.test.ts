import {
  credentials,
  Metadata,
  status,
  type Client,
  type GrpcObject,
  type ServiceClientConstructor,
} from '@grpc/grpc-js';
import { GrpcReflection } from 'grpc-js-reflection-client';
import { type JWTPayload, SignJWT, UnsecuredJWT } from 'jose';
import { expect } from 'chai';
import { ThreadServiceClient } from '../../gen/comms/v1/thread.js';
import { signDevToken } from '../../src/infra/auth/dev-token.js';
import { SERVICE_NAMES } from '../../src/rpc/server.js';
import {
  bearer,
  call,
  callError,
  expectError,
  newTenant,
  newUser,
  messageClient,
  type TestUser,
  threadClient,
} from '../support/clients.js';
import { send } from '../support/messages.js';
import { waitFor } from '../support/wait.js';
import { env } from '../support/hooks.js';
import { checkHealth, healthClient } from '../support/health.js';

describe('server: health', () => {
  it('reports SERVING for the server and every comms.v1 service', async () => {
    const client = healthClient();
    try {
      expect(await checkHealth(client)).to.equal('SERVING');
      for (const name of SERVICE_NAMES) expect(await checkHealth(client, name), name).to.equal('SERVING');
    } finally {
      client.close();
    }
  });

  it('answers NOT_FOUND for a service it does not know', async () => {
    const client = healthClient();
    try {
      const err = await callError(checkHealth(client, 'no.such.Service'));
      expect(err.code).to.equal(status.NOT_FOUND);
    } finally {
      client.close();
    }
  });
});

/**
 * A client of `service` built from nothing but the descriptors reflection serves, as grpcurl does:
 * requests and responses are the proto's JSON shapes (field and enum names as in the proto).
 */
async function reflectedClient(service: string) {
  const reflection = new GrpcReflection(env.address, credentials.createInsecure());
  const descriptor = await reflection.getDescriptorBySymbol(`comms.v1.${service}`);
  const pkg = descriptor.getPackageObject({ keepCase: true, enums: String, defaults: true, longs: String });
  const Ctor = ((pkg.comms as GrpcObject).v1 as GrpcObject)[service] as ServiceClientConstructor;
  type Callback = (err: Error | null, res: Record<string, unknown>) => void;
  type DynamicUnary = (req: object, md: Metadata, cb: Callback) => void;
  const client = new Ctor(env.address, credentials.createInsecure()) as unknown as Client &
    Record<string, DynamicUnary>;
  return {
    unary: (method: string, req: object, as: TestUser) =>
      new Promise<Record<string, unknown>>((resolve, reject) =>
        client[method]!(req, as.md, (err, res) => (err ? reject(err) : resolve(res))),
      ),
    close: () => client.close(),
  };
}

describe('server: reflection (what grpcurl uses)', () => {
  it('lists every comms.v1 service and grpc.health.v1', async () => {
    const reflection = new GrpcReflection(env.address, credentials.createInsecure());
    const services = await reflection.listServices();
    expect(services).to.include.members([...SERVICE_NAMES, 'grpc.health.v1.Health']);
    const methods = (await reflection.listMethods('comms.v1.ThreadService')).map((m) => m.name);
    expect(methods).to.include.members(['CreateThread', 'GetThread', 'ListThreads', 'EscalateThread']);
  });

  it('calls CreateThread and GetThread with nothing but the descriptors reflection serves', async () => {
    const client = await reflectedClient('ThreadService');
    const user = await newUser(newTenant(), 'provider');
    const unary = (method: string, req: object) => client.unary(method, req, user);
    try {
      // The JSON a grpcurl user would type, field names as in the proto.
      const created = await unary('CreateThread', {
        subject: 'via reflection',
        participants: [{ user_id: 'patient-1', role: 'PARTICIPANT_ROLE_PATIENT' }],
      });
      const thread = created.thread as Record<string, unknown>;
      expect(thread.state).to.equal('THREAD_STATE_ACTIVE');
      const got = await unary('GetThread', { thread_id: thread.thread_id });
      expect((got.thread as Record<string, unknown>).subject).to.equal('via reflection');
    } finally {
      client.close();
    }
  });
  it('requests a notification and lists it with nothing but the descriptors reflection serves', async () => {
    const client = await reflectedClient('NotificationService');
    const tenant = newTenant();
    const [svc, patient] = await Promise.all([newUser(tenant, 'service'), newUser(tenant, 'patient')]);
    const unary = client.unary;
    try {
      // The JSON of the README's grpcurl example, field names and enum names as in the proto.
      const req = {
        recipient_user_id: patient.userId,
        dedupe_key: 'invoice-42',
        template_key: 'document_available',
        channel_plan: [
          { channel: 'CHANNEL_IN_APP', delay: { seconds: '0' }, condition: 'CHANNEL_PLAN_CONDITION_ALWAYS' },
        ],
      };
      const first = (await unary('RequestNotification', req, svc)).notification as Record<string, unknown>;
      expect(first.kind).to.equal('NOTIFICATION_KIND_SERVICE_EVENT');
      expect(first.deep_link).to.equal('comms://notifications');
      const again = (await unary('RequestNotification', req, svc)).notification as Record<string, unknown>;
      expect(again.notification_id).to.equal(first.notification_id);
      const listed = await unary('ListNotifications', {}, patient);
      const ids = (listed.notifications as Record<string, unknown>[]).map((n) => n.notification_id);
      expect(ids).to.deep.equal([first.notification_id]);
    } finally {
      client.close();
    }
  });

  it('lists VirtualSessionService’s methods and creates and reads a session with nothing but reflection', async () => {
    const reflection = new GrpcReflection(env.address, credentials.createInsecure());
    const methods = (await reflection.listMethods('comms.v1.VirtualSessionService')).map((m) => m.name);
    expect(methods).to.have.members([
      'CreateSession',
      'GetSession',
      'ListSessions',
      'UpdateSession',
      'RequestTransition',
      'InviteParticipant',
      'JoinSession',
      'LeaveSession',
      'AdmitParticipant',
      'DenyParticipant',
      'RemoveSessionParticipant',
      'ListSessionEvents',
    ]);
    const client = await reflectedClient('VirtualSessionService');
    const user = await newUser(newTenant(), 'provider');
    const unary = (method: string, req: object) => client.unary(method, req, user);
    const seconds = (offsetMs: number) => ({ seconds: String(Math.floor((Date.now() + offsetMs) / 1000)) });
    try {
      // The JSON a grpcurl user would type: field and enum names as in the proto, timestamps as messages.
      const created = await unary('CreateSession', {
        scheduled_start_at: seconds(2 * 3_600_000),
        scheduled_end_at: seconds(2.5 * 3_600_000),
        participants: [{ user_id: 'patient-1', role: 'PARTICIPANT_ROLE_PATIENT' }],
        request_id: 'via-reflection',
      });
      const session = created.session as Record<string, unknown>;
      expect(session.state).to.equal('SESSION_STATE_SCHEDULED');
      expect(session.state_reason).to.equal('CREATED');
      const got = (await unary('GetSession', { session_id: session.session_id })).session as Record<string, unknown>;
      expect(got.session_id).to.equal(session.session_id);
      expect(got.etag).to.equal('"1"');
      expect(
        (got.participants as Record<string, unknown>[]).map((p) => [p.user_id, p.role, p.admit_state]),
      ).to.deep.equal([
        [user.userId, 'PARTICIPANT_ROLE_PROVIDER', 'ADMIT_STATE_INVITED'],
        ['patient-1', 'PARTICIPANT_ROLE_PATIENT', 'ADMIT_STATE_INVITED'],
      ]);
    } finally {
      client.close();
    }
  });

  it('streams WatchThread to a client built from reflection alone, as grpcurl would', async () => {
    const reflection = new GrpcReflection(env.address, credentials.createInsecure());
    const descriptor = await reflection.getDescriptorBySymbol('comms.v1.FeedService');
    const pkg = descriptor.getPackageObject({
      keepCase: true,
      enums: String,
      defaults: true,
      longs: String,
      oneofs: true,
    });
    const Ctor = ((pkg.comms as GrpcObject).v1 as GrpcObject).FeedService as ServiceClientConstructor;
    type DynamicStream = (req: object, md: Metadata) => NodeJS.EventEmitter & { cancel(): void };
    const feeds = new Ctor(env.address, credentials.createInsecure()) as unknown as Client &
      Record<string, DynamicStream>;
    const threads = threadClient();
    const messages = messageClient();
    const user = await newUser(newTenant(), 'provider');
    let stream: ReturnType<DynamicStream> | undefined;
    try {
      const { thread } = await call(
        threads,
        threads.createThread,
        { subject: 'streamed', participants: [], requestId: '' },
        user.md,
      );
      stream = feeds.WatchThread!({ thread_id: thread!.threadId }, user.md);
      stream.on('error', () => undefined);
      const received: Record<string, unknown>[] = [];
      const cases = () => received.map((r) => r.event);
      stream.on('data', (r: Record<string, unknown>) => received.push(r));
      await waitFor(async () => cases().includes('caught_up'));
      await send(messages, user, thread!.threadId, 'over reflection');
      await waitFor(async () => cases().includes('message_posted'));
      const posted = received.find((r) => r.event === 'message_posted')!;
      expect((posted.message_posted as Record<string, unknown>).body).to.equal('over reflection');
      expect(posted.resume_token).to.be.a('string').and.not.equal('');
    } finally {
      stream?.cancel();
      feeds.close();
      threads.close();
      messages.close();
    }
  });
});

describe('server: authentication', () => {
  let client: ThreadServiceClient;
  before(() => (client = threadClient()));
  after(() => client.close());
  const list = (md: Metadata) => call(client, client.listThreads, { pageSize: 0, pageToken: '', state: 0 }, md);
  /** A correctly signed, unexpired token for subject `someone` carrying exactly `payload` besides. */
  const signedWith = (payload: JWTPayload) =>
    new SignJWT(payload)
      .setProtectedHeader({ alg: 'HS256' })
      .setSubject('someone')
      .setIssuer(env.config.jwt.issuer)
      .setAudience(env.config.jwt.audience)
      .setExpirationTime('1h')
      .sign(new TextEncoder().encode(env.config.jwt.secret!));
  const claims = (tenant: string) => ({
    sub: 'someone',
    tenant,
    roles: ['provider'] as const,
    issuer: env.config.jwt.issuer,
    audience: env.config.jwt.audience,
  });

  it('accepts a valid token', async () => {
    const user = await newUser(newTenant(), 'patient');
    const res = await list(user.md);
    expect(res.threads).to.deep.equal([]);
  });

  it('refuses a call without authorization metadata', async () => {
    await expectError(list(new Metadata()), status.UNAUTHENTICATED, 'UNAUTHENTICATED');
  });

  it('refuses a malformed authorization header', async () => {
    const md = new Metadata();
    md.set('authorization', 'Basic dXNlcjpwYXNz');
    await expectError(list(md), status.UNAUTHENTICATED, 'UNAUTHENTICATED');
  });

  it('refuses an expired token', async () => {
    const token = await signDevToken(env.config.jwt.secret!, { ...claims(newTenant()), ttlSeconds: -120 });
    const { err } = await expectError(list(bearer(token)), status.UNAUTHENTICATED, 'UNAUTHENTICATED');
    expect(err.details).to.match(/expired/);
  });

  it('refuses a token that expired after it was accepted (verified tokens are cached only until exp)', async function () {
    this.timeout(10_000);
    const token = await signDevToken(env.config.jwt.secret!, { ...claims(newTenant()), ttlSeconds: 2 });
    expect((await list(bearer(token))).threads).to.deep.equal([]);
    // exp has whole-second precision: wait until it has certainly passed.
    await new Promise((r) => setTimeout(r, 3100));
    await expectError(list(bearer(token)), status.UNAUTHENTICATED, 'UNAUTHENTICATED');
  });

  it('refuses a token signed with another secret', async () => {
    const token = await signDevToken('x'.repeat(40), claims(newTenant()));
    await expectError(list(bearer(token)), status.UNAUTHENTICATED, 'UNAUTHENTICATED');
  });

  it('refuses an unsigned token (alg: none)', async () => {
    const token = new UnsecuredJWT({ tenant: newTenant(), roles: ['staff'] })
      .setSubject('mallory')
      .setIssuer(env.config.jwt.issuer)
      .setAudience(env.config.jwt.audience)
      .setExpirationTime('1h')
      .encode();
    await expectError(list(bearer(token)), status.UNAUTHENTICATED, 'UNAUTHENTICATED');
  });

  it('refuses a wrong audience or issuer', async () => {
    const wrongAud = await signDevToken(env.config.jwt.secret!, { ...claims(newTenant()), audience: 'other' });
    await expectError(list(bearer(wrongAud)), status.UNAUTHENTICATED, 'UNAUTHENTICATED');
    const wrongIss = await signDevToken(env.config.jwt.secret!, { ...claims(newTenant()), issuer: 'other' });
    await expectError(list(bearer(wrongIss)), status.UNAUTHENTICATED, 'UNAUTHENTICATED');
  });

  it('refuses a token without tenant', async () => {
    const token = await signedWith({ roles: ['provider'] });
    const { err } = await expectError(list(bearer(token)), status.UNAUTHENTICATED, 'UNAUTHENTICATED');
    expect(err.details).to.match(/tenant/);
  });

  it('refuses a token whose roles are all unknown (no escalation by inventing a role)', async () => {
    const token = await signedWith({ tenant: newTenant(), roles: ['admin', 'root'] });
    await expectError(list(bearer(token)), status.PERMISSION_DENIED, 'NO_ROLE');
  });
});

describe('server: errors', () => {
  let client: ThreadServiceClient;
  let user: TestUser;
  before(async () => {
    client = threadClient();
    user = await newUser(newTenant(), 'provider');
  });
  after(() => client.close());

  it('sends google.rpc.Status with ErrorInfo and BadRequest that a client decodes', async () => {
    const { badRequest, status: rpcStatus } = await expectError(
      call(client, client.getThread, { threadId: 'not-a-uuid' }, user.md),
      status.INVALID_ARGUMENT,
      'INVALID_ARGUMENT',
    );
    expect(rpcStatus.code).to.equal(status.INVALID_ARGUMENT);
    expect(badRequest?.fieldViolations.map((v) => v.field)).to.deep.equal(['thread_id']);
  });

  it('refuses a request larger than the receive limit', async () => {
    const big = { subject: 'x'.repeat(env.config.grpc.maxReceiveBytes + 10), participants: [], requestId: '' };
    const err = await callError(call(client, client.createThread, big, user.md));
    expect(err.code).to.equal(status.RESOURCE_EXHAUSTED);
  });

  it('honours a deadline that has already passed', async () => {
    const list = { pageSize: 0, pageToken: '', state: 0 };
    const err = await callError(
      call(client, client.listThreads, list, user.md, { deadline: new Date(Date.now() - 1) }),
    );
    expect(err.code).to.equal(status.DEADLINE_EXCEEDED);
  });
});
