/**
 * The raw streaming baseline of the feed benchmark: a minimal grpc-js server (no database, no auth, no
 * feed log) holding server-streaming calls. /bench.FeedBaseline/Watch takes WatchThread's request and
 * answers WatchThread's responses (the same generated encoders, so wire and client costs match): a
 * `caught_up` at once, then whatever `Publish` writes to the watched thread, and a heartbeat after
 * FEED_HEARTBEAT_MS without a write (the service's default and knob), as the service does.
 * `Publish` (a unary control call) writes bench messages from memory at a fixed rate, each stamped with
 * `sent_at` = the time it is written, to every stream of its thread, one `call.write` per stream.
 *
 * Run as a child of bench/feeds/run.ts (forked, with IPC): HOST (default 127.0.0.1), PORT (default 0).
 * It binds and sends `{ port }` to the parent. Exits on SIGTERM/SIGINT or when the parent goes away.
 */
import { randomUUID } from 'node:crypto';
import {
  type sendUnaryData,
  Server,
  ServerCredentials,
  type ServerUnaryCall,
  type ServerWritableStream,
} from '@grpc/grpc-js';
import type { WatchThreadRequest, WatchThreadResponse } from '../../gen/comms/v1/feed.js';
import { encodeResumeToken } from '../../src/domain/feed/feed.token.js';
import { loadConfig } from '../../src/infra/config/config.js';
import { serverOptions } from '../../src/rpc/server.js';
import {
  BASELINE_CONTROL,
  BASELINE_WATCH_PATH,
  epochNow,
  feedBody,
  paced,
  type PublishRequest,
  type PublishResponse,
  WATCH_METHODS,
} from './protocol.js';

type Watcher = ServerWritableStream<WatchThreadRequest, WatchThreadResponse> & { lastWriteMs: number };

/** Open streams by thread id, and each thread's last sequence number. */
const watchers = new Map<string, Set<Watcher>>();
const heads = new Map<string, number>();
let open = 0;

function token(threadId: string): string {
  return encodeResumeToken(`t:${threadId}`, heads.get(threadId) ?? 0);
}

function write(w: Watcher, res: WatchThreadResponse, now: number): void {
  w.lastWriteMs = now;
  w.write(res);
}

function watch(call: ServerWritableStream<WatchThreadRequest, WatchThreadResponse>): void {
  const threadId = call.request.threadId;
  const w = call as Watcher;
  let set = watchers.get(threadId);
  if (!set) watchers.set(threadId, (set = new Set()));
  set.add(w);
  open++;
  call.on('cancelled', () => {
    open--;
    set.delete(w);
    if (set.size === 0) watchers.delete(threadId);
  });
  const now = new Date();
  const caughtUp = {
    resumeToken: token(threadId),
    occurredAt: now,
    event: { $case: 'caughtUp', value: { asOf: now } },
  };
  write(w, caughtUp as WatchThreadResponse, epochNow());
}

/** Writes message k to every stream of its thread. Returns the number of stream writes. */
function publishOne(req: PublishRequest, k: number): number {
  const threadId = req.threads[k % req.threads.length]!;
  const seq = (heads.get(threadId) ?? 0) + 1;
  heads.set(threadId, seq);
  const set = watchers.get(threadId);
  if (!set) return 0;
  const sentAt = new Date();
  const res: WatchThreadResponse = {
    resumeToken: encodeResumeToken(`t:${threadId}`, seq),
    occurredAt: sentAt,
    event: {
      $case: 'messagePosted',
      value: {
        messageId: randomUUID(),
        threadId,
        senderUserId: 'bench-feed-baseline',
        body: feedBody(req.runTag, k, req.bodyBytes),
        clientMutationId: `feeds-${req.runTag}-${k}`,
        clientSentAt: sentAt,
        sentAt,
        cursor: '',
        retraction: undefined,
        bodyPurgedAt: undefined,
      },
    },
  };
  const now = epochNow();
  for (const w of set) write(w, res, now);
  return set.size;
}

function publish(call: ServerUnaryCall<PublishRequest, PublishResponse>, callback: sendUnaryData<PublishResponse>) {
  const req = call.request;
  let writes = 0;
  paced(req.count, req.rate, req.startAt, (k) => {
    writes += publishOne(req, k);
  }).then(
    (late) => callback(null, { written: req.count, writes, late }),
    (err: unknown) => callback(err as Error),
  );
}

function streams(_call: ServerUnaryCall<unknown, { open: number }>, callback: sendUnaryData<{ open: number }>) {
  callback(null, { open });
}

async function main(): Promise<void> {
  // The service's own configuration rules (gRPC server options, heartbeat interval) with its defaults.
  const config = loadConfig({
    FEED_HEARTBEAT_MS: process.env.FEED_HEARTBEAT_MS,
    GRPC_MAX_CONCURRENT_STREAMS: process.env.GRPC_MAX_CONCURRENT_STREAMS,
    LOG_LEVEL: 'silent',
  } as NodeJS.ProcessEnv);
  const server = new Server(serverOptions(config.grpc));
  server.addService(
    { watch: { ...WATCH_METHODS.baseline, path: BASELINE_WATCH_PATH }, ...BASELINE_CONTROL },
    { watch, publish, streams },
  );

  // Heartbeats: once a second, every stream without a write for the heartbeat interval gets one.
  const heartbeatMs = config.feed.heartbeatMs;
  const sweep = setInterval(
    () => {
      const now = epochNow();
      for (const [threadId, set] of watchers) {
        for (const w of set) {
          if (now - w.lastWriteMs < heartbeatMs) continue;
          const at = new Date();
          write(
            w,
            { resumeToken: token(threadId), occurredAt: at, event: { $case: 'heartbeat', value: { sentAt: at } } },
            now,
          );
        }
      }
    },
    Math.min(1000, heartbeatMs),
  );

  const host = process.env.HOST ?? '127.0.0.1';
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`${host}:${process.env.PORT ?? '0'}`, ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );

  const stop = () => {
    clearInterval(sweep);
    server.forceShutdown();
    process.exit(0);
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  process.once('disconnect', stop);
  process.send?.({ port });
}

main().catch((err: unknown) => {
  process.stderr.write(
    `feed baseline server failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
  );
  process.exit(1);
});
