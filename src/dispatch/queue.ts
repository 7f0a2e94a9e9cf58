import { PgBoss } from 'pg-boss';
import type { Logger } from '../infra/log/logger.js';
import { type Dispatcher, RetryLater } from './dispatcher.js';

/** The queue `comms_enqueue_dispatch` writes to (see migration 20261130000000). */
export const DISPATCH_QUEUE = 'notification-dispatch';

/** The queue `comms_enqueue_session_timer` writes to (see migration 20261201000000). */
export const SESSION_TIMER_QUEUE = 'session-timer';

/** The queue of the scheduled retention purge (RETENTION_PURGE_CRON). */
export const RETENTION_QUEUE = 'retention-purge';

/** The retention purge on this replica: its schedule, and what a job runs. */
export interface RetentionJob {
  readonly enabled: boolean;
  readonly cron: string;
  readonly run: () => Promise<void>;
}

/** Runs one session timer job: the session's clock-driven changes due at `at`. */
export type SessionTimerRunner = (tenantId: string, sessionId: string, at: Date) => Promise<void>;

/** Job-queue settings (NOTIFY_* configuration). */
export interface JobQueueOptions {
  readonly url: string;
  /** Run dispatch jobs on this replica (every replica may; each job runs on one at a time). */
  readonly work: boolean;
  /** Run session timer jobs on this replica. */
  readonly timers: boolean;
  readonly concurrency: number;
  readonly pollMs: number;
  /** A running job that sends no heartbeat for this long is taken for dead and retried elsewhere. */
  readonly heartbeatSeconds: number;
  /** How often pg-boss looks for dead jobs. */
  readonly superviseSeconds: number;
  readonly retryLimit: number;
  readonly poolMax: number;
}

/**
 * pg-boss, the PostgreSQL job queue: jobs live in the same database, so the transaction that creates an
 * intent enqueues its job; workers on every replica claim jobs with SKIP LOCKED; a failed job is retried
 * with exponential backoff; a job whose worker died (no heartbeat) is retried elsewhere. The queue's
 * policy is `singleton` keyed by the intent, so one intent's jobs never run at the same time.
 */
export class JobQueue {
  readonly #boss: PgBoss;

  private constructor(
    boss: PgBoss,
    private readonly log: Logger,
  ) {
    this.#boss = boss;
  }

  static async start(
    options: JobQueueOptions,
    dispatcher: Dispatcher,
    sessionTimer: SessionTimerRunner,
    retention: RetentionJob,
    log: Logger,
  ): Promise<JobQueue> {
    const boss = new PgBoss({
      connectionString: options.url,
      application_name: 'comms-jobs',
      max: options.poolMax,
      // Dead jobs (no heartbeat) are found by the monitor pass, which has its own interval.
      superviseIntervalSeconds: options.superviseSeconds,
      monitorIntervalSeconds: options.superviseSeconds,
    });
    boss.on('error', (err: unknown) => log.warn({ err: String(err) }, 'job queue error'));
    await boss.start();
    const queueOptions = {
      retryLimit: options.retryLimit,
      retryDelay: 1,
      retryBackoff: true,
      retryDelayMax: 300,
      heartbeatSeconds: options.heartbeatSeconds,
      expireInSeconds: 900,
    };
    for (const name of [DISPATCH_QUEUE, SESSION_TIMER_QUEUE, RETENTION_QUEUE]) {
      try {
        if (await boss.getQueue(name)) await boss.updateQueue(name, queueOptions);
        // The purge: one queued and one running at most, whatever the replicas' schedules.
        else
          await boss.createQueue(name, { ...queueOptions, policy: name === RETENTION_QUEUE ? 'stately' : 'singleton' });
      } catch (err) {
        // Another replica created it at the same moment.
        if (!(await boss.getQueue(name))) throw err;
      }
    }
    const queue = new JobQueue(boss, log);
    if (options.work) {
      // Two workers each take a batch and run its jobs side by side; while batches come back full
      // they fetch again at once (a backlog drains at full speed, an idle queue is polled).
      await boss.work<{ tenant: string; id: string }>(
        DISPATCH_QUEUE,
        {
          localConcurrency: 2,
          batchSize: Math.max(1, Math.ceil(options.concurrency / 2)),
          burstWhenBatchFull: true,
          perJobResults: true,
          pollingIntervalSeconds: options.pollMs / 1000,
        },
        eachJob(
          log,
          'dispatch job failed',
          (data) => ({ notificationId: data.id }),
          (data) => dispatcher.run(data.tenant, data.id),
        ),
      );
    }
    if (options.timers) {
      await boss.work<{ tenant: string; id: string; at: string }>(
        SESSION_TIMER_QUEUE,
        { batchSize: 4, perJobResults: true, pollingIntervalSeconds: options.pollMs / 1000 },
        eachJob(
          log,
          'session timer job failed',
          (data) => ({ sessionId: data.id }),
          (data) => sessionTimer(data.tenant, data.id, new Date(data.at)),
        ),
      );
    }
    if (retention.enabled) {
      // One schedule for the whole deployment (pg-boss keeps it in its table); any replica sends it.
      await boss.schedule(RETENTION_QUEUE, retention.cron, {}, { tz: 'UTC' });
      await boss.work(
        RETENTION_QUEUE,
        { batchSize: 1, perJobResults: true, pollingIntervalSeconds: Math.max(options.pollMs / 1000, 5) },
        eachJob(log, 'retention purge failed', () => ({}), retention.run),
      );
    }
    return queue;
  }

  /** Jobs per queue by state, for the metrics. */
  async depth(): Promise<{ queue: string; queued: number; active: number; deferred: number }[]> {
    return Promise.all(
      [DISPATCH_QUEUE, SESSION_TIMER_QUEUE, RETENTION_QUEUE].map(async (queue) => {
        const q = await this.#boss.getQueue(queue);
        return { queue, queued: q?.queuedCount ?? 0, active: q?.activeCount ?? 0, deferred: q?.deferredCount ?? 0 };
      }),
    );
  }

  /** Stops taking jobs, lets running ones finish (up to `timeoutMs`), closes the pool. */
  async stop(timeoutMs: number): Promise<void> {
    await this.#boss.stop({ graceful: true, timeout: Math.max(timeoutMs, 1) });
    this.log.debug('job queue stopped');
  }
}

/**
 * A batch handler that runs each job of the batch side by side and reports each one's result: completed,
 * or failed (retried by pg-boss with backoff). RetryLater is an expected failure and is not logged.
 */
function eachJob<T>(
  log: Logger,
  failure: string,
  ids: (data: T) => Record<string, string>,
  run: (data: T) => Promise<void>,
) {
  return (batch: { id: string; data: T }[]) =>
    Promise.all(
      batch.map(async (job) => {
        try {
          await run(job.data);
          return { id: job.id, status: 'completed' as const };
        } catch (err) {
          if (!(err instanceof RetryLater)) log.error({ err, ...ids(job.data) }, failure);
          return { id: job.id, status: 'failed' as const, output: { error: String(err) } };
        }
      }),
    );
}
