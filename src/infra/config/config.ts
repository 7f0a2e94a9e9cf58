import { cleanEnv, makeValidator, port, str, url } from 'envalid';

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

const secret = makeValidator<string>((raw) => {
  if (raw.length < 32) throw new Error('must be at least 32 characters (HS256 needs a 256-bit secret)');
  return raw;
});

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
  readonly limits: { readonly messageMaxBytes: number; readonly markReadMaxIds: number };
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
      FEED_HEARTBEAT_MS: int(100, 600_000)({ default: 15_000 }),
      FEED_STALL_MS: int(50, 600_000)({ default: 10_000 }),
      FEED_RETENTION_HOURS: int(1, 24 * 366)({ default: 168 }),
      FEED_PRUNE_INTERVAL_MS: int(1000, 86_400_000)({ default: 300_000 }),
      FEED_CACHE_EVENTS: int(1, 100_000)({ default: 256 }),
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
    limits: { messageMaxBytes: e.MESSAGE_MAX_BYTES, markReadMaxIds: e.MARK_READ_MAX_IDS },
    feed: {
      heartbeatMs: e.FEED_HEARTBEAT_MS,
      stallMs: e.FEED_STALL_MS,
      retentionHours: e.FEED_RETENTION_HOURS,
      pruneIntervalMs: e.FEED_PRUNE_INTERVAL_MS,
      cacheEvents: e.FEED_CACHE_EVENTS,
    },
    shutdownGraceMs: e.SHUTDOWN_GRACE_MS,
    shutdownDrainDelayMs: e.SHUTDOWN_DRAIN_DELAY_MS,
    healthProbeMs: e.HEALTH_PROBE_MS,
    logLevel: e.LOG_LEVEL,
  };
}
