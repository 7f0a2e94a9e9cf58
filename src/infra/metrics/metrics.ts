import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

/** Where the numbers the scrape-time gauges report come from. */
export interface MetricSources {
  /** Jobs per queue by state (pg-boss). */
  queues(): Promise<readonly { queue: string; queued: number; active: number; deferred: number }[]>;
  /** The database pool: connections open, idle, and callers waiting for one. */
  pool(): Promise<{ total: number; idle: number; waiting: number }>;
  /** Access-audit records not yet written. */
  auditPending(): number;
}

/**
 * The service's Prometheus metrics (prom-client), in a registry of its own so that several instances in
 * one process (tests) do not collide: RPC counts and latency by method and code, open streams, the delay
 * from an event's commit to its delivery on a feed, job-queue depth, pool usage, and Node's defaults
 * (CPU, memory, event-loop lag, GC).
 */
export class Metrics {
  readonly registry = new Registry();
  readonly calls = new Counter({
    name: 'comms_rpc_requests_total',
    help: 'Finished RPCs (unary calls and streams) by method and gRPC code',
    labelNames: ['method', 'code'] as const,
    registers: [this.registry],
  });
  readonly latency = new Histogram({
    name: 'comms_rpc_duration_seconds',
    help: 'Unary RPC latency from receipt to answer, by method and gRPC code',
    labelNames: ['method', 'code'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });
  readonly streams = new Gauge({
    name: 'comms_streams_open',
    help: 'Server streams open now, by method',
    labelNames: ['method'] as const,
    registers: [this.registry],
  });
  readonly feedLag = new Histogram({
    name: 'comms_feed_delivery_lag_seconds',
    help: 'Delay from an event’s commit to its write on a feed stream (replays included)',
    labelNames: ['method'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600],
    registers: [this.registry],
  });
  readonly rateLimited = new Counter({
    name: 'comms_rate_limited_total',
    help: 'Calls refused by the per-caller write rate limit or stream limit, by method',
    labelNames: ['method'] as const,
    registers: [this.registry],
  });

  constructor(sources: MetricSources) {
    collectDefaultMetrics({ register: this.registry, prefix: 'comms_' });
    new Gauge({
      name: 'comms_job_queue_jobs',
      help: 'Jobs in each pg-boss queue by state',
      labelNames: ['queue', 'state'] as const,
      registers: [this.registry],
      async collect() {
        this.reset();
        for (const q of await sources.queues()) {
          this.set({ queue: q.queue, state: 'queued' }, q.queued);
          this.set({ queue: q.queue, state: 'active' }, q.active);
          this.set({ queue: q.queue, state: 'deferred' }, q.deferred);
        }
      },
    });
    new Gauge({
      name: 'comms_db_pool_connections',
      help: 'Database pool connections by state (waiting: callers waiting for a connection)',
      labelNames: ['state'] as const,
      registers: [this.registry],
      async collect() {
        const p = await sources.pool();
        this.set({ state: 'total' }, p.total);
        this.set({ state: 'idle' }, p.idle);
        this.set({ state: 'waiting' }, p.waiting);
      },
    });
    new Gauge({
      name: 'comms_audit_pending_records',
      help: 'Access-audit records waiting to be written (reads are refused beyond AUDIT_BUFFER_MAX)',
      registers: [this.registry],
      collect() {
        this.set(sources.auditPending());
      },
    });
  }

  /** Records a finished unary call. */
  unary(method: string, code: string, seconds: number): void {
    this.calls.inc({ method, code });
    this.latency.observe({ method, code }, seconds);
  }
}

/** Serves `GET /metrics` (Prometheus text format) on its own HTTP port; resolves with the bound port. */
export async function serveMetrics(
  metrics: Metrics,
  host: string,
  port: number,
): Promise<{ port: number; close(): Promise<void> }> {
  const server: Server = createServer((req, res) => {
    if (req.method !== 'GET' || req.url?.split('?')[0] !== '/metrics') {
      res.writeHead(404).end();
      return;
    }
    metrics.registry.metrics().then(
      (body) => res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(body),
      (err: unknown) => res.writeHead(500).end(String(err)),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}
