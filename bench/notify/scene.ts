/**
 * The notification benchmark's tenant, users and threads (made over gRPC as real callers would), and the
 * load that creates the intents: SendMessage or RequestNotification calls, closed loop, as fast as the
 * service answers.
 *
 * - `send`: `threads` 2-party threads; thread i is created by provider i mod P (one of `senders`
 *   providers) with patient i as the only other participant. Message k goes into thread k mod T, sent
 *   by its provider: each message makes exactly one MESSAGE_POSTED intent (for the patient).
 * - `request`: one `service` user calls RequestNotification for patient k mod R with dedupe key
 *   `<run>-k`, template `generic` and the plan [push, at once, ALWAYS]: one SERVICE_EVENT intent each.
 */
import { randomBytes } from 'node:crypto';
import { Client, credentials, type ServiceError } from '@grpc/grpc-js';
import { MessageServiceService, type SendMessageResponse } from '../../gen/comms/v1/message.js';
import {
  Channel,
  ChannelPlanCondition,
  NotificationServiceService,
  type RequestNotificationResponse,
} from '../../gen/comms/v1/notification.js';
import { ThreadServiceClient } from '../../gen/comms/v1/thread.js';
import { mapLimit } from '../common.js';
import { bearer, codeName, describeError } from '../protocol.js';
import { createThread, devUser, SETUP_CONCURRENCY, type User } from '../scenarios.js';

export const NOTIFY_SCENARIOS = {
  send: 'SendMessage into 2-party threads: each message makes one MESSAGE_POSTED intent (default plan: push now, SMS after 15 min if unread)',
  request: 'RequestNotification as a `service` user: one SERVICE_EVENT intent per call, plan [push, at once, ALWAYS]',
} as const;

export type NotifyScenario = keyof typeof NOTIFY_SCENARIOS;

export function epochNow(): number {
  return performance.timeOrigin + performance.now();
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

interface SendThread {
  readonly threadId: string;
  readonly sender: User;
}

/** One run's tenant and callers. */
export class NotifyScene {
  readonly tenant = `notify-${randomBytes(4).toString('hex')}`;
  readonly runTag = randomBytes(3).toString('hex');
  threads: SendThread[] = [];
  recipients: string[] = [];
  service: User | undefined;

  constructor(readonly scenario: NotifyScenario) {}

  async prepare(address: string, o: { threads: number; senders: number; recipients: number }): Promise<void> {
    if (this.scenario === 'request') {
      this.service = await devUser(this.tenant, 'notify-bench-service', 'service');
      this.recipients = Array.from({ length: o.recipients }, (_, i) => `notify-patient-${i}`);
      return;
    }
    const client = new ThreadServiceClient(address, credentials.createInsecure());
    try {
      const providers = await Promise.all(
        Array.from({ length: o.senders }, (_, p) => devUser(this.tenant, `notify-provider-${p}`, 'provider')),
      );
      const patients = await Promise.all(
        Array.from({ length: o.threads }, (_, i) => devUser(this.tenant, `notify-patient-${i}`, 'patient')),
      );
      this.threads = await mapLimit(patients, SETUP_CONCURRENCY, async (patient, i) => {
        const sender = providers[i % providers.length]!;
        try {
          return { threadId: await createThread(client, sender, `notify bench thread ${i}`, [patient]), sender };
        } catch (err) {
          throw new Error(`setup: CreateThread failed: ${describeError(err)}`);
        }
      });
    } finally {
      client.close();
    }
  }
}

/** What the creating calls did. */
export interface CreateLog {
  readonly calls: number;
  readonly ok: number;
  /** Epoch ms of the first call issued and of the last answer. */
  readonly firstIssuedMs: number;
  readonly lastAnsweredMs: number;
  /** Latency of the OK calls, ms. */
  readonly callMs: Float64Array;
  readonly errors: Record<string, number>;
  readonly errorSamples: Record<string, string>;
}

/**
 * Makes `count` calls (`scene.scenario` decides which), `inFlight` at a time (closed loop: a slot issues
 * its next call as soon as the previous one answered), spread over the replicas (call k to replica
 * k mod R) and over two HTTP/2 connections per replica.
 */
export async function createIntents(
  scene: NotifyScene,
  o: { addresses: readonly string[]; count: number; inFlight: number; deadlineMs: number },
): Promise<CreateLog> {
  const clients = o.addresses.map((address) =>
    Array.from(
      { length: 2 },
      () =>
        new Client(address, credentials.createInsecure(), {
          'grpc.use_local_subchannel_pool': 1,
          'grpc.enable_channelz': 0,
          'grpc.enable_retries': 0,
        }),
    ),
  );
  const metadata = new Map<string, ReturnType<typeof bearer>>();
  const md = (u: User) => {
    let m = metadata.get(u.userId);
    if (!m) metadata.set(u.userId, (m = bearer(u.token)));
    return m;
  };
  const callMs: number[] = [];
  const errors: Record<string, number> = {};
  const errorSamples: Record<string, string> = {};
  const fail = (code: string, message: string) => {
    errors[code] = (errors[code] ?? 0) + 1;
    errorSamples[code] ??= message;
  };
  let ok = 0;
  let lastAnsweredMs = 0;

  const one = (k: number) =>
    new Promise<void>((resolve) => {
      const R = o.addresses.length;
      const pool = clients[k % R]!;
      const client = pool[Math.floor(k / R) % pool.length]!;
      const t0 = epochNow();
      const deadline = { deadline: new Date(Date.now() + o.deadlineMs) };
      const done = (err: ServiceError | null, good: boolean, why: string) => {
        const t1 = epochNow();
        lastAnsweredMs = Math.max(lastAnsweredMs, t1);
        if (err) fail(codeName(err), err.details || err.message);
        else if (!good) fail('BAD_RESPONSE', why);
        else {
          ok++;
          callMs.push(t1 - t0);
        }
        resolve();
      };
      if (scene.scenario === 'send') {
        const t = scene.threads[k % scene.threads.length]!;
        const m = MessageServiceService.sendMessage;
        client.makeUnaryRequest(
          m.path,
          m.requestSerialize,
          m.responseDeserialize,
          {
            threadId: t.threadId,
            clientMutationId: `notify-${scene.runTag}-${k}`,
            body: `notify bench ${scene.runTag} message ${k}`,
            clientSentAt: new Date(),
          },
          md(t.sender),
          deadline,
          (err: ServiceError | null, res?: SendMessageResponse) =>
            done(err, !!res?.message?.messageId && !res.replayed, 'no new message in the answer'),
        );
      } else {
        const m = NotificationServiceService.requestNotification;
        client.makeUnaryRequest(
          m.path,
          m.requestSerialize,
          m.responseDeserialize,
          {
            recipientUserId: scene.recipients[k % scene.recipients.length]!,
            dedupeKey: `notify-${scene.runTag}-${k}`,
            templateKey: 'generic',
            threadId: '',
            messageId: '',
            sessionId: '',
            urgent: false,
            channelPlan: [
              {
                channel: Channel.CHANNEL_PUSH,
                delay: { seconds: '0', nanos: 0 },
                condition: ChannelPlanCondition.CHANNEL_PLAN_CONDITION_ALWAYS,
              },
            ],
          },
          md(scene.service!),
          deadline,
          (err: ServiceError | null, res?: RequestNotificationResponse) =>
            done(err, !!res?.notification?.notificationId, 'no intent in the answer'),
        );
      }
    });

  const firstIssuedMs = epochNow();
  let next = 0;
  const slot = async () => {
    while (next < o.count) await one(next++);
  };
  try {
    await Promise.all(Array.from({ length: Math.min(o.inFlight, o.count) }, slot));
  } finally {
    for (const c of clients.flat()) c.close();
  }
  return {
    calls: o.count,
    ok,
    firstIssuedMs,
    lastAnsweredMs,
    callMs: Float64Array.from(callMs),
    errors,
    errorSamples,
  };
}
