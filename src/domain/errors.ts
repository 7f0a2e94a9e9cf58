/**
 * Typed domain errors. The domain throws these; only `src/rpc/errors.ts` maps them to gRPC status codes,
 * so the mapping is one table to review. `reason` is the UPPER_SNAKE ErrorInfo reason clients branch on;
 * `metadata` holds the values the message mentions.
 */
export type ErrorKind =
  | 'invalid_argument'
  | 'not_found'
  | 'permission_denied'
  | 'failed_precondition'
  | 'aborted'
  | 'already_exists'
  | 'unauthenticated'
  | 'resource_exhausted'
  | 'unavailable'
  | 'deadline_exceeded';

/** One invalid field of a request: the field path as in the proto (snake_case) and what is wrong. */
export interface FieldViolation {
  readonly field: string;
  readonly description: string;
}

export class DomainError extends Error {
  constructor(
    readonly kind: ErrorKind,
    readonly reason: string,
    message: string,
    readonly metadata: Readonly<Record<string, string>> = {},
  ) {
    super(message);
    this.name = new.target.name;
  }
}

/**
 * The caller's etag (AIP-154) is stale: someone changed the resource since the caller read it. `what`
 * names the resource in the message; `key` is its id field; the current etag is in the metadata.
 */
export class EtagMismatch extends DomainError {
  constructor(what: string, key: Readonly<Record<string, string>>, currentEtag: string) {
    super('aborted', 'ETAG_MISMATCH', `${what} has changed; read it again`, { ...key, current_etag: currentEtag });
  }
}

/** At most this many field violations are reported (the rest are counted): the status travels in trailers. */
const MAX_VIOLATIONS = 20;

/** Bad input: the request is refused as a whole and nothing is changed. */
export class InvalidArgument extends DomainError {
  readonly violations: readonly FieldViolation[];

  constructor(violations: readonly FieldViolation[]) {
    const shown =
      violations.length <= MAX_VIOLATIONS
        ? violations
        : [
            ...violations.slice(0, MAX_VIOLATIONS),
            { field: '', description: `and ${violations.length - MAX_VIOLATIONS} more violations` },
          ];
    super('invalid_argument', 'INVALID_ARGUMENT', shown.map((v) => `${v.field}: ${v.description}`).join('; '));
    this.violations = shown;
  }
}

export class PermissionDenied extends DomainError {
  constructor(reason: string, message: string, metadata: Record<string, string> = {}) {
    super('permission_denied', reason, message, metadata);
  }
}

export class Unauthenticated extends DomainError {
  constructor(message: string) {
    super('unauthenticated', 'UNAUTHENTICATED', message);
  }
}

/** The call's deadline passed before the work could start. */
export class DeadlineExceeded extends DomainError {
  constructor() {
    super('deadline_exceeded', 'DEADLINE_EXCEEDED', 'deadline exceeded');
  }
}

/**
 * Too much at once from one caller: RESOURCE_EXHAUSTED, with a RetryInfo that says when to try again
 * (`retryAfterMs`).
 */
export class TooMuch extends DomainError {
  constructor(
    reason: 'RATE_LIMITED' | 'TOO_MANY_STREAMS',
    message: string,
    readonly retryAfterMs: number,
    metadata: Record<string, string> = {},
  ) {
    super('resource_exhausted', reason, message, metadata);
  }
}

/** Collects field violations so a request reports every bad field at once. */
export class Violations {
  readonly #list: FieldViolation[] = [];

  add(field: string, description: string): this {
    this.#list.push({ field, description });
    return this;
  }

  /** Throws InvalidArgument when anything was added. */
  throwIfAny(): void {
    if (this.#list.length > 0) throw new InvalidArgument(this.#list);
  }
}
