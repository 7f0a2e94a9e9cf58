/**
 * What happened to a run's intents, read from the database after the run: per intent its creation
 * (`notification_intent.created_at`), its ATTEMPT record (`recorded_at`), the delivery report that made it
 * DELIVERED, the statuses the service derives (the domain's own `linkRecords` and `deriveStatus` over
 * every record, as GetNotification does), the sandbox provider's rows, and the dispatch jobs. Also the
 * poll that waits until every intent is delivered, the service logs' warnings, and CPU over a window
 * whose end is not known in advance.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import {
  type DispatchRecord,
  deriveStatus,
  type IntentState,
  linkRecords,
} from '../../src/domain/notification/notification.policy.js';
import { recordFromRow } from '../../src/domain/notification/notification.repository.js';
import { type CpuUsage, CpuSampler } from '../cpu.js';
import { quantile } from '../loadgen.js';
import { epochNow, sleep } from './scene.js';

const ROOT = path.resolve(import.meta.dirname, '../../..');

export interface Latency {
  readonly count: number;
  readonly p50: number | undefined;
  readonly p95: number | undefined;
  readonly p99: number | undefined;
  readonly max: number | undefined;
}

export function latency(values: readonly number[]): Latency {
  const sorted = Float64Array.from(values).sort();
  return {
    count: sorted.length,
    p50: quantile(sorted, 0.5),
    p95: quantile(sorted, 0.95),
    p99: quantile(sorted, 0.99),
    max: sorted.length > 0 ? sorted[sorted.length - 1] : undefined,
  };
}

/**
 * Polls the tenant's counts (twice a second) until `expected()` intents have an attempt and a DELIVERED
 * report, or `untilMs()`; `expected` may throw to give up (a service died).
 */
export async function waitDelivered(
  c: pg.Client,
  tenant: string,
  expected: () => number | undefined,
  untilMs: () => number,
  progress: (attempts: number, delivered: number) => void,
): Promise<{ complete: boolean; seenMs: number }> {
  let lastLog = 0;
  for (;;) {
    const r = await c.query<{ attempts: number; delivered: number }>(
      `select count(*) filter (where kind = 'attempt')::int as attempts,
              count(*) filter (where kind = 'delivery_report' and status in ('delivered', 'read'))::int as delivered
         from dispatch_record where tenant_id = $1`,
      [tenant],
    );
    const { attempts, delivered } = r.rows[0]!;
    const now = epochNow();
    if (now - lastLog > 5000) {
      progress(attempts, delivered);
      lastLog = now;
    }
    const n = expected();
    if (n !== undefined && attempts >= n && delivered >= n) return { complete: true, seenMs: now };
    if (now > untilMs()) return { complete: false, seenMs: now };
    await sleep(500);
  }
}

/** Everything the run's database says about its intents. */
export interface Analysis {
  readonly intents: number;
  /** Derived status (as GetNotification shows it) → count. */
  readonly statuses: Record<string, number>;
  readonly delivered: number;
  readonly failed: number;
  /** ATTEMPT records by outcome. */
  readonly attemptOutcomes: Record<string, number>;
  /** Intents with more than one ATTEMPT record. */
  readonly multiAttempt: number;
  readonly reconciliations: number;
  /** Delivery reports by status. */
  readonly reports: Record<string, number>;
  readonly sandboxRows: number;
  /** Intents whose attempts have exactly one sandbox_message row between them. */
  readonly sandboxExactlyOnce: number;
  /** Intents with no sandbox row, or with more than one. */
  readonly sandboxMissing: number;
  readonly sandboxDuplicated: number;
  /** Sandbox rows whose reference is no attempt's. */
  readonly sandboxOrphans: number;
  /** pg-boss jobs of the tenant by state, and how many were retried. */
  readonly jobs: Record<string, number>;
  readonly jobsRetried: number;
  /** Epoch ms: first intent created, last first-attempt recorded, last intent delivered. */
  readonly firstCreatedMs: number | undefined;
  readonly lastCreatedMs: number | undefined;
  readonly lastAttemptMs: number | undefined;
  readonly lastDeliveredMs: number | undefined;
  /** created_at → the intent's first ATTEMPT record's recorded_at, ms. */
  readonly toAttempt: Latency;
  /** created_at → delivered (the later of the attempt and the first DELIVERED/READ report linked to it), ms. */
  readonly toDelivered: Latency;
  /**
   * Intents delivered per second once creation was over: those delivered after the last intent was
   * created ÷ (last delivered − last created); the dispatcher alone, with the backlog creation left.
   */
  readonly drainPerSecond: number | undefined;
  /** Intents delivered per second since the first creation (index = second). */
  readonly deliveredBySecond: number[];
  readonly createdBySecond: number[];
}

const ms = (v: unknown) => Number(v);

/** Reads the tenant's intents, records, sandbox rows and jobs and checks them. */
export async function analyse(c: pg.Client, tenant: string): Promise<Analysis> {
  const intents = (
    await c.query<{ notification_id: string; state: IntentState; state_reason: string; created_ms: string }>(
      `select notification_id::text, state, state_reason, extract(epoch from created_at) * 1000 as created_ms
         from notification_intent where tenant_id = $1`,
      [tenant],
    )
  ).rows;
  const rows = (
    await c.query<Record<string, unknown>>(
      `select record_id::text, kind, notification_id::text, attempt_number, plan_step, channel, provider,
              provider_message_id, provider_event_id, status, provider_timestamp, error_code, error_message, outcome,
              reference::text, attempt_record_id::text, recorded_at, extract(epoch from recorded_at) * 1000 as recorded_ms
         from dispatch_record where tenant_id = $1`,
      [tenant],
    )
  ).rows;
  const sandbox = (
    await c.query<{ reference: string; n: number }>(
      `select reference::text, count(*)::int as n from sandbox_message where tenant_id = $1 group by reference`,
      [tenant],
    )
  ).rows;
  let jobRows: { state: string; n: number; retried: number }[] = [];
  try {
    jobRows = (
      await c.query<{ state: string; n: number; retried: number }>(
        `select state::text, count(*)::int as n, count(*) filter (where retry_count > 0)::int as retried
           from pgboss.job where name = 'notification-dispatch' and data ->> 'tenant' = $1 group by state`,
        [tenant],
      )
    ).rows;
  } catch {
    // pg-boss's schema differs: job figures are left out.
  }

  const recordedMs = new Map<string, number>();
  const records: DispatchRecord[] = rows.map((r) => {
    const rec = recordFromRow(r);
    recordedMs.set(rec.recordId, ms(r.recorded_ms));
    return rec;
  });
  const own = new Map<string, DispatchRecord[]>();
  const reportsByMessage = new Map<string, DispatchRecord[]>();
  const attemptOutcomes: Record<string, number> = {};
  const reports: Record<string, number> = {};
  let reconciliations = 0;
  const attemptRefs = new Set<string>();
  for (const r of records) {
    if (r.kind === 'delivery_report') {
      const key = `${r.provider} ${r.providerMessageId}`;
      reportsByMessage.set(key, [...(reportsByMessage.get(key) ?? []), r]);
      reports[r.status] = (reports[r.status] ?? 0) + 1;
      continue;
    }
    if (r.kind === 'attempt') {
      attemptOutcomes[r.outcome!] = (attemptOutcomes[r.outcome!] ?? 0) + 1;
      if (r.reference) attemptRefs.add(r.reference);
    } else reconciliations++;
    const list = own.get(r.notificationId!) ?? [];
    list.push(r);
    own.set(r.notificationId!, list);
  }
  const sandboxByRef = new Map(sandbox.map((s) => [s.reference, s.n]));

  const statuses: Record<string, number> = {};
  const toAttempt: number[] = [];
  const toDelivered: number[] = [];
  const createdAt: number[] = [];
  const deliveredAt: number[] = [];
  let multiAttempt = 0;
  let sandboxExactlyOnce = 0;
  let sandboxMissing = 0;
  let sandboxDuplicated = 0;
  let lastAttemptMs: number | undefined;
  for (const intent of intents) {
    const created = ms(intent.created_ms);
    createdAt.push(created);
    const mine = own.get(intent.notification_id) ?? [];
    const linked = [...mine];
    for (const r of mine) {
      if (r.providerMessageId) linked.push(...(reportsByMessage.get(`${r.provider} ${r.providerMessageId}`) ?? []));
    }
    const attempts = linkRecords(linked);
    const { status } = deriveStatus(intent.state, intent.state_reason, attempts);
    statuses[status] = (statuses[status] ?? 0) + 1;
    if (attempts.length > 1) multiAttempt++;
    const first = attempts[0];
    if (first) {
      const t = recordedMs.get(first.attempt.recordId)!;
      toAttempt.push(t - created);
      lastAttemptMs = Math.max(lastAttemptMs ?? t, t);
    }
    // Delivered: the earliest moment an attempt and a DELIVERED (or READ) report of it were both recorded.
    let delivered: number | undefined;
    for (const a of attempts) {
      if (a.derived !== 'delivered' && a.derived !== 'read') continue;
      const at = recordedMs.get(a.attempt.recordId)!;
      const reportTimes = [a.attempt, ...a.linked]
        .filter((r) => r.status === 'delivered' || r.status === 'read')
        .map((r) => recordedMs.get(r.recordId)!);
      const when = Math.max(at, Math.min(...reportTimes));
      delivered = Math.min(delivered ?? when, when);
    }
    if (delivered !== undefined) {
      toDelivered.push(delivered - created);
      deliveredAt.push(delivered);
    }
    const rowsForIntent = attempts.reduce((n, a) => n + (sandboxByRef.get(a.attempt.reference ?? '') ?? 0), 0);
    if (rowsForIntent === 1) sandboxExactlyOnce++;
    else if (rowsForIntent === 0) sandboxMissing++;
    else sandboxDuplicated++;
  }
  const firstCreatedMs = createdAt.length > 0 ? Math.min(...createdAt) : undefined;
  const lastCreatedMs = createdAt.length > 0 ? Math.max(...createdAt) : undefined;
  const lastDeliveredMs = deliveredAt.length > 0 ? Math.max(...deliveredAt) : undefined;
  const drainSpan =
    lastCreatedMs !== undefined && lastDeliveredMs !== undefined ? (lastDeliveredMs - lastCreatedMs) / 1000 : 0;
  const drained = lastCreatedMs === undefined ? 0 : deliveredAt.filter((t) => t > lastCreatedMs).length;
  const bySecond = (times: number[]) => {
    const out: number[] = [];
    if (firstCreatedMs === undefined) return out;
    for (const t of times) {
      const s = Math.floor((t - firstCreatedMs) / 1000);
      while (out.length <= s) out.push(0);
      out[s]!++;
    }
    return out;
  };
  const jobs: Record<string, number> = {};
  let jobsRetried = 0;
  for (const j of jobRows) {
    jobs[j.state] = j.n;
    jobsRetried += j.retried;
  }
  return {
    intents: intents.length,
    statuses,
    delivered: statuses.delivered ?? 0,
    failed: statuses.failed ?? 0,
    attemptOutcomes,
    multiAttempt,
    reconciliations,
    reports,
    sandboxRows: sandbox.reduce((n, s) => n + s.n, 0),
    sandboxExactlyOnce,
    sandboxMissing,
    sandboxDuplicated,
    sandboxOrphans: sandbox.filter((s) => !attemptRefs.has(s.reference)).reduce((n, s) => n + s.n, 0),
    jobs,
    jobsRetried,
    firstCreatedMs,
    lastCreatedMs,
    lastAttemptMs,
    lastDeliveredMs,
    drainPerSecond: drainSpan >= 1 ? drained / drainSpan : undefined,
    toAttempt: latency(toAttempt),
    toDelivered: latency(toDelivered),
    deliveredBySecond: bySecond(deliveredAt),
    createdBySecond: bySecond(createdAt),
  };
}

/** Lines of a service log (bench/results/<name>) at pino level warn or above, counted by message. */
export function logWarnings(logName: string): { counts: Record<string, number>; samples: string[] } {
  const counts: Record<string, number> = {};
  const samples: string[] = [];
  let text = '';
  try {
    text = readFileSync(path.join(ROOT, 'bench/results', logName), 'utf8');
  } catch {
    return { counts, samples };
  }
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    let level = 0;
    let msg = line.slice(0, 200);
    try {
      const j = JSON.parse(line) as { level?: number; msg?: string };
      level = j.level ?? 0;
      msg = j.msg ?? msg;
    } catch {
      level = 50; // not a log record: something printed on its own (a crash, a stack)
    }
    if (level < 40) continue;
    counts[msg] = (counts[msg] ?? 0) + 1;
    if (samples.length < 5) samples.push(line.slice(0, 500));
  }
  return { counts, samples };
}

/** CPU of the service replicas, all postgres processes and the machine, in % of one core. */
export interface RunCpu {
  readonly seconds: number;
  readonly replicas: readonly (number | undefined)[];
  readonly postgres: number | undefined;
  readonly machine: number | undefined;
  /** This process (the load that creates the intents, the poll). */
  readonly bench: number;
  /** Per tile: seconds from the start, then the same figures (rounded). */
  readonly tiles: readonly {
    readonly at: number;
    readonly replicas: readonly (number | undefined)[];
    readonly postgres: number | undefined;
    readonly machine: number | undefined;
  }[];
}

/**
 * CPU over a window whose end is known only when it comes (all intents delivered): bench/cpu.ts samples
 * fixed windows, so back-to-back one-second tiles are sampled and the tiles finished by `stop()` are
 * averaged (the last, partial second is left out).
 */
export class CpuTiles {
  readonly #tiles: { samplers: CpuSampler[]; start: number; end: number }[] = [];
  #timer: NodeJS.Timeout | undefined;
  #startCpu: NodeJS.CpuUsage | undefined;
  #startMs = 0;

  constructor(
    private readonly pids: readonly (number | undefined)[],
    private readonly tileMs = 1000,
  ) {}

  start(): void {
    this.#startCpu = process.cpuUsage();
    this.#startMs = epochNow();
    const tile = (start: number) => {
      const end = start + this.tileMs;
      const samplers = this.pids.map((pid) => new CpuSampler(() => ({ service: pid })));
      for (const s of samplers) s.schedule({ start, end });
      this.#tiles.push({ samplers, start, end });
      this.#timer = setTimeout(() => tile(end), Math.max(0, end - Date.now() - 50));
    };
    tile(Date.now());
  }

  /** Stops sampling (after stop(), or when the run failed). */
  cancel(): void {
    clearTimeout(this.#timer);
  }

  async stop(): Promise<RunCpu> {
    this.cancel();
    const now = Date.now();
    const cpu = process.cpuUsage(this.#startCpu);
    const benchSeconds = (epochNow() - this.#startMs) / 1000;
    await sleep(20); // let a tile ending just now take its sample
    let seconds = 0;
    const replicas = this.pids.map(() => 0);
    let postgres = 0;
    let machine = 0;
    const tiles: RunCpu['tiles'][number][] = [];
    const r1 = (v: number | undefined) => (v === undefined ? undefined : Math.round(v));
    for (const t of this.#tiles) {
      if (t.end > now) continue;
      const usages: CpuUsage[] = t.samplers.map((s) => s.usage());
      // Not sampled (no /proc, or a sample not taken in time): left out.
      if (usages.some((u) => u.machineBusy === undefined)) continue;
      const s = (t.end - t.start) / 1000;
      seconds += s;
      usages.forEach((u, i) => (replicas[i]! += (u.service ?? 0) * s));
      postgres += (usages[0]!.postgres ?? 0) * s;
      machine += (usages[0]!.machineBusy ?? 0) * s;
      tiles.push({
        at: Math.round((t.start - this.#tiles[0]!.start) / 100) / 10,
        replicas: usages.map((u) => r1(u.service)),
        postgres: r1(usages[0]!.postgres),
        machine: r1(usages[0]!.machineBusy),
      });
    }
    const avg = (v: number) => (seconds > 0 ? v / seconds : undefined);
    return {
      seconds,
      replicas: replicas.map(avg),
      postgres: avg(postgres),
      machine: avg(machine),
      bench: benchSeconds > 0 ? ((cpu.user + cpu.system) / 1000 / (benchSeconds * 1000)) * 100 : 0,
      tiles,
    };
  }
}
