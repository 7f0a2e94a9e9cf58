import { DomainError } from '../errors.js';

/** The resume token is older than the retained events (or not from this database): re-sync with the Lists. */
export class ResyncRequired extends DomainError {
  constructor(why: string) {
    super('failed_precondition', 'RESYNC_REQUIRED', `cannot resume: ${why}; re-sync and subscribe without a token`);
  }
}

/** The server is shutting down: resume on another replica with the last resume token. */
export class FeedShuttingDown extends DomainError {
  constructor() {
    super('unavailable', 'SERVER_SHUTTING_DOWN', 'server shutting down; resume with the last resume token');
  }
}

/** The consumer did not accept data for too long while events waited. */
export class SlowConsumer extends DomainError {
  constructor(stalledMs: number) {
    super(
      'resource_exhausted',
      'SLOW_CONSUMER',
      `the stream accepted no data for ${stalledMs} ms; resume with the resume_token in this error`,
      { stalled_ms: String(stalledMs) },
    );
  }
}
