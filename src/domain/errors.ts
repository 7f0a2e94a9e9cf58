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

/**
 * At most this many field violations are reported, each text cut short, within a total budget (the rest
 * are counted): the status travels in trailers, which a grpc-js client refuses beyond 8 KiB.
 */
const MAX_VIOLATIONS = 20;
const MAX_FIELD_CHARS = 100;
const MAX_DESCRIPTION_CHARS = 200;
const MAX_VIOLATION_CHARS = 2000;

function cut(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

/** Bad input: the request is refused as a whole and nothing is changed. */
export class InvalidArgument extends DomainError {
  readonly violations: readonly FieldViolation[];

  constructor(violations: readonly FieldViolation[]) {
    const shown: FieldViolation[] = [];
    let chars = 0;
    for (const v of violations) {
      const short = { field: cut(v.field, MAX_FIELD_CHARS), description: cut(v.description, MAX_DESCRIPTION_CHARS) };
      chars += short.field.length + short.description.length;
      if (shown.length === MAX_VIOLATIONS || chars > MAX_VIOLATION_CHARS) break;
      shown.push(short);
    }
    if (shown.length < violations.length) {
      shown.push({ field: '', description: `and ${violations.length - shown.length} more violations` });
    }
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
