import type { MikroORM } from '@mikro-orm/postgresql';
import { sqlDate } from '../domain/db.js';
import { newId } from '../domain/ids.js';
import type { DeliveryStatus } from '../domain/notification/notification.policy.js';
import type { ChannelProvider, LookupResult, ProviderReport, SendRequest, SendResult } from './provider.js';

interface Behavior {
  readonly outcome: 'accept' | 'reject' | 'error' | 'timeout';
  readonly delayMs: number;
  readonly reports: readonly DeliveryStatus[];
}

/**
 * The sandbox channel provider (default in development and tests): sends nothing, records every request
 * it accepts in `sandbox_message` (one row per request, so a double send is visible), and behaves per
 * recipient and channel as `sandbox_behavior` says: accept (after `delay_ms`), reject, fail with a
 * transient error, or never answer. After accepting it produces the configured delivery reports through
 * `onReport`, as a provider's webhook would, and answers status lookups for reconciliation.
 */
export class SandboxProvider implements ChannelProvider {
  readonly name = 'sandbox';
  readonly #timers = new Set<NodeJS.Timeout>();
  #closed = false;

  constructor(
    private readonly orm: MikroORM,
    private readonly defaultReports: readonly DeliveryStatus[],
    private readonly onReport: (report: ProviderReport) => Promise<unknown>,
  ) {}

  async send(req: SendRequest): Promise<SendResult> {
    const b = await this.#behavior(req.tenantId, req.recipientUserId, req.channel);
    if (b.outcome === 'reject') {
      return { outcome: 'rejected', errorCode: 'SANDBOX_REJECTED', errorMessage: 'the sandbox refuses this address' };
    }
    if (b.outcome === 'error') {
      return { outcome: 'error', errorCode: 'SANDBOX_UNAVAILABLE', errorMessage: 'the sandbox is told to fail' };
    }
    const providerMessageId = newId();
    const rows: { accepted_at: unknown }[] = await this.orm.em.fork().execute(
      `insert into sandbox_message (tenant_id, provider_message_id, reference, recipient_user_id, channel, address,
                                    text, deep_link, accepted_at)
       values (?, ?::uuid, ?::uuid, ?, ?, ?, ?, ?, clock_timestamp()) returning accepted_at`,
      [
        req.tenantId,
        providerMessageId,
        req.reference,
        req.recipientUserId,
        req.channel,
        req.address,
        req.text,
        req.deepLink,
      ],
    );
    const acceptedAt = sqlDate(rows[0]!.accepted_at);
    // The message is stored: from here on it counts as sent, whatever the caller hears.
    if (b.outcome === 'timeout') await new Promise((resolve) => req.signal.addEventListener('abort', resolve));
    else if (b.delayMs > 0) await this.#sleep(b.delayMs);
    b.reports.forEach((status, n) =>
      this.#later(5 * (n + 1), () =>
        this.onReport({
          tenantId: req.tenantId,
          provider: this.name,
          providerMessageId,
          providerEventId: `${providerMessageId}:${n + 1}`,
          status,
          providerTimestamp: new Date(acceptedAt.getTime() + n + 1),
          errorCode: status === 'failed' || status === 'undelivered' ? 'SANDBOX_' + status.toUpperCase() : '',
        }),
      ),
    );
    return { outcome: 'accepted', providerMessageId, status: 'queued', providerTimestamp: acceptedAt };
  }

  async lookup(
    tenantId: string,
    ref: { reference: string; providerMessageId: string },
  ): Promise<LookupResult | undefined> {
    const rows: Record<string, unknown>[] = await this.orm.em.fork().execute(
      `select provider_message_id, recipient_user_id, channel, accepted_at from sandbox_message
        where tenant_id = ? and (reference = ?::uuid or provider_message_id::text = ?)
        order by accepted_at limit 1`,
      [tenantId, ref.reference, ref.providerMessageId],
    );
    const row = rows[0];
    if (!row) return undefined;
    const b = await this.#behavior(tenantId, String(row.recipient_user_id), String(row.channel));
    const last = b.reports.at(-1);
    return {
      providerMessageId: String(row.provider_message_id),
      status: last ?? 'sent',
      providerTimestamp: new Date(sqlDate(row.accepted_at).getTime() + b.reports.length),
      errorCode: '',
    };
  }

  close(): void {
    this.#closed = true;
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
  }

  async #behavior(tenantId: string, userId: string, channel: string): Promise<Behavior> {
    const rows: { outcome: Behavior['outcome']; delay_ms: number; reports: DeliveryStatus[] | string | null }[] =
      await this.orm.em.fork().execute(
        `select outcome, delay_ms, reports from sandbox_behavior
          where tenant_id = ? and recipient_user_id = ? and channel in (?, '*')
          order by channel = '*' limit 1`,
        [tenantId, userId, channel],
      );
    const r = rows[0];
    if (!r) return { outcome: 'accept', delayMs: 0, reports: this.defaultReports };
    const reports = typeof r.reports === 'string' ? parseTextArray(r.reports) : r.reports;
    return { outcome: r.outcome, delayMs: r.delay_ms, reports: (reports ?? this.defaultReports) as DeliveryStatus[] };
  }

  #sleep(ms: number): Promise<void> {
    if (this.#closed) return Promise.resolve();
    return new Promise((resolve) => this.#later(ms, resolve));
  }

  #later(ms: number, fn: () => unknown): void {
    if (this.#closed) return;
    const t = setTimeout(() => {
      this.#timers.delete(t);
      void Promise.resolve()
        .then(fn)
        .catch(() => undefined);
    }, ms);
    this.#timers.add(t);
  }
}

/** `{a,b}` as the driver may return a text[] → ['a', 'b']. */
function parseTextArray(literal: string): string[] {
  const inner = literal.replace(/^\{|\}$/g, '');
  return inner === '' ? [] : inner.split(',').map((s) => s.replace(/^"|"$/g, ''));
}
