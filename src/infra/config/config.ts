import { bool, cleanEnv, makeValidator, port, str, url } from 'envalid';
import { CHANNELS, KINDS, PLAN_CONDITIONS } from '../../domain/notification/notification.policy.js';
import type { SessionSettings } from '../../domain/session/session.policy.js';

/** Thrown when the environment holds a bad value; lists every bad variable with what is wrong. */
export class ConfigError extends Error {
  constructor(readonly problems: readonly string[]) {
    super(`invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
  }
}

/** An integer within [min, max]. */
function int(min: number, max: number) {
  return makeValidator<number>((raw) => {
    if (!/^-?\d+$/.test(raw.trim())) throw new Error(`must be a whole number, got "${raw}"`);
    const n = Number(raw);
    if (n < min || n > max) throw new Error(`must be between ${min} and ${max}, got ${n}`);
    return n;
  });
}

const postgresUrl = makeValidator<string>((raw) => {
  let parsed: URL;
  try {
    parsed = new URL(raw);
  } catch {
    throw new Error('must be a URL such as postgres://user@host:5432/dbname');
  }
  if (parsed.protocol !== 'postgres:' && parsed.protocol !== 'postgresql:') {
    throw new Error(`must use the postgres:// scheme, got "${parsed.protocol}"`);
  }
  if (parsed.pathname.length <= 1) throw new Error('must name a database, e.g. postgres://host/dbname');
  return raw;
});

/** A PostgreSQL role name (it goes into the connection's startup options), or empty. */
const roleName = makeValidator<string>((raw) => {
  if (raw !== '' && !/^[a-z_][a-z0-9_]{0,62}$/.test(raw)) {
    throw new Error(`must be a lower-case PostgreSQL role name or empty, got ${JSON.stringify(raw)}`);
  }
  return raw;
});

const secret = makeValidator<string>((raw) => {
  if (raw.length < 32) throw new Error('must be at least 32 characters (HS256 needs a 256-bit secret)');
  return raw;
});

/** Channel providers this build ships; real ones register here and are chosen per channel. */
export const PROVIDER_NAMES = ['sandbox'] as const;
const NOTIFY_CHANNELS = ['push', 'sms', 'email'] as const;
const REPORT_STATUSES = ['queued', 'sent', 'delivered', 'undelivered', 'failed', 'read'] as const;

/** `push=sandbox,sms=sandbox,email=sandbox`: the provider of each external channel. */
const channelProviders = makeValidator<Record<(typeof NOTIFY_CHANNELS)[number], string>>((raw) => {
  const out: Record<string, string> = {};
  for (const pair of raw
    .split(',')
    .map((p) => p.trim())
    .filter(Boolean)) {
    const [channel, provider] = pair.split('=').map((x) => x.trim());
    if (!NOTIFY_CHANNELS.includes(channel as never)) throw new Error(`unknown channel "${channel}" (push, sms, email)`);
    if (!PROVIDER_NAMES.includes(provider as never)) {
      throw new Error(`unknown provider "${provider}" for ${channel} (known: ${PROVIDER_NAMES.join(', ')})`);
    }
    out[channel!] = provider!;
  }
  for (const c of NOTIFY_CHANNELS) if (!out[c]) throw new Error(`names no provider for ${c}`);
  return out as Record<(typeof NOTIFY_CHANNELS)[number], string>;
});

/** A comma-separated list of delivery statuses (possibly empty). */
const reportStatuses = makeValidator<(typeof REPORT_STATUSES)[number][]>((raw) => {
  const list = raw
    .split(',')
    .map((p) => p.trim())
    .filter(Boolean);
  for (const s of list) if (!REPORT_STATUSES.includes(s as never)) throw new Error(`unknown delivery status "${s}"`);
  return list as (typeof REPORT_STATUSES)[number][];
});

const PLAN_KINDS: readonly string[] = KINDS;
const PLAN_CHANNELS: readonly string[] = CHANNELS;
const PLAN_CONDITION_NAMES: readonly string[] = PLAN_CONDITIONS;

/** A step of a default channel plan, as NOTIFY_DEFAULT_PLANS gives it. */
export interface PlanStepConfig {
  readonly channel: string;
  readonly delay_ms: number;
  readonly condition: string;
}

/**
 * JSON `{"<kind>": [{"channel": "push", "delay_ms": 0, "condition": "always"}, ...], ...}`: default channel
 * plans replacing the built-in ones for the kinds named (at most 4 steps, delays up to 7 days); `[]`
 * sends nothing for the kind (its intents are SUPPRESSED, NO_CHANNEL_ALLOWED).
 */
const defaultPlans = makeValidator<Record<string, PlanStepConfig[]>>((raw) => {
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    throw new Error('must be a JSON object of kind → plan steps');
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error('must be a JSON object');
  for (const [kind, steps] of Object.entries(parsed)) {
    if (!PLAN_KINDS.includes(kind)) throw new Error(`unknown kind "${kind}" (${PLAN_KINDS.join(', ')})`);
    if (!Array.isArray(steps) || steps.length > 4) throw new Error(`${kind}: must be a list of at most 4 steps`);
    for (const step of steps as Record<string, unknown>[]) {
      if (!PLAN_CHANNELS.includes(step?.channel as string))
        throw new Error(`${kind}: unknown channel ${String(step?.channel)}`);
      if (!PLAN_CONDITION_NAMES.includes(step.condition as string))
        throw new Error(`${kind}: unknown condition ${String(step.condition)}`);
      const delay = step.delay_ms;
      if (typeof delay !== 'number' || !Number.isInteger(delay) || delay < 0 || delay > 7 * 86_400_000) {
        throw new Error(`${kind}: delay_ms must be a whole number of milliseconds up to 7 days`);
      }
    }
  }
  return parsed as Record<string, PlanStepConfig[]>;
});

const deepLinkBase = makeValidator<string>((raw) => {
  if (!/^[a-z][a-z0-9+.-]*:\/\/([^\s]*\/)?$/.test(raw))
    throw new Error('must look like comms:// or https://host/path/');
  return raw;
});

/** Realtime (video room) provider adapters this build ships. */
export const ROOM_PROVIDER_NAMES = ['sandbox'] as const;

/** The development JWT secret, used only outside production when JWT_SECRET and JWT_JWKS_URL are unset. */
export const DEV_JWT_SECRET = 'comms-dev-secret-not-for-production-use-0001';

/** The service's whole configuration, validated once at start. */
export interface Config {
  readonly env: 'production' | 'development' | 'test';
  readonly host: string;
  readonly port: number;
  /** Unset → an embedded PostgreSQL is started in `embeddedPg.dataDir`. */
  readonly databaseUrl: string | undefined;
  readonly embeddedPg: { readonly dataDir: string; readonly port: number };
  readonly dbPoolMax: number;
  readonly dbStatementTimeoutMs: number;
  readonly jwt: {
    readonly secret: string | undefined;
    readonly jwksUrl: string | undefined;
    readonly issuer: string;
    readonly audience: string;
  };
  readonly grpc: {
    readonly maxReceiveBytes: number;
    readonly maxSendBytes: number;
    readonly maxConcurrentStreams: number;
    readonly keepaliveTimeMs: number;
    readonly keepaliveTimeoutMs: number;
    readonly maxConnectionAgeMs: number;
    readonly maxConnectionAgeGraceMs: number;
  };
  readonly limits: {
    readonly messageMaxBytes: number;
    readonly markReadMaxIds: number;
    /** Writes per caller per window on one replica (0: unlimited). */
    readonly writesPerWindow: number;
    readonly windowSeconds: number;
    /** Open server streams per caller on one replica (0: unlimited). */
    readonly streamsPerCaller: number;
    /** The most items any List returns, lowering each List's own maximum (0: the contract's maxima). */
    readonly pageSizeMax: number;
  };
  /** The Prometheus endpoint (`GET /metrics` on its own HTTP port). */
  readonly metrics: { readonly enabled: boolean; readonly host: string; readonly port: number };
  readonly feed: {
    /** Idle streams get a heartbeat this often. */
    readonly heartbeatMs: number;
    /** A stream whose client accepts no data for this long while events wait ends RESOURCE_EXHAUSTED. */
    readonly stallMs: number;
    /** Events are kept this long; older resume tokens answer RESYNC_REQUIRED. */
    readonly retentionHours: number;
    readonly pruneIntervalMs: number;
    /** Events each stream keeps in memory per replica for its live subscribers. */
    readonly cacheEvents: number;
  };
  readonly notify: {
    /** Run dispatch jobs on this replica. */
    readonly dispatch: boolean;
    readonly concurrency: number;
    readonly pollMs: number;
    readonly jobHeartbeatSeconds: number;
    readonly superviseSeconds: number;
    readonly retryLimit: number;
    readonly jobPoolMax: number;
    readonly confirmDeadlineMs: number;
    readonly providerTimeoutMs: number;
    readonly maxErrorsPerStep: number;
    readonly channelProviders: Readonly<Record<'push' | 'sms' | 'email', string>>;
    /** Statuses the sandbox provider reports after accepting a message. */
    readonly sandboxReports: readonly (typeof REPORT_STATUSES)[number][];
    readonly deepLinkBase: string;
    /** Default plans replacing the built-in ones, per kind (NOTIFY_DEFAULT_PLANS). */
    readonly defaultPlans: Readonly<Record<string, readonly PlanStepConfig[]>>;
  };
  readonly session: {
    /** Run session timer jobs (waiting room opening, expiries, maximum duration) on this replica. */
    readonly timers: boolean;
    /** How often a timer replica also sweeps sessions whose timer has come (a backstop to the jobs). */
    readonly sweepMs: number;
    /** The default session settings (tenant ''); a tenant's own `session_settings` row overrides them. */
    readonly defaults: SessionSettings;
    /** The realtime provider adapter that holds the rooms. */
    readonly roomProvider: (typeof ROOM_PROVIDER_NAMES)[number];
    /** Lifetime of a join credential. */
    readonly credentialTtlSeconds: number;
  };
  /** Data governance (issue 9). */
  readonly governance: {
    /**
     * The database role the service's pool runs as (`SET ROLE` at connect; empty: the login role as it
     * is, for a login that is itself a member of comms_app only).
     */
    readonly dbRole: string;
    /** The role, and optionally the login, the retention purge runs as. */
    readonly retentionRole: string;
    readonly retentionDatabaseUrl: string | undefined;
    /** Run the scheduled retention purge on this replica. */
    readonly purge: boolean;
    /** When the purge runs (pg-boss cron, UTC). */
    readonly purgeCron: string;
    /** Bodies purged per transaction. */
    readonly purgeBatch: number;
    /** How long after sending the sender may retract a message. */
    readonly retractWindowMs: number;
    /** Record the access audit (off only to measure its cost in bench/). */
    readonly audit: boolean;
    /** Audit records wait at most this long before they are written (in one batch). */
    readonly auditFlushMs: number;
    /** Audit records held in memory while the database does not take them; beyond: reads fail UNAVAILABLE. */
    readonly auditBufferMax: number;
    /** ExportThread streams running at once on this replica. */
    readonly exportConcurrency: number;
    /** An export whose client takes no data this long ends RESOURCE_EXHAUSTED (SLOW_CONSUMER). */
    readonly exportStallMs: number;
  };
  readonly shutdownGraceMs: number;
  readonly shutdownDrainDelayMs: number;
  readonly healthProbeMs: number;
  readonly logLevel: string;
}

/**
 * Reads and validates the configuration from `env`. Throws ConfigError naming every bad variable, so an
 * operator fixes them all in one go.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const problems: string[] = [];
  const e = cleanEnv(
    env,
    {
      NODE_ENV: str({ choices: ['production', 'development', 'test'], default: 'development' }),
      HOST: str({ default: '0.0.0.0', desc: 'address the gRPC server binds' }),
      PORT: int(0, 65535)({ default: 50051, desc: 'gRPC port (0 = any free port)' }),
      DATABASE_URL: postgresUrl({ default: undefined }),
      EMBEDDED_PG_DIR: str({ default: '.data/postgres' }),
      EMBEDDED_PG_PORT: port({ default: 54329 }),
      DB_POOL_MAX: int(1, 500)({ default: 20 }),
      DB_STATEMENT_TIMEOUT_MS: int(100, 600_000)({ default: 5_000 }),
      JWT_SECRET: secret({ default: undefined }),
      JWT_JWKS_URL: url({ default: undefined }),
      JWT_ISSUER: str({ default: 'comms-dev' }),
      JWT_AUDIENCE: str({ default: 'comms' }),
      GRPC_MAX_RECEIVE_BYTES: int(1024, 64 * 1024 * 1024)({ default: 1024 * 1024 }),
      GRPC_MAX_SEND_BYTES: int(1024, 64 * 1024 * 1024)({ default: 4 * 1024 * 1024 }),
      GRPC_MAX_CONCURRENT_STREAMS: int(1, 100_000)({ default: 1000 }),
      GRPC_KEEPALIVE_TIME_MS: int(1000, 3_600_000)({ default: 30_000 }),
      GRPC_KEEPALIVE_TIMEOUT_MS: int(1000, 600_000)({ default: 10_000 }),
      GRPC_MAX_CONNECTION_AGE_MS: int(1000, 86_400_000)({ default: 1_800_000 }),
      GRPC_MAX_CONNECTION_AGE_GRACE_MS: int(0, 3_600_000)({ default: 300_000 }),
      MESSAGE_MAX_BYTES: int(1, 262_144)({ default: 16_384 }),
      MARK_READ_MAX_IDS: int(1, 10_000)({ default: 500 }),
      RATE_LIMIT_WRITES: int(0, 1_000_000)({ default: 100, desc: 'writes per caller per window and replica; 0: off' }),
      RATE_LIMIT_WINDOW_SECONDS: int(1, 3600)({ default: 1 }),
      MAX_STREAMS_PER_CALLER: int(0, 100_000)({ default: 100, desc: 'open streams per caller and replica; 0: off' }),
      PAGE_SIZE_MAX: int(0, 500)({ default: 0, desc: 'lowers every List maximum page size; 0: the contract maxima' }),
      METRICS_ENABLED: bool({ default: true }),
      METRICS_HOST: str({ default: '0.0.0.0' }),
      METRICS_PORT: int(0, 65535)({ default: 9464, desc: 'Prometheus endpoint port (0 = any free port)' }),
      FEED_HEARTBEAT_MS: int(100, 600_000)({ default: 15_000 }),
      FEED_STALL_MS: int(50, 600_000)({ default: 10_000 }),
      FEED_RETENTION_HOURS: int(1, 24 * 366)({ default: 168 }),
      FEED_PRUNE_INTERVAL_MS: int(1000, 86_400_000)({ default: 300_000 }),
      FEED_CACHE_EVENTS: int(1, 100_000)({ default: 64 }),
      NOTIFY_DISPATCH: bool({ default: true, desc: 'run notification dispatch jobs on this replica' }),
      NOTIFY_CONCURRENCY: int(1, 256)({ default: 8 }),
      NOTIFY_POLL_MS: int(500, 60_000)({ default: 1_000 }),
      NOTIFY_JOB_HEARTBEAT_SECONDS: int(10, 3_600)({ default: 30 }),
      NOTIFY_SUPERVISE_SECONDS: int(1, 3_600)({ default: 30 }),
      NOTIFY_RETRY_LIMIT: int(0, 100)({ default: 10 }),
      NOTIFY_JOB_POOL_MAX: int(2, 100)({ default: 4 }),
      NOTIFY_CONFIRM_DEADLINE_MS: int(1_000, 7 * 86_400_000)({ default: 600_000 }),
      NOTIFY_PROVIDER_TIMEOUT_MS: int(100, 120_000)({ default: 10_000 }),
      NOTIFY_MAX_ERRORS_PER_STEP: int(1, 20)({ default: 3 }),
      NOTIFY_CHANNEL_PROVIDERS: channelProviders({ default: { push: 'sandbox', sms: 'sandbox', email: 'sandbox' } }),
      NOTIFY_SANDBOX_REPORTS: reportStatuses({ default: ['delivered'] }),
      NOTIFY_DEEP_LINK_BASE: deepLinkBase({ default: 'comms://' }),
      NOTIFY_DEFAULT_PLANS: defaultPlans({ default: {} }),
      SESSION_TIMERS: bool({ default: true, desc: 'run session timer jobs on this replica' }),
      SESSION_SWEEP_MS: int(1_000, 3_600_000)({ default: 60_000 }),
      SESSION_LEAD_MS: int(0, 86_400_000)({ default: 900_000 }),
      SESSION_NO_SHOW_MS: int(60_000, 86_400_000)({ default: 1_800_000 }),
      SESSION_WAITING_MS: int(10_000, 86_400_000)({ default: 1_200_000 }),
      SESSION_REJOIN_ALLOWED: bool({ default: true }),
      SESSION_REJOIN_GRACE_MS: int(0, 3_600_000)({ default: 120_000 }),
      SESSION_PROVIDER_GRACE_MS: int(0, 3_600_000)({ default: 300_000 }),
      SESSION_MAX_DURATION_MS: int(60_000, 86_400_000)({ default: 14_400_000 }),
      SESSION_OVERRUN_MS: int(0, 86_400_000)({ default: 1_800_000 }),
      SESSION_ROOM_PROVIDER: str({ choices: ROOM_PROVIDER_NAMES, default: 'sandbox' }),
      SESSION_CREDENTIAL_TTL_SECONDS: int(30, 86_400)({ default: 300 }),
      DB_ROLE: roleName({ default: 'comms_app', desc: 'role the service pool runs as (empty: the login role)' }),
      RETENTION_DB_ROLE: roleName({ default: 'comms_retention' }),
      RETENTION_DATABASE_URL: postgresUrl({ default: undefined }),
      RETENTION_PURGE: bool({ default: true, desc: 'run the scheduled retention purge on this replica' }),
      RETENTION_PURGE_CRON: str({ default: '*/10 * * * *' }),
      RETENTION_PURGE_BATCH: int(1, 100_000)({ default: 1_000 }),
      RETRACT_WINDOW_MS: int(0, 30 * 86_400_000)({ default: 900_000 }),
      AUDIT_ENABLED: bool({ default: true }),
      AUDIT_FLUSH_MS: int(1, 60_000)({ default: 100 }),
      AUDIT_BUFFER_MAX: int(100, 10_000_000)({ default: 100_000 }),
      EXPORT_CONCURRENCY: int(1, 100)({ default: 4 }),
      EXPORT_STALL_MS: int(1_000, 3_600_000)({ default: 300_000 }),
      SHUTDOWN_GRACE_MS: int(0, 600_000)({ default: 10_000 }),
      SHUTDOWN_DRAIN_DELAY_MS: int(0, 600_000)({ default: 1_000 }),
      HEALTH_PROBE_MS: int(100, 60_000)({ default: 2_000 }),
      LOG_LEVEL: str({ choices: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], default: 'info' }),
    },
    {
      reporter: ({ errors }) => {
        for (const [name, err] of Object.entries(errors)) {
          const message = (err as Error | undefined)?.message ?? 'invalid';
          problems.push(`${name}: ${message}`);
        }
      },
    },
  );
  if (problems.length === 0) {
    if (e.JWT_SECRET && e.JWT_JWKS_URL) problems.push('JWT_SECRET and JWT_JWKS_URL: set one, not both');
    if (e.NODE_ENV === 'production' && !e.JWT_SECRET && !e.JWT_JWKS_URL) {
      problems.push('JWT_SECRET or JWT_JWKS_URL: one is required in production');
    }
  }
  if (problems.length > 0) throw new ConfigError(problems);
  const devSecret = e.NODE_ENV !== 'production' && !e.JWT_SECRET && !e.JWT_JWKS_URL ? DEV_JWT_SECRET : undefined;
  return {
    env: e.NODE_ENV as Config['env'],
    host: e.HOST,
    port: e.PORT,
    databaseUrl: e.DATABASE_URL,
    embeddedPg: { dataDir: e.EMBEDDED_PG_DIR, port: e.EMBEDDED_PG_PORT },
    dbPoolMax: e.DB_POOL_MAX,
    dbStatementTimeoutMs: e.DB_STATEMENT_TIMEOUT_MS,
    jwt: {
      secret: e.JWT_SECRET ?? devSecret,
      jwksUrl: e.JWT_JWKS_URL,
      issuer: e.JWT_ISSUER,
      audience: e.JWT_AUDIENCE,
    },
    grpc: {
      maxReceiveBytes: e.GRPC_MAX_RECEIVE_BYTES,
      maxSendBytes: e.GRPC_MAX_SEND_BYTES,
      maxConcurrentStreams: e.GRPC_MAX_CONCURRENT_STREAMS,
      keepaliveTimeMs: e.GRPC_KEEPALIVE_TIME_MS,
      keepaliveTimeoutMs: e.GRPC_KEEPALIVE_TIMEOUT_MS,
      maxConnectionAgeMs: e.GRPC_MAX_CONNECTION_AGE_MS,
      maxConnectionAgeGraceMs: e.GRPC_MAX_CONNECTION_AGE_GRACE_MS,
    },
    limits: {
      messageMaxBytes: e.MESSAGE_MAX_BYTES,
      markReadMaxIds: e.MARK_READ_MAX_IDS,
      writesPerWindow: e.RATE_LIMIT_WRITES,
      windowSeconds: e.RATE_LIMIT_WINDOW_SECONDS,
      streamsPerCaller: e.MAX_STREAMS_PER_CALLER,
      pageSizeMax: e.PAGE_SIZE_MAX,
    },
    metrics: { enabled: e.METRICS_ENABLED, host: e.METRICS_HOST, port: e.METRICS_PORT },
    feed: {
      heartbeatMs: e.FEED_HEARTBEAT_MS,
      stallMs: e.FEED_STALL_MS,
      retentionHours: e.FEED_RETENTION_HOURS,
      pruneIntervalMs: e.FEED_PRUNE_INTERVAL_MS,
      cacheEvents: e.FEED_CACHE_EVENTS,
    },
    notify: {
      dispatch: e.NOTIFY_DISPATCH,
      concurrency: e.NOTIFY_CONCURRENCY,
      pollMs: e.NOTIFY_POLL_MS,
      jobHeartbeatSeconds: e.NOTIFY_JOB_HEARTBEAT_SECONDS,
      superviseSeconds: e.NOTIFY_SUPERVISE_SECONDS,
      retryLimit: e.NOTIFY_RETRY_LIMIT,
      jobPoolMax: e.NOTIFY_JOB_POOL_MAX,
      confirmDeadlineMs: e.NOTIFY_CONFIRM_DEADLINE_MS,
      providerTimeoutMs: e.NOTIFY_PROVIDER_TIMEOUT_MS,
      maxErrorsPerStep: e.NOTIFY_MAX_ERRORS_PER_STEP,
      channelProviders: e.NOTIFY_CHANNEL_PROVIDERS,
      sandboxReports: e.NOTIFY_SANDBOX_REPORTS,
      deepLinkBase: e.NOTIFY_DEEP_LINK_BASE,
      defaultPlans: e.NOTIFY_DEFAULT_PLANS,
    },
    session: {
      timers: e.SESSION_TIMERS,
      sweepMs: e.SESSION_SWEEP_MS,
      defaults: {
        leadMs: e.SESSION_LEAD_MS,
        noShowMs: e.SESSION_NO_SHOW_MS,
        waitingMs: e.SESSION_WAITING_MS,
        rejoinAllowed: e.SESSION_REJOIN_ALLOWED,
        rejoinGraceMs: e.SESSION_REJOIN_GRACE_MS,
        providerGraceMs: e.SESSION_PROVIDER_GRACE_MS,
        maxDurationMs: e.SESSION_MAX_DURATION_MS,
        overrunMs: e.SESSION_OVERRUN_MS,
      },
      roomProvider: e.SESSION_ROOM_PROVIDER,
      credentialTtlSeconds: e.SESSION_CREDENTIAL_TTL_SECONDS,
    },
    governance: {
      dbRole: e.DB_ROLE,
      retentionRole: e.RETENTION_DB_ROLE,
      retentionDatabaseUrl: e.RETENTION_DATABASE_URL,
      purge: e.RETENTION_PURGE,
      purgeCron: e.RETENTION_PURGE_CRON,
      purgeBatch: e.RETENTION_PURGE_BATCH,
      retractWindowMs: e.RETRACT_WINDOW_MS,
      audit: e.AUDIT_ENABLED,
      auditFlushMs: e.AUDIT_FLUSH_MS,
      auditBufferMax: e.AUDIT_BUFFER_MAX,
      exportConcurrency: e.EXPORT_CONCURRENCY,
      exportStallMs: e.EXPORT_STALL_MS,
    },
    shutdownGraceMs: e.SHUTDOWN_GRACE_MS,
    shutdownDrainDelayMs: e.SHUTDOWN_DRAIN_DELAY_MS,
    healthProbeMs: e.HEALTH_PROBE_MS,
    logLevel: e.LOG_LEVEL,
  };
}
