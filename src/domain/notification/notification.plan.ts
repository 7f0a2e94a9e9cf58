import {
  attemptFailed,
  type AttemptView,
  type Channel,
  isTerminal,
  type NotificationKind,
  type PlanStep,
} from './notification.policy.js';
import { inQuietHours, type QuietHours, quietHoursEnd } from './quiet-hours.js';

/** What the dispatcher knows about an intent when its job runs. */
export interface PlanInput {
  readonly kind: NotificationKind;
  readonly plan: readonly PlanStep[];
  readonly nextStep: number;
  readonly createdAt: Date;
  readonly urgent: boolean;
  readonly attempts: readonly AttemptView[];
  /** MESSAGE_POSTED: the recipient has read the message. */
  readonly read: boolean;
  /** False when the cause no longer stands (e.g. the recipient left the thread). */
  readonly relevant: boolean;
  /** Channels the recipient allows for the kind now (IN_APP is always allowed). */
  readonly allows: (channel: Channel) => boolean;
  readonly quietHours: QuietHours | undefined;
  readonly now: Date;
  /** An accepted attempt with no terminal status after this long is looked up and may be fallen back from. */
  readonly confirmDeadlineMs: number;
  /** Transient errors tolerated per step before the step is given up. */
  readonly maxErrorsPerStep: number;
}

/** The dispatcher's next move for an intent. */
export type PlanAction =
  | { readonly type: 'reconcile'; readonly attempt: AttemptView }
  | { readonly type: 'send'; readonly step: number; readonly channel: Channel; readonly bypass: string }
  | { readonly type: 'skip'; readonly step: number }
  | { readonly type: 'wait'; readonly until: Date }
  | { readonly type: 'settle' }
  | { readonly type: 'suppress'; readonly reason: string }
  | { readonly type: 'cancel'; readonly reason: string };

function reconciled(a: AttemptView): boolean {
  return a.linked.some((r) => r.kind === 'reconciliation');
}

/** The provider has the message: it accepted it, or a lookup after an unknown outcome found it. */
function reachedProvider(a: AttemptView): boolean {
  if (a.attempt.outcome === 'accepted') return true;
  return (
    a.attempt.outcome === 'timeout' && a.linked.some((r) => r.kind === 'reconciliation' && r.providerMessageId !== '')
  );
}

/** At the provider, not confirmed either way, and past the confirmation deadline. */
function unconfirmed(a: AttemptView, input: PlanInput): boolean {
  return (
    reachedProvider(a) &&
    !isTerminal(a.derived) &&
    input.now.getTime() >= a.attempt.recordedAt.getTime() + input.confirmDeadlineMs
  );
}

/**
 * Decides the next move. Pure: the same input gives the same action, so a job that runs twice (a retry,
 * a duplicate) decides the same thing, and the decision is tested without a database.
 *
 * Order: first settle what is unknown (an attempt whose outcome is unknown, or one unconfirmed past the
 * deadline, is looked up at the provider before anything else is sent, so nothing is sent twice); then
 * stop if the cause is gone or the message was read; then take the next plan step when it is due (its
 * delay; for conditional steps also as soon as every earlier attempt has failed), allowed by the
 * recipient's current preferences, and outside quiet hours (urgent intents bypass them).
 */
export function nextAction(input: PlanInput): PlanAction {
  const { attempts } = input;
  for (const a of attempts) {
    if (reconciled(a)) continue;
    // Each attempt is looked up once; one found but still unconfirmed past its deadline counts as
    // failed for a fallback step (planAction).
    if (a.attempt.outcome === 'timeout' || unconfirmed(a, input)) return { type: 'reconcile', attempt: a };
  }
  const action = planAction(input);
  if (action.type !== 'settle' && action.type !== 'wait') return action;
  // An accepted attempt still unconfirmed is looked up at its deadline, also when nothing else is due.
  let recheck = Infinity;
  for (const a of attempts) {
    if (a.attempt.outcome === 'accepted' && !isTerminal(a.derived) && !reconciled(a)) {
      recheck = Math.min(recheck, a.attempt.recordedAt.getTime() + input.confirmDeadlineMs);
    }
  }
  if (recheck === Infinity) return action;
  if (action.type === 'wait' && action.until.getTime() <= recheck) return action;
  return { type: 'wait', until: new Date(recheck) };
}

function planAction(input: PlanInput): PlanAction {
  const { attempts, plan, now } = input;
  if (!input.relevant)
    return attempts.length === 0 ? { type: 'cancel', reason: 'NO_LONGER_RELEVANT' } : { type: 'settle' };
  if (input.read) {
    return attempts.length === 0 ? { type: 'suppress', reason: 'MESSAGE_ALREADY_READ' } : { type: 'settle' };
  }
  const i = input.nextStep;
  const step = plan[i];
  if (!step) return attempts.length === 0 ? { type: 'suppress', reason: 'NO_CHANNEL_ALLOWED' } : { type: 'settle' };
  const here = attempts.filter((a) => a.attempt.planStep === i);
  if (here.filter((a) => a.attempt.outcome === 'error').length >= input.maxErrorsPerStep)
    return { type: 'skip', step: i };
  if (!input.allows(step.channel)) return { type: 'skip', step: i };

  // IF_UNREAD asks about the message being read (handled above), not about delivery; for kinds without
  // a message it is IF_NOT_DELIVERED.
  const deliveryMatters =
    step.condition === 'if_not_delivered' || (step.condition === 'if_unread' && input.kind !== 'message_posted');
  // A fallback no longer needed is skipped; a later ALWAYS step still runs at its delay.
  if (deliveryMatters && attempts.some((a) => a.derived === 'delivered' || a.derived === 'read')) {
    return { type: 'skip', step: i };
  }
  const earlier = attempts.filter((a) => a.attempt.planStep! < i);
  // Nothing reached the recipient: every earlier attempt failed (for a fallback on delivery, also one
  // still unconfirmed past its deadline counts; an unread message may simply not have been read yet).
  const earlierFailed =
    earlier.length > 0 && earlier.every((a) => attemptFailed(a) || (deliveryMatters && unconfirmed(a, input)));
  let due = input.createdAt.getTime() + step.delay_ms;
  if (step.condition !== 'always') {
    if (earlierFailed) due = now.getTime();
    else if (deliveryMatters) {
      // Fall back when an earlier attempt stays unconfirmed past its deadline, if that comes first.
      for (const a of earlier) {
        if (reachedProvider(a) && !isTerminal(a.derived)) {
          due = Math.min(due, a.attempt.recordedAt.getTime() + input.confirmDeadlineMs);
        }
      }
    }
  }
  if (due > now.getTime()) return { type: 'wait', until: new Date(due) };

  let bypass = '';
  if (step.channel !== 'in_app' && input.quietHours && inQuietHours(now, input.quietHours)) {
    if (!input.urgent) return { type: 'wait', until: quietHoursEnd(now, input.quietHours) };
    bypass = input.kind === 'service_event' ? 'URGENT_SERVICE_REQUEST' : 'URGENT_KIND';
  }
  return { type: 'send', step: i, channel: step.channel, bypass };
}
