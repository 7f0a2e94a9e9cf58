import pg from 'pg';

/** Purged bodies per tenant, summed over the batches of one run. */
export type PurgeResult = ReadonlyMap<string, number>;

/**
 * The retention purge, run by the scheduled job (or a test): calls `comms_purge_bodies` (migration
 * 20261202000000) in batches until nothing is due, each batch its own transaction. It connects on its
 * own, as the retention role (RETENTION_DB_ROLE, optionally through RETENTION_DATABASE_URL): the
 * service's pool runs as comms_app, which may not call the function.
 */
export class RetentionPurge {
  constructor(
    private readonly url: string,
    private readonly role: string,
    private readonly batch: number,
    private readonly statementTimeoutMs: number,
  ) {}

  async run(now: Date): Promise<PurgeResult> {
    const client = new pg.Client({
      connectionString: this.url,
      application_name: 'comms-retention',
      statement_timeout: this.statementTimeoutMs,
      ...(this.role ? { options: `-c role=${this.role}` } : {}),
    });
    await client.connect();
    const purged = new Map<string, number>();
    try {
      for (;;) {
        const { rows } = await client.query<{ tenant_id: string; purged: number }>(
          'select tenant_id, purged from comms_purge_bodies($1, $2)',
          [now, this.batch],
        );
        let n = 0;
        for (const r of rows) {
          purged.set(r.tenant_id, (purged.get(r.tenant_id) ?? 0) + r.purged);
          n += r.purged;
        }
        if (n < this.batch) break;
      }
    } finally {
      await client.end();
    }
    return purged;
  }
}
