import type { MikroORM } from '@mikro-orm/postgresql';
import type { Clock } from '../domain/clock.js';
import { newId } from '../domain/ids.js';
import { nextAction } from '../domain/notification/notification.plan.js';
import {
  type AttemptView,
  type Channel,
  KIND_TEXTS,
  linkRecords,
  SERVICE_TEMPLATES,
} from '../domain/notification/notification.policy.js';
import { type Claim, type Intent, NotificationRepository } from '../domain/notification/notification.repository.js';
import type { Logger } from '../infra/log/logger.js';
import type { AddressBook, ChannelProvider, SendResult } from './provider.js';

/** The dispatcher's knobs (NOTIFY_* configuration). */
export interface DispatchOptions {
  readonly confirmDeadlineMs: number;
  readonly providerTimeoutMs: number;
  readonly maxErrorsPerStep: number;
}

/** Thrown after a transient provider error is recorded, so the job queue retries with backoff. */
export class RetryLater extends Error {}

/** Fields of the intent a decision changes. */
type IntentChange = Omit<Parameters<NotificationRepository['update']>[2], 'now'>;

/** A provider's answer to a claimed attempt, recorded by the next decision. */
interface Answered {
  readonly claim: Claim;
  readonly result: CallResult;
}

type CallResult = SendResult | { outcome: 'timeout'; errorCode: string; errorMessage: string };

type Decision =
  | { readonly type: 'done' }
  | { readonly type: 'retry'; readonly why: string }
  | { readonly type: 'reconsider' }
  | { readonly type: 'reconcile'; readonly intent: Intent; readonly attempt: AttemptView }
  | { readonly type: 'send'; readonly intent: Intent; readonly claim: Claim; readonly previews: boolean };

/**
 * Runs the dispatch jobs of notification intents. A job names an intent; the dispatcher advances it as
 * far as it can go now, then schedules the job for the next due time. Everything it decides comes from
 * the intent row (locked) and its records, so a job that runs twice, late, or after a crash decides
 * again from what is stored.
 *
 * Nothing is sent twice: before calling a provider the dispatcher commits a claim (attempt number and a
 * fresh reference) on the intent; after the call it appends the ATTEMPT record and clears the claim in one
 * transaction. A claim found by a later job means the dispatcher stopped mid-call: the attempt is recorded
 * as TIMEOUT and looked up at the provider by its reference before anything is sent again.
 */
export class Dispatcher {
  constructor(
    private readonly orm: MikroORM,
    private readonly providers: {
      readonly byChannel: Readonly<Record<Channel, ChannelProvider>>;
      readonly byName: ReadonlyMap<string, ChannelProvider>;
    },
    private readonly addresses: AddressBook,
    private readonly options: DispatchOptions,
    private readonly clock: Clock,
    private readonly log: Logger,
  ) {}

  /** One job: advances the intent until it waits or is done. Throws RetryLater after a transient error. */
  async run(tenantId: string, notificationId: string): Promise<void> {
    let answered: Answered | undefined;
    for (let moves = 0; moves < 32; moves++) {
      const d = await this.#decide(tenantId, notificationId, answered);
      answered = undefined;
      if (d.type === 'done') return;
      if (d.type === 'retry') throw new RetryLater(d.why);
      if (d.type === 'reconcile') await this.#reconcile(d.intent, d.attempt);
      if (d.type === 'send') answered = { claim: d.claim, result: await this.#call(d.intent, d.claim, d.previews) };
    }
    throw new Error(`intent ${notificationId} did not settle within 32 moves`);
  }

  #tx<T>(work: (repo: NotificationRepository) => Promise<T>): Promise<T> {
    return this.orm.em.fork().transactional((em) => work(new NotificationRepository(em)));
  }

  /**
   * One transaction on the locked intent: records the answer to the attempt this job just made (or, for
   * a claim nobody answered, a TIMEOUT attempt), then decides and applies the next move.
   */
  #decide(tenantId: string, notificationId: string, answered: Answered | undefined): Promise<Decision> {
    return this.#tx(async (repo) => {
      const accepted = answered?.result.outcome === 'accepted' ? answered.result : undefined;
      const ctx = await repo.load(
        tenantId,
        notificationId,
        accepted && { provider: answered!.claim.provider, providerMessageId: accepted.providerMessageId },
      );
      if (!ctx) return { type: 'done' };
      let { intent } = ctx;
      const records = [...ctx.records];
      const now = this.clock.now();
      // The intent's new state, written once at the end of the decision.
      let change: IntentChange = {};
      const apply = async (more: IntentChange = {}) => {
        change = { ...change, ...more };
        if (Object.keys(change).length > 0) await repo.update(tenantId, notificationId, { ...change, now });
      };
      if (answered) {
        if (intent.claim?.reference !== answered.claim.reference) {
          await this.#lateAnswer(repo, intent, answered, now);
          return { type: 'done' };
        }
        const { claim, result } = answered;
        const record = attemptRecord(intent, claim, result, now);
        await repo.append(record, tenantId);
        records.push(record);
        const advance = result.outcome === 'accepted' || result.outcome === 'rejected';
        change = { claim: null, state: 'pending', nextStep: advance ? claim.step + 1 : claim.step };
        intent = { ...intent, claim: null, state: 'pending', nextStep: change.nextStep! };
        // A transient error: the job queue retries the job with backoff.
        if (result.outcome === 'error') {
          await apply();
          return { type: 'retry', why: `${claim.provider}: ${result.errorCode}` };
        }
      } else if (intent.claim) {
        // A claim nobody answered: the dispatcher that made it stopped during the provider call.
        const record = attemptRecord(intent, intent.claim, timedOut('the dispatcher stopped during the request'), now);
        await repo.append(record, tenantId);
        records.push(record);
        change = { claim: null, state: 'pending' };
        intent = { ...intent, claim: null, state: 'pending' };
      }
      if (intent.state === 'suppressed' || intent.state === 'cancelled') {
        await apply();
        return { type: 'done' };
      }
      const attempts = linkRecords(records);
      const allowed = ctx.preferences?.kindChannels[intent.kind];
      const action = nextAction({
        kind: intent.kind,
        plan: intent.plan,
        nextStep: intent.nextStep,
        createdAt: intent.createdAt,
        urgent: intent.urgent,
        attempts,
        read: ctx.read,
        relevant: ctx.member,
        allows: (channel) => channel === 'in_app' || allowed === undefined || allowed.includes(channel),
        quietHours: ctx.preferences?.quietHours,
        now,
        confirmDeadlineMs: this.options.confirmDeadlineMs,
        maxErrorsPerStep: this.options.maxErrorsPerStep,
      });
      switch (action.type) {
        case 'reconcile':
          await apply();
          return { type: 'reconcile', intent, attempt: action.attempt };
        case 'send': {
          const claim: Claim = {
            reference: newId(),
            attempt: attempts.reduce((n, a) => Math.max(n, a.attempt.attemptNumber!), 0) + 1,
            step: action.step,
            channel: action.channel,
            provider: this.providers.byChannel[action.channel].name,
            claimedAt: now,
          };
          await apply({ state: 'dispatching', claim, nextDispatchAt: null, bypass: action.bypass });
          return { type: 'send', intent, claim, previews: ctx.previews };
        }
        case 'skip':
          await apply({ nextStep: action.step + 1 });
          return { type: 'reconsider' };
        case 'wait':
          // A job is already due then, unless this run is that job (or ran a little early by its clock).
          if (
            intent.nextDispatchAt?.getTime() !== action.until.getTime() ||
            action.until.getTime() - now.getTime() < 1000
          ) {
            await apply({ state: 'pending', nextDispatchAt: action.until });
            await repo.enqueue(tenantId, [{ notificationId, at: action.until }]);
          } else await apply();
          return { type: 'done' };
        case 'settle':
          await apply(
            intent.state !== 'settled' || intent.nextDispatchAt !== null
              ? { state: 'settled', nextDispatchAt: null }
              : {},
          );
          return { type: 'done' };
        case 'suppress':
        case 'cancel':
          await apply({
            state: action.type === 'suppress' ? 'suppressed' : 'cancelled',
            stateReason: action.reason,
            nextDispatchAt: null,
          });
          return { type: 'done' };
      }
    });
  }

  /** The answer to an attempt another job already recorded as TIMEOUT: a reconciliation record of it. */
  async #lateAnswer(repo: NotificationRepository, intent: Intent, answered: Answered, now: Date): Promise<void> {
    this.log.warn({ notificationId: intent.notificationId }, 'late provider answer for a reclaimed attempt');
    const records = await repo.records(intent.tenantId, [intent.notificationId]);
    const reclaimed = records.find((r) => r.kind === 'attempt' && r.reference === answered.claim.reference);
    if (!reclaimed) return;
    await repo.append(
      {
        ...attemptRecord(intent, answered.claim, answered.result, now),
        kind: 'reconciliation',
        attemptNumber: null,
        planStep: null,
        channel: null,
        outcome: null,
        reference: null,
        attemptRecordId: reclaimed.recordId,
      },
      intent.tenantId,
    );
  }

  /** Calls the provider, bounded by the request deadline; any throw counts as a transient error. */
  async #call(intent: Intent, claim: Claim, previews: boolean): Promise<CallResult> {
    const provider = this.providers.byChannel[claim.channel];
    const address = await this.addresses.address(intent.tenantId, intent.recipientUserId, claim.channel);
    if (address === undefined) {
      return {
        outcome: 'rejected',
        errorCode: 'NO_ADDRESS',
        errorMessage: 'the recipient has no address on this channel',
      };
    }
    const abort = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<{ outcome: 'timeout'; errorCode: string; errorMessage: string }>((resolve) => {
      timer = setTimeout(() => {
        abort.abort();
        resolve(timedOut('no answer within the request deadline'));
      }, this.options.providerTimeoutMs);
    });
    try {
      return await Promise.race([
        provider.send({
          tenantId: intent.tenantId,
          recipientUserId: intent.recipientUserId,
          channel: claim.channel,
          address,
          reference: claim.reference,
          text: await this.#text(intent, previews),
          deepLink: intent.deepLink,
          signal: abort.signal,
        }),
        deadline,
      ]);
    } catch (err) {
      return { outcome: 'error', errorCode: 'PROVIDER_EXCEPTION', errorMessage: String(err).slice(0, 500) };
    } finally {
      clearTimeout(timer);
    }
  }

  /** The channel text: the kind's (or the service template's) fixed text; a preview only if the tenant opted in. */
  async #text(intent: Intent, previews: boolean): Promise<string> {
    const base =
      intent.kind === 'service_event'
        ? (SERVICE_TEMPLATES[intent.templateKey] ?? SERVICE_TEMPLATES.generic!)
        : KIND_TEXTS[intent.kind];
    if (!previews || intent.kind !== 'message_posted' || !intent.messageId) return base;
    // Never a retracted message's text; a purged body is NULL.
    const rows: { body: string | null }[] = await this.orm.em.fork().execute(
      `select m.body from message m
        where m.tenant_id = ? and m.message_id = ?::uuid
          and not exists (select 1 from message_retraction r where r.tenant_id = m.tenant_id and r.message_id = m.message_id)`,
      [intent.tenantId, intent.messageId],
    );
    const body = rows[0]?.body ?? '';
    return body === '' ? base : `${base}: ${[...body].slice(0, 80).join('')}`;
  }

  /** Looks an attempt up at its provider and appends the answer as a RECONCILIATION record. */
  async #reconcile(intent: Intent, view: AttemptView): Promise<void> {
    const { attempt } = view;
    const provider = this.providers.byName.get(attempt.provider);
    const found = provider
      ? await provider.lookup(intent.tenantId, {
          reference: attempt.reference!,
          providerMessageId: attempt.providerMessageId,
        })
      : undefined;
    const now = this.clock.now();
    await this.#tx(async (repo) => {
      if (found) await repo.lockProviderMessage(intent.tenantId, attempt.provider, found.providerMessageId);
      const current = await repo.find(intent.tenantId, intent.notificationId, true);
      if (!current) return;
      await repo.append(
        {
          recordId: newId(),
          kind: 'reconciliation',
          notificationId: intent.notificationId,
          attemptNumber: null,
          planStep: null,
          channel: null,
          provider: attempt.provider,
          providerMessageId: found?.providerMessageId ?? '',
          providerEventId: null,
          status: found?.status ?? 'unspecified',
          providerTimestamp: found?.providerTimestamp ?? null,
          errorCode: found ? found.errorCode : 'NOT_FOUND',
          errorMessage: found ? '' : 'the provider has no message with this reference',
          outcome: null,
          reference: null,
          attemptRecordId: attempt.recordId,
          recordedAt: now,
        },
        intent.tenantId,
      );
      // An attempt whose outcome was unknown did reach the provider: its step is done.
      if (found && attempt.outcome === 'timeout' && current.nextStep === attempt.planStep) {
        await repo.update(intent.tenantId, intent.notificationId, { nextStep: attempt.planStep + 1, now });
      }
    });
  }
}

function timedOut(message: string) {
  return { outcome: 'timeout' as const, errorCode: 'TIMEOUT', errorMessage: message };
}

function attemptRecord(intent: Intent, claim: Claim, result: CallResult, now: Date) {
  const accepted = result.outcome === 'accepted' ? result : undefined;
  const failed = result.outcome === 'accepted' ? undefined : result;
  return {
    recordId: newId(),
    kind: 'attempt' as const,
    notificationId: intent.notificationId,
    attemptNumber: claim.attempt,
    planStep: claim.step,
    channel: claim.channel,
    provider: claim.provider,
    providerMessageId: accepted?.providerMessageId ?? '',
    providerEventId: null,
    status: accepted ? accepted.status : result.outcome === 'rejected' ? ('failed' as const) : ('unspecified' as const),
    providerTimestamp: accepted?.providerTimestamp ?? null,
    errorCode: failed?.errorCode ?? '',
    errorMessage: failed?.errorMessage ?? '',
    outcome: result.outcome,
    reference: claim.reference,
    attemptRecordId: null,
    recordedAt: now,
  };
}
