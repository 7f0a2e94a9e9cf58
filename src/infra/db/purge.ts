import pg from 'pg';

/** Purged bodies per tenant, summed over the batches of one run. */
export type PurgeResult = ReadonlyMap<string, number>;

/**
 * The retention purge, run by the scheduled job (or a test): for each tenant with a retention period,
 * calls `comms_purge_bodies` (migration 20261202000000) in batches until nothing is due, each batch its
 * own transaction touching one tenant's rows. It connects on its own, as the retention role
 * (RETENTION_DB_ROLE, optionally through RETENTION_DATABASE_URL): the service's pool runs as comms_app,
 * which may not call the function.
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
      const { rows: tenants } = await client.query<{ tenant_id: string }>(
        'select tenant_id from retention_policy where body_retention_days is not null order by tenant_id',
      );
      for (const { tenant_id: tenant } of tenants) {
        let total = 0;
        for (;;) {
          const { rows } = await client.query<{ n: number }>('select comms_purge_bodies($1, $2, $3) as n', [
            tenant,
            now,
            this.batch,
          ]);
          total += rows[0]!.n;
          if (rows[0]!.n < this.batch) break;
        }
        if (total > 0) purged.set(tenant, total);
      }
    } finally {
      await client.end();
    }
    return purged;
  }
}
