/**
 * The soak's data, made over gRPC as real callers would, on top of the feed benchmark's scene
 * (bench/feeds/scene.ts): `threads` two-party threads (thread i created by provider i mod P, with patient i
 * as the other participant), seeded with a few messages each; the streams that watch them; and each load
 * process's share of the threads.
 */
import { credentials } from '@grpc/grpc-js';
import { MessageServiceClient } from '../../gen/comms/v1/message.js';
import { mapLimit } from '../common.js';
import type { StreamPlan } from '../feeds/protocol.js';
import type { FeedScene } from '../feeds/scene.js';
import { bearer, call, describeError, messageBody } from '../protocol.js';
import { SETUP_CONCURRENCY } from '../scenarios.js';
import type { SoakThread } from './protocol.js';

/**
 * Sends `perThread` messages into every spread thread of `scene` (by its provider, alternating replicas),
 * before any stream is open (streams start live, so no subscriber ever sees these). Their ids, per
 * thread, oldest first.
 */
export async function seedMessages(
  scene: FeedScene,
  addresses: readonly string[],
  perThread: number,
  bodyBytes: number,
): Promise<string[][]> {
  const clients = addresses.map((a) => new MessageServiceClient(a, credentials.createInsecure()));
  try {
    const todo = scene.spread.flatMap((t, i) => Array.from({ length: perThread }, (_, j) => ({ t, i, j })));
    const ids = await mapLimit(todo, SETUP_CONCURRENCY, async ({ t, i, j }, n) => {
      const client = clients[n % clients.length]!;
      const key = `soak-seed-${scene.runTag}-${i}-${j}`;
      try {
        const res = await call(
          client,
          client.sendMessage,
          { threadId: t.threadId, clientMutationId: key, body: messageBody(bodyBytes, key), clientSentAt: new Date() },
          bearer(t.sender.token),
        );
        if (!res.message?.messageId) throw new Error('SendMessage answered without a message');
        return res.message.messageId;
      } catch (err) {
        throw new Error(`setup: seeding with SendMessage failed: ${describeError(err)}`);
      }
    });
    return scene.spread.map((_, i) => ids.slice(i * perThread, (i + 1) * perThread));
  } finally {
    for (const c of clients) c.close();
  }
}

/**
 * Stream j watches thread j mod T on replica ⌊j / T⌋ mod R, so each thread's watchers alternate between
 * the replicas (every message crosses from the replica that took the send to the other). The first
 * watcher of a thread is its patient; the others are staff users (staff may watch every thread of their
 * tenant), `staff[(j − T) mod S]`.
 */
export function streamPlans(scene: FeedScene, streams: number, replicas: number): StreamPlan[] {
  const T = scene.spread.length;
  return Array.from({ length: streams }, (_, j) => {
    const t = scene.spread[j % T]!;
    return {
      id: j,
      replica: Math.floor(j / T) % replicas,
      threadId: t.threadId,
      token: j < T ? t.watcher.token : scene.staff[(j - T) % scene.staff.length]!.token,
    };
  });
}

/** Thread i belongs to load process i mod W. */
export function threadsOf(scene: FeedScene, seeds: readonly (readonly string[])[], worker: number, workers: number) {
  const out: SoakThread[] = [];
  scene.spread.forEach((t, index) => {
    if (index % workers !== worker) return;
    out.push({
      index,
      threadId: t.threadId,
      senderToken: t.sender.token,
      readerToken: t.watcher.token,
      seedIds: seeds[index] ?? [],
    });
  });
  return out;
}
