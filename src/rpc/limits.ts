import { RateLimiterMemory, RateLimiterRes } from 'rate-limiter-flexible';
import type { Actor } from '../domain/actor.js';
import { TooMuch } from '../domain/errors.js';

/** Per-caller limits (RATE_LIMIT_* and MAX_STREAMS_PER_CALLER configuration); 0 turns one off. */
export interface LimitOptions {
  /** Writes one caller may make per window, on this replica. */
  readonly writesPerWindow: number;
  readonly windowSeconds: number;
  /** Server streams one caller may hold open at once, on this replica. */
  readonly streamsPerCaller: number;
  /** The most items any List returns (lowers the contract's maxima); 0: no lower maximum. */
  readonly pageSizeMax: number;
}

/**
 * What one caller (tenant and user) may do at once on this replica: writes per window, counted by
 * rate-limiter-flexible's in-memory limiter, and open streams. Beyond either the call is refused with
 * RESOURCE_EXHAUSTED and a RetryInfo. Per replica: a caller spread over N replicas gets N times the
 * budget (a shared store would make it global at a cost per call).
 */
export class CallLimits {
  readonly #writes: RateLimiterMemory | undefined;
  readonly #streams = new Map<string, number>();

  constructor(private readonly options: LimitOptions) {
    if (options.writesPerWindow > 0) {
      this.#writes = new RateLimiterMemory({ points: options.writesPerWindow, duration: options.windowSeconds });
    }
  }

  /** Counts one write of `actor`; throws TooMuch (RATE_LIMITED) when its budget for the window is spent. */
  async write(actor: Actor, method: string): Promise<void> {
    if (!this.#writes) return;
    try {
      await this.#writes.consume(callerKey(actor));
    } catch (err) {
      if (!(err instanceof RateLimiterRes)) throw err;
      throw new TooMuch('RATE_LIMITED', `too many writes; retry in ${err.msBeforeNext} ms`, err.msBeforeNext, {
        method,
        limit: String(this.options.writesPerWindow),
        window_seconds: String(this.options.windowSeconds),
      });
    }
  }

  /** Takes one of `actor`'s stream slots; returns its release. Throws TooMuch (TOO_MANY_STREAMS) when none is free. */
  openStream(actor: Actor): () => void {
    const max = this.options.streamsPerCaller;
    if (max <= 0) return () => undefined;
    const key = callerKey(actor);
    const open = this.#streams.get(key) ?? 0;
    if (open >= max) {
      throw new TooMuch('TOO_MANY_STREAMS', `at most ${max} open streams per caller`, 1000, { limit: String(max) });
    }
    this.#streams.set(key, open + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.#streams.get(key) ?? 1) - 1;
      if (left <= 0) this.#streams.delete(key);
      else this.#streams.set(key, left);
    };
  }
}

/**
 * A List request's page size lowered to PAGE_SIZE_MAX when the server has one (0, the default page, and
 * anything larger become it); negative sizes are left for the domain to refuse.
 */
export function capPageSize(request: unknown, max: number): void {
  if (max <= 0 || typeof request !== 'object' || request === null || !('pageSize' in request)) return;
  const req = request as { pageSize: unknown };
  if (typeof req.pageSize === 'number' && (req.pageSize === 0 || req.pageSize > max)) req.pageSize = max;
}

function callerKey(actor: Actor): string {
  return `${actor.tenantId}\u0000${actor.userId}`;
}
