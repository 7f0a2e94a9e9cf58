import { randomBytes } from 'node:crypto';
import type { MikroORM, PostgreSqlConnection } from '@mikro-orm/postgresql';
import type { HealthImplementation } from 'grpc-health-check';
import { systemClock, type Clock } from './domain/clock.js';
import { AuditLog } from './domain/audit/audit.log.js';
import { GovernanceService } from './domain/governance/governance.service.js';
import { MessageService } from './domain/message/message.service.js';
import { RetentionPurge } from './infra/db/purge.js';
import { DEFAULT_PLANS } from './domain/notification/notification.policy.js';
import { NotificationRepository } from './domain/notification/notification.repository.js';
import { NotificationService } from './domain/notification/notification.service.js';
import { Dispatcher, RetryLater } from './dispatch/dispatcher.js';
import { type ChannelProvider, inAppProvider, sandboxAddressBook } from './dispatch/provider.js';
import { JobQueue } from './dispatch/queue.js';
import { SandboxProvider } from './dispatch/sandbox.js';
import { ReadReceiptService } from './domain/read-receipt/read-receipt.service.js';
import { ThreadService } from './domain/thread/thread.service.js';
import { SessionRepository } from './domain/session/session.repository.js';
import { SessionService, TimerNotDue } from './domain/session/session.service.js';
import { SandboxRoomProvider } from './rooms/sandbox.js';
import { Authenticator } from './infra/auth/authenticator.js';
import type { Config } from './infra/config/config.js';
import { type EmbeddedDatabase, startEmbeddedPostgres } from './infra/db/embedded.js';
import { openDatabase } from './infra/db/orm.js';
import { FeedRepository } from './domain/feed/feed.repository.js';
import { FeedHub } from './feeds/hub.js';
import { FeedListener } from './feeds/listener.js';
import { createLogger, type Logger } from './infra/log/logger.js';
import { RpcAdapter } from './rpc/adapter.js';
import { CallLimits } from './rpc/limits.js';
import { Metrics, serveMetrics } from './infra/metrics/metrics.js';
import { addReflection, addServices, bind, createHealth, Server, serverOptions, setServing } from './rpc/server.js';

/** A running service instance. */
export interface App {
  /** The bound gRPC port. */
  readonly port: number;
  /** The bound Prometheus port (`GET /metrics`), unless METRICS_ENABLED=false. */
  readonly metricsPort: number | undefined;
  readonly health: HealthImplementation;
  readonly orm: MikroORM;
  readonly log: Logger;
  /** This replica's live-feed fan-out (streams and subscribers open here). */
  readonly feeds: FeedHub;
  /**
   * The server's clock for sessions: `tick` applies what is due for one session, `runDue` for every
   * session (of a tenant) whose timer has come by this app's clock. Timer jobs and the sweep call them;
   * tests with a controllable clock call them after moving it.
   */
  readonly sessionTimers: {
    tick(tenantId: string, sessionId: string): Promise<boolean>;
    runDue(tenantId?: string): Promise<number>;
  };
  /** The sandbox realtime provider (its `connect` plays a client joining a room with a credential). */
  readonly rooms: SandboxRoomProvider;
  /** The access audit's writer: `flush` writes the records still pending (tests, shutdown). */
  readonly audit: AuditLog;
  /**
   * The retention purge as the scheduled job runs it: every body past its tenant's retention at `now`
   * (default: this app's clock) and not under a legal hold; returns how many were purged.
   */
  readonly retention: { purge(now?: Date): Promise<number> };
  /**
   * Graceful shutdown: health NOT_SERVING, keep serving for `shutdownDrainDelayMs` so load balancers
   * and clients watching health move away, end live feeds with UNAVAILABLE (after the last event each
   * client was sent; they resume elsewhere with their token), stop accepting calls, let in-flight calls
   * finish (up to `shutdownGraceMs`, then cancel what is left), close the pool, stop the embedded
   * database.
   */
  shutdown(): Promise<void>;
}

/**
 * Starts the service: database (embedded when DATABASE_URL is unset), migrations, gRPC server with
 * health and reflection, and a database health probe.
 */
export async function startApp(config: Config, opts: { clock?: Clock; log?: Logger } = {}): Promise<App> {
  const log = opts.log ?? createLogger(config.logLevel);
  let embedded: EmbeddedDatabase | undefined;
  let url = config.databaseUrl;
  if (!url) {
    log.info({ dataDir: config.embeddedPg.dataDir, port: config.embeddedPg.port }, 'starting embedded PostgreSQL');
    embedded = await startEmbeddedPostgres(config.embeddedPg.dataDir, config.embeddedPg.port, (line) =>
      log.debug({ pg: line.trim() }, 'embedded postgres'),
    );
    url = embedded.url;
  }
  const orm = await openDatabase(url, config.dbPoolMax, config.dbStatementTimeoutMs, config.governance.dbRole);
  const clock = opts.clock ?? systemClock;
  await new NotificationRepository(orm.em.fork()).saveDefaultSettings(
    { ...DEFAULT_PLANS, ...config.notify.defaultPlans },
    config.notify.deepLinkBase,
  );
  const channelProviders = config.notify.channelProviders;
  const notifications = new NotificationService(clock, new Set(Object.values(channelProviders)));
  const sandbox = new SandboxProvider(orm, config.notify.sandboxReports, (report) =>
    orm.em
      .fork()
      .transactional((em) =>
        notifications.recordReport(new NotificationRepository(em), report.tenantId, { ...report, errorMessage: '' }),
      )
      .catch((err: unknown) => log.warn({ err: String(err) }, 'sandbox delivery report failed')),
  );
  const registry = new Map<string, ChannelProvider>([
    [sandbox.name, sandbox],
    [inAppProvider.name, inAppProvider],
  ]);
  if (config.env === 'production' && Object.values(channelProviders).includes('sandbox')) {
    log.warn({ channelProviders }, 'notifications go to the sandbox provider: nothing reaches a phone or inbox');
  }
  const dispatcher = new Dispatcher(
    orm,
    {
      byChannel: {
        push: registry.get(channelProviders.push)!,
        sms: registry.get(channelProviders.sms)!,
        email: registry.get(channelProviders.email)!,
        in_app: inAppProvider,
      },
      byName: registry,
    },
    sandboxAddressBook,
    config.notify,
    clock,
    log,
  );
  const rooms = new SandboxRoomProvider(
    orm,
    config.jwt.secret ?? randomBytes(32).toString('hex'),
    config.session.credentialTtlSeconds,
  );
  const sessions = new SessionService(clock, rooms, (err, what) =>
    log.warn({ err: String(err), what }, 'realtime provider call failed'),
  );
  await new SessionRepository(orm.em.fork()).saveDefaultSettings(config.session.defaults);
  const timerDb = () => ({ em: orm.em.fork(), deadline: undefined, statementTimeoutMs: config.dbStatementTimeoutMs });
  const sessionTimers = {
    tick: (tenantId: string, sessionId: string) => sessions.tick(timerDb(), tenantId, sessionId),
    runDue: (tenantId?: string) => sessions.runDue(timerDb(), tenantId),
  };
  const purge = new RetentionPurge(
    config.governance.retentionDatabaseUrl ?? url,
    config.governance.retentionRole,
    config.governance.purgeBatch,
    Math.max(config.dbStatementTimeoutMs, 60_000),
  );
  const retention = {
    purge: async (now?: Date) => {
      const purged = await purge.run(now ?? clock.now());
      let total = 0;
      for (const [tenantId, n] of purged) {
        log.info({ tenantId, purged: n }, 'retention purge');
        total += n;
      }
      return total;
    },
  };
  const jobs = await JobQueue.start(
    {
      url,
      work: config.notify.dispatch,
      timers: config.session.timers,
      concurrency: config.notify.concurrency,
      pollMs: config.notify.pollMs,
      heartbeatSeconds: config.notify.jobHeartbeatSeconds,
      superviseSeconds: config.notify.superviseSeconds,
      retryLimit: config.notify.retryLimit,
      poolMax: config.notify.jobPoolMax,
    },
    dispatcher,
    async (tenantId, sessionId, at) => {
      try {
        await sessions.tick(timerDb(), tenantId, sessionId, at);
      } catch (err) {
        throw err instanceof TimerNotDue ? new RetryLater(err.message) : err;
      }
    },
    {
      enabled: config.governance.purge,
      cron: config.governance.purgeCron,
      run: async () => void (await retention.purge()),
    },
    log,
  );
  const feeds = new FeedHub(orm, log, { cacheEvents: config.feed.cacheEvents, pageSize: 200 });
  const listener = new FeedListener(
    url,
    log,
    (tenantId, stream) => feeds.wake(tenantId, stream),
    () => feeds.wakeAll(),
  );
  await listener.start();
  const audit = new AuditLog(
    orm,
    {
      enabled: config.governance.audit,
      flushMs: config.governance.auditFlushMs,
      bufferMax: config.governance.auditBufferMax,
    },
    (err, pending) => log.error({ err: String(err), pending }, 'access audit write failed; records kept'),
  );
  const health = createHealth();
  const server = new Server(serverOptions(config.grpc));
  const metrics = new Metrics({
    queues: () => jobs.depth(),
    pool: async () => {
      const pool = await (orm.em.getConnection() as PostgreSqlConnection).getNativeClient();
      return { total: pool.totalCount, idle: pool.idleCount, waiting: pool.waitingCount };
    },
    auditPending: () => audit.pending,
  });
  const metricsServer = config.metrics.enabled
    ? await serveMetrics(metrics, config.metrics.host, config.metrics.port)
    : undefined;
  const adapter = new RpcAdapter({
    orm,
    statementTimeoutMs: config.dbStatementTimeoutMs,
    auth: new Authenticator(config.jwt),
    log,
    streamStallMs: config.feed.stallMs,
    limits: new CallLimits(config.limits),
    pageSizeMax: config.limits.pageSizeMax,
    metrics,
    audit,
  });
  const threads = new ThreadService(clock);
  const messages = new MessageService(clock, {
    bodyMaxBytes: config.limits.messageMaxBytes,
    retractWindowMs: config.governance.retractWindowMs,
  });
  addServices(server, adapter, {
    threads,
    messages,
    governance: new GovernanceService(clock, threads, messages, {
      exportConcurrency: config.governance.exportConcurrency,
    }),
    receipts: new ReadReceiptService(clock, { maxIdsPerCall: config.limits.markReadMaxIds }),
    notifications,
    sessions,
    feeds,
    feedHeartbeatMs: config.feed.heartbeatMs,
    exportStallMs: config.governance.exportStallMs,
  });
  health.addToServer(server);
  addReflection(server);
  const port = await bind(server, config.host, config.port);
  setServing(health, true);

  // The database probe: NOT_SERVING while PostgreSQL is unreachable, SERVING again once it answers.
  let draining = false;
  let probing = false;
  const probe = setInterval(() => {
    if (probing || draining) return;
    probing = true;
    orm.em
      .getConnection()
      .execute('select 1')
      .then(
        () => !draining && setServing(health, true),
        (err: unknown) => {
          log.warn({ err: String(err) }, 'database probe failed');
          if (!draining) setServing(health, false);
        },
      )
      .finally(() => (probing = false));
  }, config.healthProbeMs);
  probe.unref();

  // Feed retention: delete events past FEED_RETENTION_HOURS, in batches (any replica may run it).
  let pruning = false;
  const prune = setInterval(() => {
    if (pruning || draining) return;
    pruning = true;
    void (async () => {
      const before = new Date(clock.now().getTime() - config.feed.retentionHours * 3_600_000);
      const repo = new FeedRepository(orm.em.fork());
      while ((await repo.prune(before, 5000)) >= 5000 && !draining);
    })()
      .catch((err: unknown) => log.warn({ err: String(err) }, 'feed prune failed'))
      .finally(() => (pruning = false));
  }, config.feed.pruneIntervalMs);
  prune.unref();

  // The session sweep: a backstop to the timer jobs (one that exhausted its retries, say).
  let sweeping = false;
  const sweep = setInterval(() => {
    if (sweeping || draining || !config.session.timers) return;
    sweeping = true;
    sessionTimers
      .runDue()
      .catch((err: unknown) => log.warn({ err: String(err) }, 'session sweep failed'))
      .finally(() => (sweeping = false));
  }, config.session.sweepMs);
  sweep.unref();

  let stopping: Promise<void> | undefined;
  const shutdown = () =>
    (stopping ??= (async () => {
      draining = true;
      clearInterval(probe);
      clearInterval(prune);
      clearInterval(sweep);
      setServing(health, false);
      log.info({ drainDelayMs: config.shutdownDrainDelayMs, graceMs: config.shutdownGraceMs }, 'shutting down');
      await new Promise((resolve) => setTimeout(resolve, config.shutdownDrainDelayMs));
      // Streams never finish by themselves: end them so tryShutdown can complete.
      feeds.close();
      await new Promise<void>((resolve) => {
        const force = setTimeout(() => {
          log.warn('grace period over; cancelling remaining calls');
          server.forceShutdown();
          resolve();
        }, config.shutdownGraceMs);
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      });
      // Every call has ended: write the audit records still pending before the pool closes.
      await audit.close(config.shutdownGraceMs);
      // Running dispatch jobs finish (or are retried elsewhere after the grace period).
      await jobs.stop(config.shutdownGraceMs);
      sandbox.close();
      await listener.stop();
      await metricsServer?.close();
      await orm.close(true);
      await embedded?.stop();
      log.info('stopped');
    })());

  log.info({ port, embedded: embedded !== undefined }, 'serving');
  return {
    port,
    metricsPort: metricsServer?.port,
    health,
    orm,
    log,
    feeds,
    sessionTimers,
    rooms,
    audit,
    retention,
    shutdown,
  };
}
