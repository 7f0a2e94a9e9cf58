import { DomainError } from '../errors.js';

/** The hold does not exist in the caller's tenant. */
export class HoldNotFound extends DomainError {
  constructor(holdId: string) {
    super('not_found', 'HOLD_NOT_FOUND', `legal hold ${holdId} not found`, { hold_id: holdId });
  }
}

/** This replica already runs as many exports as it may (EXPORT_CONCURRENCY). */
export class ExportsBusy extends DomainError {
  constructor(limit: number) {
    super('resource_exhausted', 'EXPORTS_BUSY', `${limit} exports are running on this server; retry later`, {
      limit: String(limit),
    });
  }
}
