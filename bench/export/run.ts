/**
 * `npm run bench:export`: ExportThread's memory against the thread's length (issue 9: "works for
 * 1,000,000 messages in bounded memory — measure memory in bench/").
 *
 * On a fresh database, a setup service process (node dist/src/main.js) migrates it and a provider
 * creates one thread per size in BENCH_EXPORT_SIZES over gRPC (with two patients), plus a small warm-up
 * thread. Each thread's history is then bulk-inserted with SQL as the database owner — one INSERT …
 * SELECT generate_series per thread: seq 1..N, sent_at 1 ms apart, UUIDv7-shaped message ids rising
 * with seq, bodies of BENCH_EXPORT_BODY_BYTES with their SHA-256, a receipt by each patient on every
 * BENCH_EXPORT_RECEIPT_EVERY-th message — and the thread row is moved to its last message, as
 * `comms_send_message` would have left it.
 *
 * Then for each size a fresh service process (so every size starts from the same state) exports the
 * warm-up thread once, and then the measured thread to a staff caller with `records.export`, over a
 * grpc-js stream the client reads with backpressure: it stops reading for BENCH_EXPORT_PAUSE_MS every
 * BENCH_EXPORT_PAUSE_EVERY messages, so HTTP/2 flow control holds the server back. Meanwhile the
 * service's VmRSS (/proc/<pid>/status) and the client's own heap are sampled every 200 ms. The service
 * is then stopped gracefully (its audit is written) and the export's audit row checked.
 *
 * Each export is checked: every message arrives once and in order (the k-th carries client mutation id
 * `…-k`, ids rise, sent_at never falls), the header and end counts say N, the receipts are all there,
 * and the access audit's ExportThread rows for it are contiguous ranges covering seq 1..N exactly once. Prints the markdown
 * report and writes bench/results/export-latest.md and .json. Exit code 1 when an export is invalid.
 */
import { credentials, type Metadata } from '@grpc/grpc-js';
import pg from 'pg';
import { type ExportThreadResponse, GovernanceServiceClient } from '../../gen/comms/v1/governance.js';
import { ThreadServiceClient } from '../../gen/comms/v1/thread.js';
import { signDevToken } from '../../src/infra/auth/dev-token.js';
import { DEV_JWT_SECRET } from '../../src/infra/config/config.js';
import { intEnv, type RunInfo as CommonRunInfo, runInfo, writeReport } from '../common.js';
import { rssMb } from '../cpu.js';
import { createDatabase, freePort, runMain, type RunningProcess, settle, startService } from '../environment.js';
import { bearer, describeError } from '../protocol.js';
import { createThread, devUser, type User } from '../scenarios.js';

function log(line: string): void {
  process.stderr.write(`bench:export: ${line}\n`);
}

interface ExportConfig {
  readonly sizes: readonly number[];
  readonly warmupMessages: number;
  readonly bodyBytes: number;
  readonly receiptEvery: number;
  readonly pauseEvery: number;
  readonly pauseMs: number;
  readonly sampleMs: number;
  /** --max-old-space-size of the measured service processes, MB; undefined: Node's default. */
  readonly serviceHeapMb: number | undefined;
}

type RunInfo = CommonRunInfo<ExportConfig>;

const MAX_SIZE = 5_000_000;

function readConfig(): ExportConfig {
  const raw = process.env.BENCH_EXPORT_SIZES?.trim() || '20000,200000,1000000';
  const sizes = raw.split(',').map((part) => {
    const s = part.trim();
    const n = Number(s);
    if (!/^\d+$/.test(s) || n < 1 || n > MAX_SIZE) {
      throw new Error(`BENCH_EXPORT_SIZES: whole numbers from 1 to ${MAX_SIZE} separated by commas, got "${raw}"`);
    }
    return n;
  });
  return {
    sizes,
    warmupMessages: intEnv('BENCH_EXPORT_WARMUP', 2000, 1, 100_000),
    bodyBytes: intEnv('BENCH_EXPORT_BODY_BYTES', 200, 40, 16_384),
    receiptEvery: intEnv('BENCH_EXPORT_RECEIPT_EVERY', 4, 0, 1_000_000),
    pauseEvery: intEnv('BENCH_EXPORT_PAUSE_EVERY', 1000, 1, 1_000_000),
    pauseMs: intEnv('BENCH_EXPORT_PAUSE_MS', 5, 0, 10_000),
    sampleMs: 200,
    serviceHeapMb: process.env.BENCH_EXPORT_SERVICE_HEAP_MB
      ? intEnv('BENCH_EXPORT_SERVICE_HEAP_MB', 0, 16, 65_536)
      : undefined,
  };
}

const isKnob = (k: string) => k.startsWith('BENCH_EXPORT_');

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** What the service's Prometheus endpoint says about its memory, MB. */
interface ServiceMemory {
  /** V8 heap in use (nodejs_heap_size_used_bytes). */
  readonly heapUsed: number;
  /** V8 heap reserved (nodejs_heap_size_total_bytes). */
  readonly heapTotal: number;
  /** Memory outside the V8 heap held by JS objects: Buffers, … (nodejs_external_memory_bytes). */
  readonly external: number;
}

/** The service's memory figures from GET /metrics; undefined when it does not answer. */
async function serviceMemory(metricsPort: number): Promise<ServiceMemory | undefined> {
  try {
    const res = await fetch(`http://127.0.0.1:${metricsPort}/metrics`, { signal: AbortSignal.timeout(2000) });
    const text = await res.text();
    const metric = (name: string) => {
      const m = new RegExp(`^comms_${name}(?:\\{[^}]*\\})? ([0-9.e+]+)$`, 'm').exec(text);
      return m ? Number(m[1]) / 2 ** 20 : NaN;
    };
    return {
      heapUsed: metric('nodejs_heap_size_used_bytes'),
      heapTotal: metric('nodejs_heap_size_total_bytes'),
      external: metric('nodejs_external_memory_bytes'),
    };
  } catch {
    return undefined;
  }
}

async function withClient<T>(url: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

// ---- data ----

/** One exported thread: who is in it and how its history was made. */
interface BulkThread {
  readonly threadId: string;
  readonly messages: number;
  /** Client mutation id of message k is `${keyPrefix}${k}`. */
  readonly keyPrefix: string;
  readonly receipts: number;
  readonly insertSeconds: number;
}

/**
 * Inserts `n` messages into `threadId` as `sender` in one statement (as the database owner), receipts
 * by `readers` on every `every`-th message, and moves the thread row to the last message. The history
 * ends an hour ago, 1 ms between messages; the thread's creation is moved before its first message.
 */
async function bulkInsert(
  url: string,
  o: {
    tenant: string;
    threadId: string;
    sender: string;
    readers: readonly string[];
    n: number;
    keyPrefix: string;
    bodyBytes: number;
    every: number;
  },
): Promise<BulkThread> {
  const started = performance.now();
  const baseMs = Date.now() - 3_600_000 - o.n;
  const receipts = await withClient(url, async (c) => {
    await c.query('begin');
    try {
      // message_id: 48-bit ms timestamp of sent_at, version 7, variant 10, then seq: UUIDv7-shaped and
      // rising with seq, as comms_send_message keeps them.
      await c.query(
        `insert into message (tenant_id, message_id, thread_id, seq, sender_user_id, client_mutation_id, body,
                              body_sha256, client_sent_at, sent_at)
         select $1, m.id, $2::uuid, m.g, $3, $4 || m.g, m.body, sha256(convert_to(m.body, 'UTF8')), m.at, m.at
           from (select g,
                        to_timestamp(($6::bigint + g) / 1000.0) as at,
                        (lpad(to_hex($6::bigint + g), 12, '0') || '7000' || '8' || lpad(to_hex(g), 15, '0'))::uuid as id,
                        rpad('export bench message ' || g || ' ', $7, 'lorem ipsum dolor sit amet ') as body
                   from generate_series(1, $5::integer) g) m`,
        [o.tenant, o.threadId, o.sender, o.keyPrefix, o.n, baseMs, o.bodyBytes],
      );
      let receipts = 0;
      if (o.every > 0 && o.readers.length > 0) {
        const r = await c.query(
          `insert into read_receipt (tenant_id, message_id, user_id, thread_id, seq, read_at)
           select m.tenant_id, m.message_id, u.user_id, m.thread_id, m.seq, m.sent_at + interval '1 second'
             from message m cross join unnest($3::text[]) as u(user_id)
            where m.tenant_id = $1 and m.thread_id = $2::uuid and m.seq % $4 = 0
            order by m.message_id, u.user_id`,
          [o.tenant, o.threadId, o.readers, o.every],
        );
        receipts = r.rowCount ?? 0;
      }
      const moved = await c.query(
        `update thread t
            set message_seq = m.seq, last_message_id = m.message_id, last_message_at = m.sent_at,
                last_activity_at = greatest(t.last_activity_at, m.sent_at),
                created_at = least(t.created_at, to_timestamp($4::bigint / 1000.0)),
                updated_at = least(t.updated_at, to_timestamp($4::bigint / 1000.0))
           from message m
          where t.tenant_id = $1 and t.thread_id = $2::uuid
            and m.tenant_id = t.tenant_id and m.thread_id = t.thread_id and m.seq = $3`,
        [o.tenant, o.threadId, o.n, baseMs],
      );
      if (moved.rowCount !== 1) throw new Error(`thread ${o.threadId} not moved to its last message`);
      await c.query('commit');
      return receipts;
    } catch (err) {
      await c.query('rollback');
      throw err;
    }
  });
  return {
    threadId: o.threadId,
    messages: o.n,
    keyPrefix: o.keyPrefix,
    receipts,
    insertSeconds: (performance.now() - started) / 1000,
  };
}

// ---- the export ----

/** One sample, every sampleMs from the call to the end of the stream. */
interface Sample {
  /** Messages received so far. */
  readonly messages: number;
  /** The service's VmRSS, MB. */
  readonly serviceRss: number | undefined;
  /** The client's heapUsed, MB. */
  readonly clientHeap: number;
}

/** Quarters of the stream at which the peak RSS so far is reported. */
const QUARTERS = [0.25, 0.5, 0.75, 1] as const;

/** The peak service RSS (MB) over the samples taken until `q` of `n` messages had arrived, per quarter. */
function peakByQuarter(samples: readonly Sample[], n: number): (number | undefined)[] {
  return QUARTERS.map((q) => {
    const rss = samples.filter((s) => s.messages <= q * n && s.serviceRss !== undefined).map((s) => s.serviceRss!);
    return rss.length > 0 ? Math.max(...rss) : undefined;
  });
}

/** What one export delivered, and what was wrong with it (nothing, when valid). */
interface Received {
  readonly messages: number;
  readonly receipts: number;
  readonly headerCount: number | undefined;
  readonly endMessages: number | undefined;
  readonly endReceipts: number | undefined;
  readonly seconds: number;
  readonly problems: string[];
  readonly error?: string;
}

/**
 * Runs ExportThread on `threadId` and checks what arrives, without keeping it: the client holds one item
 * at a time. Every `pauseEvery` messages it stops reading for `pauseMs`.
 */
async function exportThread(
  address: string,
  md: Metadata,
  thread: BulkThread,
  config: ExportConfig,
  onSample?: (messagesSoFar: number) => void,
): Promise<Received> {
  const client = new GovernanceServiceClient(address, credentials.createInsecure());
  const problems: string[] = [];
  const problem = (s: string) => {
    if (problems.length < 10) problems.push(s);
  };
  let messages = 0;
  let receipts = 0;
  let headerCount: number | undefined;
  let endMessages: number | undefined;
  let endReceipts: number | undefined;
  let lastId = '';
  let lastSentAt = -Infinity;
  let error: string | undefined;
  const timer = onSample ? setInterval(() => onSample(messages), config.sampleMs) : undefined;
  onSample?.(0);
  const started = performance.now();
  try {
    const stream = client.exportThread({ threadId: thread.threadId }, md);
    for await (const res of stream) {
      const item = (res as ExportThreadResponse).item;
      if (!item) {
        problem('an item without content');
        continue;
      }
      if (item.$case === 'header') {
        if (headerCount !== undefined || messages > 0) problem('a second header, or a header after messages');
        headerCount = Number(item.value.messageCount);
        continue;
      }
      if (item.$case === 'end') {
        endMessages = Number(item.value.messageCount);
        endReceipts = Number(item.value.receiptCount);
        continue;
      }
      if (endMessages !== undefined) problem('a message after the end');
      const m = item.value.message;
      messages++;
      receipts += item.value.receipts.length;
      const k = messages;
      if (!m) {
        problem(`item ${k}: no message`);
      } else {
        if (m.clientMutationId !== `${thread.keyPrefix}${k}`) {
          problem(`item ${k}: message ${m.clientMutationId} where ${thread.keyPrefix}${k} was due`);
        }
        if (!(m.messageId > lastId)) problem(`item ${k}: id ${m.messageId} not above ${lastId}`);
        const at = m.sentAt?.getTime() ?? NaN;
        if (!(at >= lastSentAt)) problem(`item ${k}: sent_at ${m.sentAt?.toISOString()} before the previous one`);
        if (!m.body.startsWith(`export bench message ${k} `)) problem(`item ${k}: unexpected body`);
        lastId = m.messageId;
        lastSentAt = at;
      }
      if (config.pauseMs > 0 && k % config.pauseEvery === 0) await sleep(config.pauseMs);
    }
  } catch (err) {
    error = describeError(err);
  } finally {
    clearInterval(timer);
    onSample?.(messages);
    client.close();
  }
  const seconds = (performance.now() - started) / 1000;
  const n = thread.messages;
  if (error) problems.unshift(`stream failed: ${error}`);
  if (messages !== n) problems.unshift(`${messages} messages received, ${n} due`);
  if (headerCount !== n) problems.push(`header says ${headerCount ?? 'nothing'}, ${n} due`);
  if (endMessages !== n) problems.push(`end says ${endMessages ?? 'nothing'} messages, ${n} due`);
  if (receipts !== thread.receipts) problems.push(`${receipts} receipts received, ${thread.receipts} due`);
  if (endReceipts !== receipts) problems.push(`end says ${endReceipts ?? 'nothing'} receipts, ${receipts} received`);
  return { messages, receipts, headerCount, endMessages, endReceipts, seconds, problems, error };
}

/** SIGTERM to a service this bench started (it writes its pending audit records), SIGKILL after 15 s. */
async function stopService(pid: number | undefined): Promise<void> {
  if (pid === undefined) return;
  const alive = () => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  if (!alive()) return;
  process.kill(pid, 'SIGTERM');
  const until = Date.now() + 15_000;
  while (alive() && Date.now() < until) await sleep(100);
  if (alive()) process.kill(pid, 'SIGKILL');
}

/** The access_audit rows of ExportThread on `threadId`. */
async function exportAudit(url: string, tenant: string, threadId: string) {
  return withClient(url, async (c) => {
    const r = await c.query<{ first_seq: number; last_seq: number; message_count: number; has_ids: boolean }>(
      `select first_seq, last_seq, message_count, message_ids is not null as has_ids
         from access_audit
        where tenant_id = $1 and thread_id = $2::uuid and method = '/comms.v1.GovernanceService/ExportThread'
        order by first_seq`,
      [tenant, threadId],
    );
    return r.rows;
  });
}

// ---- report ----

interface SizeOutcome {
  readonly size: number;
  readonly receiptsDue: number;
  readonly insertSeconds: number;
  readonly received: Received;
  readonly messagesPerSecond: number;
  /** Service VmRSS, MB: after the warm-up export (idle), peak during the export, 2 s after it. */
  readonly serviceRssBeforeMb: number | undefined;
  readonly serviceRssPeakMb: number | undefined;
  readonly serviceRssAfterMb: number | undefined;
  /** The peak RSS until a quarter, half, three quarters and all of the messages had arrived. */
  readonly serviceRssPeakByQuarterMb: readonly (number | undefined)[];
  /** The service's V8 heap and external memory (its /metrics): before, peak of each (every 1 s), after. */
  readonly serviceMemory: {
    readonly before: ServiceMemory | undefined;
    readonly peak: ServiceMemory | undefined;
    readonly after: ServiceMemory | undefined;
  };
  readonly clientHeapBeforeMb: number;
  readonly clientHeapPeakMb: number;
  readonly samples: number;
  readonly auditRows: number;
  readonly problems: readonly string[];
}

const mb = (v: number | undefined, digits = 1) => (v === undefined ? '—' : v.toFixed(digits));
const int = (v: number) => Math.round(v).toLocaleString('en-US');

function markdown(info: RunInfo, outcomes: readonly SizeOutcome[]): string {
  const c = info.config;
  const lines: string[] = [];
  lines.push(`## Export memory run ${info.startedAt}`, '');
  lines.push(
    `- Machine: ${info.machine}; client, service and PostgreSQL share it, all on loopback.`,
    `- Node ${info.node}; ${info.database}; commit ${info.commit}.`,
    `- One fresh service process per size; a warm-up export of ${int(c.warmupMessages)} messages first. ` +
      `Bodies of ${c.bodyBytes} bytes; a receipt by each of 2 patients on every ` +
      `${c.receiptEvery === 0 ? '(none)' : `${c.receiptEvery}th`} message. The client stops reading for ` +
      `${c.pauseMs} ms every ${int(c.pauseEvery)} messages; RSS and heap sampled every ${c.sampleMs} ms.` +
      (c.serviceHeapMb ? ` The measured service processes ran with \`--max-old-space-size=${c.serviceHeapMb}\`.` : ''),
    `- Command: \`${info.command}\``,
    '',
  );
  lines.push(
    '| messages | received (in order) | receipts | export s | messages/s | service RSS before MB | peak MB | peak − before MB | after MB | client heap before / peak MB | audit rows | result |',
    '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|',
  );
  for (const o of outcomes) {
    const growth =
      o.serviceRssPeakMb !== undefined && o.serviceRssBeforeMb !== undefined
        ? o.serviceRssPeakMb - o.serviceRssBeforeMb
        : undefined;
    lines.push(
      `| ${int(o.size)} | ${int(o.received.messages)} | ${int(o.received.receipts)} | ${o.received.seconds.toFixed(1)} | ` +
        `${int(o.messagesPerSecond)} | ${mb(o.serviceRssBeforeMb)} | ${mb(o.serviceRssPeakMb)} | ${mb(growth)} | ` +
        `${mb(o.serviceRssAfterMb)} | ${mb(o.clientHeapBeforeMb)} / ${mb(o.clientHeapPeakMb)} | ${o.auditRows} | ` +
        `${o.problems.length === 0 ? 'valid' : '**INVALID**'} |`,
    );
  }
  const valid = outcomes.filter((o) => o.problems.length === 0 && o.serviceRssPeakMb !== undefined);
  if (valid.length >= 2) {
    const growth = valid.map((o) => o.serviceRssPeakMb! - o.serviceRssBeforeMb!);
    const first = valid[0]!;
    const last = valid.at(-1)!;
    lines.push(
      '',
      `Bounded memory: from ${int(first.size)} to ${int(last.size)} messages (${(last.size / first.size).toFixed(0)}×), ` +
        `the service's RSS growth during the export went from ${mb(growth[0])} MB to ${mb(growth.at(-1))} MB ` +
        `(largest ${mb(Math.max(...growth))} MB).`,
    );
  }
  lines.push(
    '',
    'Service RSS (MB): the peak so far when a quarter, half, three quarters and all of the messages had arrived ' +
      '(memory that grew with the messages sent would keep rising from quarter to quarter):',
    '',
    '| messages | before | ≤ 25 % | ≤ 50 % | ≤ 75 % | ≤ 100 % |',
    '|---:|---:|---:|---:|---:|---:|',
    ...outcomes.map(
      (o) =>
        `| ${int(o.size)} | ${mb(o.serviceRssBeforeMb)} | ${o.serviceRssPeakByQuarterMb.map((v) => mb(v)).join(' | ')} |`,
    ),
  );
  const three = (o: SizeOutcome, k: keyof ServiceMemory) =>
    `${mb(o.serviceMemory.before?.[k])} / ${mb(o.serviceMemory.peak?.[k])} / ${mb(o.serviceMemory.after?.[k])}`;
  lines.push(
    '',
    "Where the service's memory is (its `/metrics`, read every second; MB, before / peak / after):",
    '',
    '| messages | V8 heap used | V8 heap total | external (Buffers, …) |',
    '|---:|---|---|---|',
    ...outcomes.map(
      (o) => `| ${int(o.size)} | ${three(o, 'heapUsed')} | ${three(o, 'heapTotal')} | ${three(o, 'external')} |`,
    ),
  );
  lines.push(
    '',
    `Bulk insert (SQL, as the database owner): ${outcomes.map((o) => `${int(o.size)} in ${o.insertSeconds.toFixed(1)} s`).join('; ')}.`,
  );
  const bad = outcomes.filter((o) => o.problems.length > 0);
  if (bad.length > 0) {
    lines.push('', 'Problems (an export with any is invalid):', '');
    for (const o of bad) for (const p of o.problems) lines.push(`- ${int(o.size)}: ${p}`);
  }
  lines.push(
    '',
    'RSS is VmRSS of the service process (`/proc/<pid>/status`): "before" after the warm-up export, idle; ' +
      '"after" 2 s after the stream ended (a Node process seldom returns memory to the system, so it stays ' +
      'near the peak). The client keeps no message: its heap is what grpc-js buffers.',
  );
  return lines.join('\n') + '\n';
}

function json(info: RunInfo, outcomes: readonly SizeOutcome[]): unknown {
  const r = (v: number | undefined) => (v === undefined ? null : Math.round(v * 10) / 10);
  return {
    ...info,
    config: { ...info.config, sizes: info.config.sizes.join(',') },
    exports: outcomes.map((o) => ({
      messages: o.size,
      valid: o.problems.length === 0,
      problems: o.problems,
      received: o.received.messages,
      receipts: o.received.receipts,
      receiptsDue: o.receiptsDue,
      headerCount: o.received.headerCount ?? null,
      endMessageCount: o.received.endMessages ?? null,
      endReceiptCount: o.received.endReceipts ?? null,
      exportSeconds: r(o.received.seconds),
      messagesPerSecond: Math.round(o.messagesPerSecond),
      insertSeconds: r(o.insertSeconds),
      serviceRssMb: {
        before: r(o.serviceRssBeforeMb),
        peak: r(o.serviceRssPeakMb),
        after: r(o.serviceRssAfterMb),
        peakByQuarter: Object.fromEntries(QUARTERS.map((q, i) => [`${q * 100}%`, r(o.serviceRssPeakByQuarterMb[i])])),
        growth:
          o.serviceRssPeakMb !== undefined && o.serviceRssBeforeMb !== undefined
            ? r(o.serviceRssPeakMb - o.serviceRssBeforeMb)
            : null,
      },
      serviceMemoryMb: Object.fromEntries(
        (['before', 'peak', 'after'] as const).map((when) => {
          const m = o.serviceMemory[when];
          return [when, m ? { heapUsed: r(m.heapUsed), heapTotal: r(m.heapTotal), external: r(m.external) } : null];
        }),
      ),
      clientHeapMb: { before: r(o.clientHeapBeforeMb), peak: r(o.clientHeapPeakMb) },
      samples: o.samples,
      auditRows: o.auditRows,
    })),
  };
}

// ---- main ----

async function main(): Promise<number> {
  const config = readConfig();
  const info = runInfo(config, isKnob, 'npm run bench:export');
  log(`sizes ${config.sizes.join(', ')}`);
  const db = await createDatabase(log);
  log(`fresh database on ${db.description}`);
  const serviceEnv = { NOTIFY_DISPATCH: 'false', AUDIT_ENABLED: 'true' };

  // Setup: a service migrates the database and creates the threads as a provider would.
  const tenant = `export-${Math.random().toString(16).slice(2, 10)}`;
  const provider = await devUser(tenant, 'export-provider', 'provider');
  const patients: User[] = await Promise.all([
    devUser(tenant, 'export-patient-a', 'patient'),
    devUser(tenant, 'export-patient-b', 'patient'),
  ]);
  const exporter = await signDevToken(DEV_JWT_SECRET, {
    sub: 'export-staff',
    tenant,
    roles: ['staff'],
    permissions: ['records.export'],
    issuer: 'comms-dev',
    audience: 'comms',
    ttlSeconds: 12 * 3600,
  });
  const setup = await startService(db.url, log, {
    name: 'setup service',
    logName: 'export-setup.log',
    env: serviceEnv,
  });
  const threadIds: string[] = [];
  const threadClient = new ThreadServiceClient(setup.address, credentials.createInsecure());
  try {
    for (const [i, n] of [config.warmupMessages, ...config.sizes].entries()) {
      threadIds.push(await createThread(threadClient, provider, `export bench ${i}: ${n} messages`, patients));
    }
  } finally {
    threadClient.close();
  }
  await stopService(setup.pid);

  const threads: BulkThread[] = [];
  for (const [i, n] of [config.warmupMessages, ...config.sizes].entries()) {
    const t = await bulkInsert(db.url, {
      tenant,
      threadId: threadIds[i]!,
      sender: provider.userId,
      readers: patients.map((p) => p.userId),
      n,
      keyPrefix: `export-${i}-`,
      bodyBytes: config.bodyBytes,
      every: config.receiptEvery,
    });
    log(`thread ${i}: ${n} messages and ${t.receipts} receipts inserted in ${t.insertSeconds.toFixed(1)} s`);
    threads.push(t);
  }
  await settle(db.url);
  const [warmup, ...measured] = threads;
  const md = bearer(exporter);

  const outcomes: SizeOutcome[] = [];
  for (const [i, thread] of measured.entries()) {
    const n = thread.messages;
    // A capped V8 heap shows the export needs no more: a process that had to keep what it sent would fail.
    const heapCap: Record<string, string> = config.serviceHeapMb
      ? { NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --max-old-space-size=${config.serviceHeapMb}`.trim() }
      : {};
    const metricsPort = await freePort();
    const service: RunningProcess = await startService(db.url, log, {
      name: `service ${i + 1}`,
      logName: `export-service-${i + 1}.log`,
      env: { ...serviceEnv, ...heapCap, METRICS_HOST: '127.0.0.1', METRICS_PORT: String(metricsPort) },
    });
    const problems: string[] = [];
    const warm = await exportThread(service.address, md, warmup!, config);
    if (warm.problems.length > 0) problems.push(...warm.problems.map((p) => `warm-up export: ${p}`));
    await sleep(1000);
    const before = rssMb(service.pid);
    const heapBefore = process.memoryUsage().heapUsed / 2 ** 20;
    const memBefore = await serviceMemory(metricsPort);
    const memSamples: ServiceMemory[] = [];
    const memTimer = setInterval(() => void serviceMemory(metricsPort).then((m) => m && memSamples.push(m)), 1000);
    const samples: Sample[] = [];
    log(`${n} messages: exporting (service pid ${service.pid}, RSS ${mb(before)} MB)`);
    const received = await exportThread(service.address, md, thread, config, (messages) => {
      samples.push({ messages, serviceRss: rssMb(service.pid), clientHeap: process.memoryUsage().heapUsed / 2 ** 20 });
    });
    clearInterval(memTimer);
    problems.push(...received.problems);
    await sleep(2000);
    const after = rssMb(service.pid);
    const memAfter = await serviceMemory(metricsPort);
    const memAll = [memBefore, ...memSamples, memAfter].filter((m) => m !== undefined);
    const memPeak: ServiceMemory | undefined =
      memAll.length === 0
        ? undefined
        : {
            heapUsed: Math.max(...memAll.map((m) => m.heapUsed)),
            heapTotal: Math.max(...memAll.map((m) => m.heapTotal)),
            external: Math.max(...memAll.map((m) => m.external)),
          };
    await stopService(service.pid);
    const audit = await exportAudit(db.url, tenant, thread.threadId);
    // Batches are recorded as they are handed out; the writer joins consecutive ones within a flush.
    const contiguous = audit.every(
      (r, i) =>
        !r.has_ids &&
        r.message_count === r.last_seq - r.first_seq + 1 &&
        r.first_seq === (i === 0 ? 1 : audit[i - 1]!.last_seq + 1),
    );
    if (audit.length === 0 || !contiguous || audit.at(-1)!.last_seq !== n) {
      problems.push(
        `access_audit: ${JSON.stringify(audit.slice(0, 5))}… where contiguous range rows for seq 1..${n} were due`,
      );
    }
    const rss = samples.filter((s) => s.serviceRss !== undefined).map((s) => s.serviceRss!);
    const peak = rss.length > 0 ? Math.max(...rss) : undefined;
    const outcome: SizeOutcome = {
      size: n,
      receiptsDue: thread.receipts,
      insertSeconds: thread.insertSeconds,
      received,
      messagesPerSecond: received.messages / received.seconds,
      serviceRssBeforeMb: before,
      serviceRssPeakMb: peak,
      serviceRssAfterMb: after,
      serviceRssPeakByQuarterMb: peakByQuarter(samples, n),
      serviceMemory: { before: memBefore, peak: memPeak, after: memAfter },
      clientHeapBeforeMb: heapBefore,
      clientHeapPeakMb: Math.max(heapBefore, ...samples.map((s) => s.clientHeap)),
      samples: rss.length,
      auditRows: audit.length,
      problems,
    };
    outcomes.push(outcome);
    log(
      `${n} messages: ${received.messages} received in ${received.seconds.toFixed(1)} s ` +
        `(${int(outcome.messagesPerSecond)}/s); service RSS ${mb(before)} → peak ${mb(peak)} → ${mb(after)} MB; ` +
        `${problems.length === 0 ? 'valid' : `INVALID: ${problems.join('; ')}`}`,
    );
  }

  const full: RunInfo = { ...info, database: db.description };
  writeReport('export-latest', markdown(full, outcomes), json(full, outcomes), log);
  return outcomes.every((o) => o.problems.length === 0) ? 0 : 1;
}

runMain(main, log, () => {});
