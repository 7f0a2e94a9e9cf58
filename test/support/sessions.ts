import { credentials } from '@grpc/grpc-js';
import { expect } from 'chai';
import { ParticipantRole } from '../../gen/comms/v1/thread.js';
import {
  type SessionEvent,
  VirtualParticipant,
  type VirtualSession,
  VirtualSessionServiceClient,
} from '../../gen/comms/v1/session.js';
import { type App, startApp } from '../../src/app.js';
import type { Clock } from '../../src/domain/clock.js';
import type { SessionSettings } from '../../src/domain/session/session.policy.js';
import { call, newTenant, newUser, type TestUser } from './clients.js';
import { env, testConfig } from './hooks.js';
import { db } from './threads.js';

/** A VirtualSessionService client on the shared test server (or `address`). */
export function sessionClient(address = env.address): VirtualSessionServiceClient {
  return new VirtualSessionServiceClient(address, credentials.createInsecure());
}

/** A participant as a request names it (output-only fields left empty). */
export function sessionParticipant(userId: string, role: ParticipantRole): VirtualParticipant {
  return VirtualParticipant.fromPartial({ userId, role });
}

const MINUTE = 60_000;

/**
 * One tenant with the callers session tests need: two providers, a patient and a family member (tokens
 * with role patient), staff and service of the tenant (govern, take no part), a provider and a patient
 * of the tenant who take no part, and staff and service of another tenant.
 */
export interface SessionScene {
  readonly tenantId: string;
  readonly provider: TestUser;
  readonly provider2: TestUser;
  readonly patient: TestUser;
  readonly family: TestUser;
  readonly staff: TestUser;
  readonly service: TestUser;
  readonly outsiderProvider: TestUser;
  readonly outsiderPatient: TestUser;
  readonly foreignStaff: TestUser;
  readonly foreignService: TestUser;
}

export async function sessionScene(): Promise<SessionScene> {
  const tenantId = newTenant();
  const foreign = newTenant();
  const [provider, provider2, patient, family, staff, service, outsiderProvider, outsiderPatient, fStaff, fService] =
    await Promise.all([
      newUser(tenantId, 'provider'),
      newUser(tenantId, 'provider'),
      newUser(tenantId, 'patient'),
      newUser(tenantId, 'patient'),
      newUser(tenantId, 'staff'),
      newUser(tenantId, 'service'),
      newUser(tenantId, 'provider'),
      newUser(tenantId, 'patient'),
      newUser(foreign, 'staff'),
      newUser(foreign, 'service'),
    ]);
  return {
    tenantId,
    provider,
    provider2,
    patient,
    family,
    staff,
    service,
    outsiderProvider,
    outsiderPatient,
    foreignStaff: fStaff,
    foreignService: fService,
  };
}

/**
 * Creates a session as `creator` (default: the scene's provider, with provider2 as a second PROVIDER,
 * the patient and the family member). Default schedule: starts now, ends in 30 minutes, so the waiting
 * room is open at once.
 */
export async function createSession(
  client: VirtualSessionServiceClient,
  scene: SessionScene,
  opts: {
    creator?: TestUser;
    participants?: VirtualParticipant[];
    startAt?: Date;
    endAt?: Date;
    opensAt?: Date;
    threadId?: string;
    requestId?: string;
    now?: Date;
  } = {},
): Promise<VirtualSession> {
  const now = opts.now ?? new Date();
  const startAt = opts.startAt ?? now;
  const res = await call(
    client,
    client.createSession,
    {
      threadId: opts.threadId ?? '',
      scheduledStartAt: startAt,
      scheduledEndAt: opts.endAt ?? new Date(startAt.getTime() + 30 * MINUTE),
      waitingRoomOpensAt: opts.opensAt,
      participants: opts.participants ?? [
        sessionParticipant(scene.provider2.userId, ParticipantRole.PARTICIPANT_ROLE_PROVIDER),
        sessionParticipant(scene.patient.userId, ParticipantRole.PARTICIPANT_ROLE_PATIENT),
        sessionParticipant(scene.family.userId, ParticipantRole.PARTICIPANT_ROLE_FAMILY),
      ],
      requestId: opts.requestId ?? '',
    },
    (opts.creator ?? scene.provider).md,
  );
  expect(res.session, 'CreateSession returns the session').to.not.equal(undefined);
  return res.session!;
}

export async function getSession(client: VirtualSessionServiceClient, user: TestUser, sessionId: string) {
  return (await call(client, client.getSession, { sessionId }, user.md)).session!;
}

export function joinSession(client: VirtualSessionServiceClient, user: TestUser, sessionId: string) {
  return call(client, client.joinSession, { sessionId }, user.md);
}

export function leaveSession(client: VirtualSessionServiceClient, user: TestUser, sessionId: string, reason = '') {
  return call(client, client.leaveSession, { sessionId, reason }, user.md);
}

export function admit(client: VirtualSessionServiceClient, user: TestUser, sessionId: string, userId: string) {
  return call(client, client.admitParticipant, { sessionId, userId, reason: '' }, user.md);
}

export function deny(client: VirtualSessionServiceClient, user: TestUser, sessionId: string, userId: string) {
  return call(client, client.denyParticipant, { sessionId, userId, reason: '' }, user.md);
}

export function removeParticipant(
  client: VirtualSessionServiceClient,
  user: TestUser,
  sessionId: string,
  userId: string,
) {
  return call(client, client.removeSessionParticipant, { sessionId, userId, reason: '' }, user.md);
}

/** Every event of a session (optionally about one participant), oldest first, read as `user`. */
export async function listEvents(
  client: VirtualSessionServiceClient,
  user: TestUser,
  sessionId: string,
  subjectUserId = '',
): Promise<SessionEvent[]> {
  const out: SessionEvent[] = [];
  let pageToken = '';
  do {
    const res = await call(
      client,
      client.listSessionEvents,
      { sessionId, subjectUserId, pageSize: 200, pageToken },
      user.md,
    );
    out.push(...res.events);
    pageToken = res.nextPageToken;
  } while (pageToken !== '');
  return out;
}

/** The participant entry of `userId` in a session as returned. */
export function participantOf(session: VirtualSession, userId: string): VirtualParticipant {
  const p = session.participants.find((x) => x.userId === userId);
  expect(p, `participant ${userId}`).to.not.equal(undefined);
  return p!;
}

/** Sets a tenant's session settings (the rest from the defaults row, tenant ''). */
export async function sessionSettings(tenantId: string, settings: Partial<SessionSettings>): Promise<void> {
  const columns: Record<keyof SessionSettings, string> = {
    leadMs: 'lead_ms',
    noShowMs: 'no_show_ms',
    waitingMs: 'waiting_ms',
    rejoinAllowed: 'rejoin_allowed',
    rejoinGraceMs: 'rejoin_grace_ms',
    providerGraceMs: 'provider_grace_ms',
    maxDurationMs: 'max_duration_ms',
    overrunMs: 'overrun_ms',
  };
  const set = Object.entries(settings).map(([k, v]) => [columns[k as keyof SessionSettings], v] as const);
  await db().query(
    `insert into session_settings select $1, lead_ms, no_show_ms, waiting_ms, rejoin_allowed, rejoin_grace_ms,
            provider_grace_ms, max_duration_ms, overrun_ms from session_settings where tenant_id = ''
     on conflict (tenant_id) do nothing`,
    [tenantId],
  );
  if (set.length === 0) return;
  await db().query(
    `update session_settings set ${set.map(([c], i) => `${c} = $${i + 2}`).join(', ')} where tenant_id = $1`,
    [tenantId, ...set.map(([, v]) => v)],
  );
}

/** A clock tests move by hand. */
export class ManualClock implements Clock {
  #now: number;

  constructor(start = new Date()) {
    this.#now = start.getTime();
  }

  now(): Date {
    return new Date(this.#now);
  }

  /** Moves the clock forward by `ms`. */
  advance(ms: number): Date {
    this.#now += ms;
    return this.now();
  }

  set(at: Date): void {
    this.#now = at.getTime();
  }
}

/**
 * An instance on the test database whose clock the suite moves by hand, with no timer jobs of its own
 * (SESSION_TIMERS=false): the suite drives the server's clock with `app.sessionTimers.runDue(tenantId)`.
 * Started in `before`, stopped in `after`.
 */
export function useClockApp(overrides: Record<string, string> = {}): {
  readonly app: App;
  readonly clock: ManualClock;
  readonly address: string;
} {
  const holder = { clock: new ManualClock() } as { app: App; clock: ManualClock; address: string };
  before(async function () {
    this.timeout(30_000);
    holder.app = await startApp(testConfig({ SESSION_TIMERS: 'false', ...overrides }), { clock: holder.clock });
    holder.address = `127.0.0.1:${holder.app.port}`;
  });
  after(async function () {
    this.timeout(30_000);
    await holder.app?.shutdown();
  });
  return holder;
}
