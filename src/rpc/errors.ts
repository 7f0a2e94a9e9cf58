import { Metadata, status, type StatusObject } from '@grpc/grpc-js';
import { BadRequest, ErrorInfo, RetryInfo } from '../../gen/google/rpc/error_details.js';
import { Status } from '../../gen/google/rpc/status.js';
import { ConnectionException, DeadlockException, LockWaitTimeoutException } from '@mikro-orm/core';
import { DomainError, type ErrorKind, InvalidArgument, TooMuch } from '../domain/errors.js';

/** ErrorInfo.domain of every error this service returns. */
export const ERROR_DOMAIN = 'comms.example.com';

/** Metadata key of the binary google.rpc.Status details (AIP-193). */
export const STATUS_DETAILS_KEY = 'grpc-status-details-bin';

/** The one table from domain error kinds to gRPC codes. */
const CODES: Record<ErrorKind, status> = {
  invalid_argument: status.INVALID_ARGUMENT,
  not_found: status.NOT_FOUND,
  permission_denied: status.PERMISSION_DENIED,
  failed_precondition: status.FAILED_PRECONDITION,
  aborted: status.ABORTED,
  already_exists: status.ALREADY_EXISTS,
  unauthenticated: status.UNAUTHENTICATED,
  resource_exhausted: status.RESOURCE_EXHAUSTED,
  unavailable: status.UNAVAILABLE,
  deadline_exceeded: status.DEADLINE_EXCEEDED,
};

/** A fully built error status: code, message and the google.rpc.Status details in metadata. */
export type ErrorStatus = Partial<StatusObject> & { code: status; details: string; metadata: Metadata };

function any(typeName: string, value: Uint8Array) {
  return { typeUrl: `type.googleapis.com/${typeName}`, value: Buffer.from(value) };
}

/** Builds a status carrying ErrorInfo (and BadRequest for invalid input) in grpc-status-details-bin. */
export function errorStatus(
  code: status,
  message: string,
  reason: string,
  metadata: Record<string, string>,
  extraDetails: { typeUrl: string; value: Buffer }[] = [],
): ErrorStatus {
  // Trailers are small (grpc-js clients refuse metadata over 8 KiB by default): keep texts short.
  message = message.length > 1000 ? `${message.slice(0, 1000)}…` : message;
  metadata = Object.fromEntries(
    Object.entries(metadata).map(([k, v]) => [k, v.length > 1024 ? `${v.slice(0, 1024)}…` : v]),
  );
  const info = ErrorInfo.encode({ reason, domain: ERROR_DOMAIN, metadata }).finish();
  const details = Status.encode({
    code,
    message,
    details: [any('google.rpc.ErrorInfo', info), ...extraDetails],
  }).finish();
  const md = new Metadata();
  md.set(STATUS_DETAILS_KEY, Buffer.from(details));
  return { code, details: message, metadata: md };
}

/**
 * Maps anything a handler threw to a gRPC status. Domain errors keep their reason and metadata; an
 * unknown error is logged by the caller and answered with INTERNAL and a fixed message, never its text.
 */
export function toStatus(
  err: unknown,
  extraMetadata: Record<string, string> = {},
): { status: ErrorStatus; internal: boolean } {
  if (err instanceof DomainError) {
    const extra =
      err instanceof InvalidArgument
        ? [
            any(
              'google.rpc.BadRequest',
              BadRequest.encode({
                fieldViolations: err.violations.map((v) => ({
                  field: v.field,
                  description: v.description,
                  reason: '',
                  localizedMessage: undefined,
                })),
              }).finish(),
            ),
          ]
        : err instanceof TooMuch
          ? [retryInfo(err.retryAfterMs)]
          : [];
    return {
      status: errorStatus(CODES[err.kind], err.message, err.reason, { ...err.metadata, ...extraMetadata }, extra),
      internal: false,
    };
  }
  if (isDatabaseUnavailable(err)) {
    const retry = retryInfo(1000);
    return {
      status: errorStatus(status.UNAVAILABLE, 'database unavailable; retry', 'DATABASE_UNAVAILABLE', extraMetadata, [
        retry,
      ]),
      internal: false,
    };
  }
  if (sqlState(err) === '57014') {
    // statement_timeout set from the caller's deadline (src/domain/db.ts): the transaction rolled back.
    return {
      status: errorStatus(status.DEADLINE_EXCEEDED, 'deadline exceeded', 'DEADLINE_EXCEEDED', extraMetadata),
      internal: false,
    };
  }
  if (err instanceof DeadlockException || err instanceof LockWaitTimeoutException) {
    return {
      status: errorStatus(status.ABORTED, 'concurrent update; retry', 'CONCURRENT_UPDATE', extraMetadata),
      internal: false,
    };
  }
  return { status: errorStatus(status.INTERNAL, 'internal error', 'INTERNAL', extraMetadata), internal: true };
}

/** A google.rpc.RetryInfo detail asking the client to wait `ms` before trying again. */
function retryInfo(ms: number) {
  const wait = Math.max(1, Math.ceil(ms));
  return any(
    'google.rpc.RetryInfo',
    RetryInfo.encode({
      retryDelay: { seconds: String(Math.floor(wait / 1000)), nanos: (wait % 1000) * 1_000_000 },
    }).finish(),
  );
}

/** PostgreSQL SQLSTATEs and socket errors that mean "the database is not reachable right now". */
const UNAVAILABLE_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  '57P01',
  '57P02',
  '57P03',
  '57P04',
  '53300',
  '08000',
  '08001',
  '08003',
  '08006',
]);

function sqlState(err: unknown): string | undefined {
  const e = err as { code?: unknown; sqlState?: unknown } | undefined;
  const code = e?.sqlState ?? e?.code;
  return typeof code === 'string' ? code : undefined;
}

function isDatabaseUnavailable(err: unknown): boolean {
  if (err instanceof ConnectionException) return true;
  for (let e: unknown = err, depth = 0; e && depth < 4; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && UNAVAILABLE_CODES.has(code)) return true;
    // A FATAL error ends the session: PostgreSQL refused or dropped the connection (e.g. 55000 "database
    // is not currently accepting connections" while opening one). The call did not run; retry it.
    if ((e as { severity?: unknown }).severity === 'FATAL') return true;
    if (e instanceof Error && /Connection terminated|connection timeout/i.test(e.message)) return true;
  }
  return false;
}
