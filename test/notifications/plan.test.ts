import { expect } from 'chai';
import { nextAction, type PlanAction, type PlanInput } from '../../src/domain/notification/notification.plan.js';
import {
  type AttemptOutcome,
  type AttemptView,
  type Channel,
  type DeliveryStatus,
  deriveAttemptStatus,
  deriveDeliveryStatus,
  deriveStatus,
  type DispatchRecord,
  linkRecords,
  type PlanStep,
} from '../../src/domain/notification/notification.policy.js';
import { inQuietHours, type QuietHours, quietHoursEnd } from '../../src/domain/notification/quiet-hours.js';

// Pure tests of the derivations and decisions of src/domain/notification: no server, no database.

const T0 = Date.parse('2026-06-01T12:00:00.000Z');
const at = (ms: number) => new Date(T0 + ms);
const SEC = 1000;
const MIN = 60 * SEC;

let counter = 0;
/** A record with a fresh, increasing record id; unset fields empty. */
function rec(fields: Partial<DispatchRecord> & Pick<DispatchRecord, 'kind'>): DispatchRecord {
  counter++;
  return {
    recordId: `0190a000-0000-7000-8000-${String(counter).padStart(12, '0')}`,
    notificationId: null,
    attemptNumber: null,
    planStep: null,
    channel: null,
    provider: 'sandbox',
    providerMessageId: '',
    providerEventId: null,
    status: 'unspecified',
    providerTimestamp: null,
    errorCode: '',
    errorMessage: '',
    outcome: null,
    reference: null,
    attemptRecordId: null,
    recordedAt: at(0),
    ...fields,
  };
}

/** An ATTEMPT record: accepted ones get a provider message id and QUEUED, rejected ones FAILED. */
function attempt(
  n: number,
  step: number,
  channel: Channel,
  outcome: AttemptOutcome,
  opts: { recordedAt?: number; pmid?: string; status?: DeliveryStatus } = {},
): DispatchRecord {
  const accepted = outcome === 'accepted';
  return rec({
    kind: 'attempt',
    notificationId: 'n-1',
    attemptNumber: n,
    planStep: step,
    channel,
    outcome,
    providerMessageId: accepted ? (opts.pmid ?? `pm-${n}`) : '',
    status: opts.status ?? (accepted ? 'queued' : outcome === 'rejected' ? 'failed' : 'unspecified'),
    providerTimestamp: accepted ? at(opts.recordedAt ?? 0) : null,
    reference: `ref-${n}`,
    recordedAt: at(opts.recordedAt ?? 0),
  });
}

/** A DELIVERY_REPORT record. */
function report(pmid: string, status: DeliveryStatus, tsMs: number, eventId = `${pmid}:${status}:${tsMs}`) {
  return rec({
    kind: 'delivery_report',
    providerMessageId: pmid,
    providerEventId: eventId,
    status,
    providerTimestamp: at(tsMs),
    recordedAt: at(tsMs + 50),
  });
}

/** A RECONCILIATION record of `of`. */
function reconciliation(of: DispatchRecord, status: DeliveryStatus, opts: { pmid?: string; tsMs?: number } = {}) {
  return rec({
    kind: 'reconciliation',
    notificationId: of.notificationId,
    attemptRecordId: of.recordId,
    providerMessageId: opts.pmid ?? of.providerMessageId,
    status,
    providerTimestamp: opts.tsMs === undefined ? null : at(opts.tsMs),
    errorCode: status === 'unspecified' ? 'NOT_FOUND' : '',
  });
}

function permutations<T>(items: readonly T[]): T[][] {
  if (items.length <= 1) return [items.slice()];
  const out: T[][] = [];
  items.forEach((item, i) => {
    for (const rest of permutations([...items.slice(0, i), ...items.slice(i + 1)])) out.push([item, ...rest]);
  });
  return out;
}

/** `count` pseudo-random orders of `items` (deterministic), plus the given and the reversed order. */
function shuffles<T>(items: readonly T[], count: number): T[][] {
  let seed = 12345;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  const out: T[][] = [items.slice(), items.slice().reverse()];
  for (let n = 0; n < count; n++) {
    const a = items.slice();
    for (let i = a.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [a[i], a[j]] = [a[j]!, a[i]!];
    }
    out.push(a);
  }
  return out;
}

/** Derived status of `a` with `linked`, asserted equal for every order of `linked`; returns it. */
function derivedInEveryOrder(a: DispatchRecord, linked: readonly DispatchRecord[]): DeliveryStatus {
  const results = new Set(permutations(linked).map((p) => deriveAttemptStatus(a, p)));
  expect([...results], 'one result for every arrival order').to.have.length(1);
  return [...results][0]!;
}

describe('notification derivations (pure)', () => {
  describe('deriveAttemptStatus', () => {
    it('is the same for every arrival order of a report set (all 720 orders of 6 reports)', () => {
      const a = attempt(1, 0, 'sms', 'accepted');
      const reports = [
        report('pm-1', 'queued', 1 * SEC),
        report('pm-1', 'sent', 2 * SEC),
        report('pm-1', 'undelivered', 3 * SEC),
        report('pm-1', 'delivered', 4 * SEC),
        report('pm-1', 'sent', 9 * SEC), // a late, repeated intermediate status
        report('pm-1', 'queued', 10 * SEC),
      ];
      expect(derivedInEveryOrder(a, reports)).to.equal('delivered');
    });

    it('terminal statuses beat intermediate ones, whatever their timestamps', () => {
      const a = attempt(1, 0, 'sms', 'accepted');
      expect(derivedInEveryOrder(a, [report('pm-1', 'failed', 1 * SEC), report('pm-1', 'sent', 60 * SEC)])).to.equal(
        'failed',
      );
      expect(
        derivedInEveryOrder(a, [report('pm-1', 'undelivered', 1 * SEC), report('pm-1', 'queued', 60 * SEC)]),
      ).to.equal('undelivered');
      // Without terminal reports the latest intermediate one wins, not the attempt's own QUEUED.
      expect(derivedInEveryOrder(a, [report('pm-1', 'sent', 1 * SEC)])).to.equal('sent');
      expect(derivedInEveryOrder(a, [])).to.equal('queued');
    });

    it('among terminal statuses the provider timestamp decides, not the rank of the status', () => {
      const a = attempt(1, 0, 'sms', 'accepted');
      // Delivered, then reported undelivered later (e.g. a carrier correction): the later one wins.
      expect(
        derivedInEveryOrder(a, [report('pm-1', 'delivered', 5 * SEC), report('pm-1', 'undelivered', 6 * SEC)]),
      ).to.equal('undelivered');
      expect(
        derivedInEveryOrder(a, [report('pm-1', 'delivered', 6 * SEC), report('pm-1', 'undelivered', 5 * SEC)]),
      ).to.equal('delivered');
      expect(derivedInEveryOrder(a, [report('pm-1', 'read', 5 * SEC), report('pm-1', 'failed', 7 * SEC)])).to.equal(
        'failed',
      );
    });

    it('at equal timestamps the later status in QUEUED, SENT, UNDELIVERED, FAILED, DELIVERED, READ wins', () => {
      const a = attempt(1, 0, 'push', 'accepted', { recordedAt: -MIN });
      const pairs: [DeliveryStatus, DeliveryStatus, DeliveryStatus][] = [
        ['queued', 'sent', 'sent'],
        ['undelivered', 'failed', 'failed'],
        ['failed', 'delivered', 'delivered'],
        ['undelivered', 'delivered', 'delivered'],
        ['delivered', 'read', 'read'],
        ['failed', 'read', 'read'],
      ];
      for (const [x, y, winner] of pairs) {
        expect(
          derivedInEveryOrder(a, [report('pm-1', x, 5 * SEC, 'ev-b'), report('pm-1', y, 5 * SEC, 'ev-a')]),
          `${x} vs ${y}`,
        ).to.equal(winner);
      }
    });

    it('equal timestamp and status: event ids (then record ids) order the rest; the result does not move', () => {
      const a = attempt(1, 0, 'push', 'accepted');
      const same = [
        report('pm-1', 'delivered', 5 * SEC, 'ev-2'),
        report('pm-1', 'delivered', 5 * SEC, 'ev-10'),
        report('pm-1', 'delivered', 5 * SEC, 'ev-1'),
        report('pm-1', 'sent', 9 * SEC, 'ev-9'),
      ];
      expect(derivedInEveryOrder(a, same)).to.equal('delivered');
    });

    it('records without a status are ignored; a report without a timestamp loses to one with a timestamp', () => {
      const timedOut = attempt(1, 0, 'sms', 'timeout');
      expect(timedOut.status).to.equal('unspecified');
      expect(derivedInEveryOrder(timedOut, [])).to.equal('unspecified');
      expect(derivedInEveryOrder(timedOut, [reconciliation(timedOut, 'unspecified')])).to.equal('unspecified');
      expect(derivedInEveryOrder(timedOut, [reconciliation(timedOut, 'sent', { pmid: 'pm-x', tsMs: 0 })])).to.equal(
        'sent',
      );
      const a = attempt(2, 0, 'sms', 'accepted', { recordedAt: 10 * SEC });
      const untimed = rec({ ...report('pm-2', 'sent', 0), providerTimestamp: null });
      expect(derivedInEveryOrder(a, [untimed]), 'the attempt’s own QUEUED at 10 s is later').to.equal('queued');
      const rejected = attempt(3, 0, 'sms', 'rejected');
      expect(derivedInEveryOrder(rejected, [])).to.equal('failed');
    });
  });

  describe('linkRecords', () => {
    it('links reports by (provider, provider message id) and reconciliation answers by attempt; order-independent', () => {
      const a1 = attempt(1, 0, 'push', 'accepted', { pmid: 'pm-a' });
      const a2 = attempt(2, 1, 'sms', 'timeout', { recordedAt: MIN });
      const a3 = attempt(3, 1, 'sms', 'accepted', { pmid: 'pm-c', recordedAt: 2 * MIN });
      // The timed-out attempt did reach the provider: reconciliation learned its message id.
      const r2 = reconciliation(a2, 'sent', { pmid: 'pm-b', tsMs: MIN });
      const records = [
        a1,
        a2,
        a3,
        r2,
        report('pm-a', 'undelivered', 30 * SEC),
        report('pm-b', 'delivered', 90 * SEC),
        report('pm-c', 'sent', 150 * SEC),
        // Another provider's id that happens to be equal, and a report of a message nobody sent.
        rec({ ...report('pm-a', 'read', 40 * SEC), provider: 'other' }),
        report('pm-zzz', 'delivered', 10 * SEC),
      ];
      let first: string | undefined;
      for (const order of shuffles(records, 300)) {
        const views = linkRecords(order);
        const summary = JSON.stringify(
          views.map((v) => ({
            n: v.attempt.attemptNumber,
            derived: v.derived,
            linked: v.linked.map((r) => r.recordId).sort(),
          })),
        );
        first ??= summary;
        expect(summary).to.equal(first);
        expect(views.map((v) => v.attempt.attemptNumber)).to.deep.equal([1, 2, 3]);
        expect(views.map((v) => v.derived)).to.deep.equal(['undelivered', 'delivered', 'sent']);
        expect(views[0]!.linked).to.have.length(1);
        expect(views[1]!.linked.map((r) => r.kind)).to.have.members(['reconciliation', 'delivery_report']);
        expect(views[2]!.linked).to.have.length(1);
        expect(deriveDeliveryStatus(views)).to.equal('delivered');
        expect(deriveStatus('pending', '', views)).to.deep.equal({ status: 'delivered', reason: '' });
      }
    });
  });

  describe('deriveDeliveryStatus and deriveStatus', () => {
    const view = (derived: DeliveryStatus, outcome: AttemptOutcome = 'accepted'): AttemptView => {
      const a = attempt(1, 0, 'push', outcome);
      return { attempt: a, linked: [], derived };
    };

    it('the intent’s delivery status is the best attempt: READ > DELIVERED > SENT > QUEUED > UNDELIVERED > FAILED', () => {
      const ranked: DeliveryStatus[] = ['read', 'delivered', 'sent', 'queued', 'undelivered', 'failed'];
      expect(deriveDeliveryStatus([])).to.equal('unspecified');
      for (let i = 0; i < ranked.length; i++) {
        for (let j = i; j < ranked.length; j++) {
          for (const order of permutations([view(ranked[i]!), view(ranked[j]!), view('unspecified', 'error')])) {
            expect(deriveDeliveryStatus(order), `${ranked[i]} vs ${ranked[j]}`).to.equal(ranked[i]);
          }
        }
      }
    });

    it('maps state and attempts to the status clients see', () => {
      const cases: [Parameters<typeof deriveStatus>, { status: string; reason: string }][] = [
        [['suppressed', 'MESSAGE_ALREADY_READ', []], { status: 'suppressed', reason: 'MESSAGE_ALREADY_READ' }],
        [['cancelled', 'NO_LONGER_RELEVANT', []], { status: 'cancelled', reason: 'NO_LONGER_RELEVANT' }],
        [['pending', '', []], { status: 'pending', reason: '' }],
        [['dispatching', '', []], { status: 'dispatching', reason: '' }],
        [['dispatching', '', [view('queued')]], { status: 'dispatching', reason: '' }],
        [['dispatching', '', [view('read')]], { status: 'delivered', reason: '' }],
        [['pending', '', [view('sent')]], { status: 'sent', reason: '' }],
        [['settled', '', [view('queued')]], { status: 'sent', reason: '' }],
        [['settled', '', [view('delivered')]], { status: 'delivered', reason: '' }],
        [
          ['settled', '', [view('failed', 'rejected'), view('undelivered')]],
          { status: 'failed', reason: 'PLAN_EXHAUSTED' },
        ],
        [['settled', '', [view('unspecified', 'error')]], { status: 'failed', reason: 'PLAN_EXHAUSTED' }],
        // A failed first step with a fallback still to come is not FAILED yet.
        [['pending', '', [view('failed', 'rejected')]], { status: 'dispatching', reason: '' }],
        [['pending', '', [view('undelivered'), view('delivered')]], { status: 'delivered', reason: '' }],
      ];
      for (const [args, expected] of cases) {
        expect(deriveStatus(...args), JSON.stringify([args[0], args[2].map((v) => v.derived)])).to.deep.equal(expected);
      }
    });

    it('is the same for every arrival order of an intent’s records', () => {
      const a1 = attempt(1, 0, 'push', 'accepted', { pmid: 'pm-1' });
      const a2 = attempt(2, 1, 'sms', 'accepted', { pmid: 'pm-2', recordedAt: MIN });
      const records = [
        a1,
        a2,
        report('pm-1', 'sent', 1 * SEC),
        report('pm-1', 'undelivered', 2 * SEC),
        report('pm-2', 'delivered', 70 * SEC),
        report('pm-2', 'queued', 80 * SEC),
      ];
      const results = new Set(
        permutations(records).map((p) => {
          const views = linkRecords(p);
          return JSON.stringify([deriveStatus('settled', '', views), deriveDeliveryStatus(views)]);
        }),
      );
      expect([...results]).to.deep.equal([JSON.stringify([{ status: 'delivered', reason: '' }, 'delivered'])]);
    });
  });

  describe('nextAction', () => {
    const PUSH_THEN_SMS: PlanStep[] = [
      { channel: 'push', delay_ms: 0, condition: 'always' },
      { channel: 'sms', delay_ms: 15 * MIN, condition: 'if_unread' },
    ];
    const FALLBACK: PlanStep[] = [
      { channel: 'push', delay_ms: 0, condition: 'always' },
      { channel: 'sms', delay_ms: 5 * MIN, condition: 'if_not_delivered' },
    ];

    function input(over: Partial<PlanInput> & { records?: DispatchRecord[] } = {}): PlanInput {
      const { records, ...rest } = over;
      return {
        kind: 'message_posted',
        plan: PUSH_THEN_SMS,
        nextStep: 0,
        createdAt: at(0),
        urgent: false,
        attempts: records ? linkRecords(records) : [],
        read: false,
        relevant: true,
        allows: () => true,
        quietHours: undefined,
        now: at(0),
        confirmDeadlineMs: 10 * MIN,
        maxErrorsPerStep: 3,
        ...rest,
      };
    }

    /** Follows `skip` actions as the dispatcher does (next step, decide again); returns the first other action. */
    function drive(i: PlanInput): PlanAction {
      let cur = i;
      for (let n = 0; n < 10; n++) {
        const action = nextAction(cur);
        if (action.type !== 'skip') return action;
        cur = { ...cur, nextStep: action.step + 1 };
      }
      expect.fail('skipped more than 10 times');
    }

    const deliveredPush = () => {
      const a = attempt(1, 0, 'push', 'accepted', { pmid: 'pm-1' });
      return [a, report('pm-1', 'delivered', 2 * SEC)];
    };
    const UTC_NIGHT: QuietHours = { startMinute: 22 * 60, endMinute: 7 * 60, timeZone: 'UTC' };

    it('sends the first step when due, waits until a later step is due', () => {
      expect(nextAction(input())).to.deep.equal({ type: 'send', step: 0, channel: 'push', bypass: '' });
      const delayed = input({ plan: [{ channel: 'email', delay_ms: MIN, condition: 'always' }], now: at(SEC) });
      expect(nextAction(delayed)).to.deep.equal({ type: 'wait', until: at(MIN) });
      expect(nextAction({ ...delayed, now: at(MIN) })).to.deep.equal({
        type: 'send',
        step: 0,
        channel: 'email',
        bypass: '',
      });
    });

    it('during quiet hours a non-urgent step waits for the end; urgent ones go and say why; IN_APP is exempt', () => {
      const night = Date.parse('2026-06-01T23:30:00Z');
      const base = input({ quietHours: UTC_NIGHT, createdAt: new Date(night), now: new Date(night + SEC) });
      expect(nextAction(base)).to.deep.equal({ type: 'wait', until: new Date('2026-06-02T07:00:00Z') });
      expect(nextAction({ ...base, kind: 'service_event', urgent: true })).to.deep.equal({
        type: 'send',
        step: 0,
        channel: 'push',
        bypass: 'URGENT_SERVICE_REQUEST',
      });
      expect(nextAction({ ...base, kind: 'patient_waiting', urgent: true })).to.deep.equal({
        type: 'send',
        step: 0,
        channel: 'push',
        bypass: 'URGENT_KIND',
      });
      expect(nextAction({ ...base, plan: [{ channel: 'in_app', delay_ms: 0, condition: 'always' }] })).to.deep.equal({
        type: 'send',
        step: 0,
        channel: 'in_app',
        bypass: '',
      });
      // Outside the window: no wait, no bypass.
      const day = Date.parse('2026-06-01T12:00:00Z');
      expect(nextAction({ ...base, urgent: true, createdAt: new Date(day), now: new Date(day) })).to.deep.equal({
        type: 'send',
        step: 0,
        channel: 'push',
        bypass: '',
      });
    });

    it('a fallback step runs early once every earlier attempt failed (rejected, FAILED or UNDELIVERED)', () => {
      for (const records of [
        [attempt(1, 0, 'push', 'rejected')],
        [attempt(1, 0, 'push', 'accepted'), report('pm-1', 'failed', SEC)],
        [attempt(1, 0, 'push', 'accepted'), report('pm-1', 'undelivered', SEC)],
      ]) {
        const i = input({ kind: 'thread_escalated', plan: FALLBACK, nextStep: 1, records, now: at(10 * SEC) });
        expect(nextAction(i), records.map((r) => r.status).join(',')).to.deep.equal({
          type: 'send',
          step: 1,
          channel: 'sms',
          bypass: '',
        });
      }
    });

    it('a fallback step waits for its delay, or for the confirmation deadline of an unconfirmed attempt if sooner', () => {
      const records = [attempt(1, 0, 'push', 'accepted')];
      const i = input({ kind: 'thread_escalated', plan: FALLBACK, nextStep: 1, records, now: at(10 * SEC) });
      expect(nextAction(i)).to.deep.equal({ type: 'wait', until: at(5 * MIN) });
      expect(nextAction({ ...i, confirmDeadlineMs: MIN })).to.deep.equal({ type: 'wait', until: at(MIN) });
      // A delivered earlier step makes the fallback unnecessary.
      expect(drive({ ...i, attempts: linkRecords(deliveredPush()) })).to.deep.equal({ type: 'settle' });
    });

    it('an attempt unconfirmed past the deadline is looked up first, then fallen back from', () => {
      const a = attempt(1, 0, 'push', 'accepted');
      const i = input({ kind: 'thread_escalated', plan: FALLBACK, nextStep: 1, records: [a], now: at(11 * MIN) });
      const first = nextAction(i);
      expect(first.type).to.equal('reconcile');
      expect((first as { attempt: AttemptView }).attempt.attempt.recordId).to.equal(a.recordId);
      // The lookup said SENT (still not confirmed): fall back now.
      const after = { ...i, attempts: linkRecords([a, reconciliation(a, 'sent', { tsMs: 11 * MIN })]) };
      expect(nextAction(after)).to.deep.equal({ type: 'send', step: 1, channel: 'sms', bypass: '' });
    });

    it('a TIMEOUT attempt is reconciled before anything else, even when the message was read meanwhile', () => {
      const t = attempt(1, 0, 'push', 'timeout');
      for (const over of [{}, { read: true }, { relevant: false }, { nextStep: 1 }]) {
        const action = nextAction(input({ records: [t], ...over }));
        expect(action.type, JSON.stringify(over)).to.equal('reconcile');
        expect((action as { attempt: AttemptView }).attempt.attempt.recordId).to.equal(t.recordId);
      }
      // Once reconciled it is not looked up again.
      const done = input({ records: [t, reconciliation(t, 'unspecified')] });
      expect(nextAction(done)).to.deep.equal({ type: 'send', step: 0, channel: 'push', bypass: '' });
    });

    it('stops before sending when the message was read, or the cause is gone', () => {
      expect(nextAction(input({ read: true }))).to.deep.equal({ type: 'suppress', reason: 'MESSAGE_ALREADY_READ' });
      expect(nextAction(input({ relevant: false }))).to.deep.equal({ type: 'cancel', reason: 'NO_LONGER_RELEVANT' });
      // After something was sent these settle instead (nothing is taken back).
      const sent = deliveredPush();
      expect(nextAction(input({ read: true, nextStep: 1, records: sent, now: at(15 * MIN) }))).to.deep.equal({
        type: 'settle',
      });
      expect(nextAction(input({ relevant: false, nextStep: 1, records: sent }))).to.deep.equal({ type: 'settle' });
    });

    it('skips channels the recipient no longer allows, and a step that keeps failing; none left: suppress', () => {
      const noPush = input({ allows: (c) => c !== 'push' });
      expect(nextAction(noPush)).to.deep.equal({ type: 'skip', step: 0 });
      expect(drive({ ...noPush, allows: () => false })).to.deep.equal({
        type: 'suppress',
        reason: 'NO_CHANNEL_ALLOWED',
      });
      const errors = [1, 2, 3].map((n) => attempt(n, 0, 'push', 'error'));
      expect(nextAction(input({ records: errors }))).to.deep.equal({ type: 'skip', step: 0 });
      expect(nextAction(input({ records: errors.slice(0, 2) }))).to.deep.equal({
        type: 'send',
        step: 0,
        channel: 'push',
        bypass: '',
      });
    });

    it('with the plan done: settles, or waits to recheck an attempt still unconfirmed', () => {
      const plan: PlanStep[] = [{ channel: 'push', delay_ms: 0, condition: 'always' }];
      const a = attempt(1, 0, 'push', 'accepted');
      expect(nextAction(input({ plan, nextStep: 1, records: [a], now: at(SEC) }))).to.deep.equal({
        type: 'wait',
        until: at(10 * MIN),
      });
      expect(nextAction(input({ plan, nextStep: 1, records: deliveredPush(), now: at(SEC) }))).to.deep.equal({
        type: 'settle',
      });
      const looked = [a, reconciliation(a, 'sent', { tsMs: 10 * MIN })];
      expect(nextAction(input({ plan, nextStep: 1, records: looked, now: at(10 * MIN) }))).to.deep.equal({
        type: 'settle',
      });
      expect(nextAction(input({ plan, nextStep: 1, records: [attempt(1, 0, 'push', 'rejected')] }))).to.deep.equal({
        type: 'settle',
      });
    });

    it('IF_UNREAD for a message waits for its delay while unread, then runs, even though the push was delivered', () => {
      const i = input({ nextStep: 1, records: deliveredPush() });
      expect(nextAction({ ...i, now: at(MIN) })).to.deep.equal({ type: 'wait', until: at(15 * MIN) });
      expect(nextAction({ ...i, now: at(15 * MIN) })).to.deep.equal({
        type: 'send',
        step: 1,
        channel: 'sms',
        bypass: '',
      });
      // Read meanwhile: nothing more is sent.
      expect(nextAction({ ...i, now: at(15 * MIN), read: true })).to.deep.equal({ type: 'settle' });
    });

    it('IF_UNREAD for a message runs early once every earlier attempt failed', () => {
      for (const records of [
        [attempt(1, 0, 'push', 'rejected')],
        [attempt(1, 0, 'push', 'accepted'), report('pm-1', 'undelivered', SEC)],
      ]) {
        expect(nextAction(input({ nextStep: 1, records, now: at(10 * SEC) }))).to.deep.equal({
          type: 'send',
          step: 1,
          channel: 'sms',
          bypass: '',
        });
      }
    });

    it('IF_UNREAD for a message does not run early for an attempt that is only unconfirmed (it may have arrived)', () => {
      const a = attempt(1, 0, 'push', 'accepted');
      const looked = [a, reconciliation(a, 'sent', { tsMs: 2 * MIN })];
      const i = input({ nextStep: 1, records: looked, now: at(2 * MIN), confirmDeadlineMs: MIN });
      expect(nextAction(i)).to.deep.equal({ type: 'wait', until: at(15 * MIN) });
      expect(nextAction({ ...i, now: at(15 * MIN) })).to.deep.equal({
        type: 'send',
        step: 1,
        channel: 'sms',
        bypass: '',
      });
    });

    it('IF_UNREAD for a kind without a message behaves as IF_NOT_DELIVERED', () => {
      const plan: PlanStep[] = [PUSH_THEN_SMS[0]!, { channel: 'email', delay_ms: 15 * MIN, condition: 'if_unread' }];
      const i = input({ kind: 'service_event', plan, nextStep: 1, now: at(15 * MIN) });
      expect(drive({ ...i, attempts: linkRecords(deliveredPush()) })).to.deep.equal({ type: 'settle' });
      expect(drive({ ...i, attempts: linkRecords([attempt(1, 0, 'push', 'rejected')]), now: at(SEC) })).to.deep.equal({
        type: 'send',
        step: 1,
        channel: 'email',
        bypass: '',
      });
    });

    it('an ALWAYS step after a fallback that is no longer needed still runs at its delay', () => {
      const plan: PlanStep[] = [
        { channel: 'push', delay_ms: 0, condition: 'always' },
        { channel: 'sms', delay_ms: MIN, condition: 'if_not_delivered' },
        { channel: 'email', delay_ms: 2 * MIN, condition: 'always' },
      ];
      const i = input({ kind: 'service_event', plan, nextStep: 1, records: deliveredPush(), now: at(2 * MIN) });
      expect(drive(i)).to.deep.equal({ type: 'send', step: 2, channel: 'email', bypass: '' });
    });

    it('is pure: the same input gives the same action', () => {
      const i = input({
        kind: 'thread_escalated',
        plan: FALLBACK,
        nextStep: 1,
        records: [attempt(1, 0, 'push', 'accepted')],
      });
      expect(nextAction(i)).to.deep.equal(nextAction(i));
    });
  });

  describe('quiet hours', () => {
    const chicagoNight: QuietHours = { startMinute: 22 * 60, endMinute: 7 * 60, timeZone: 'America/Chicago' };
    const utc = (iso: string) => new Date(iso);

    it('inQuietHours: start inclusive, end exclusive, across midnight', () => {
      const q: QuietHours = { startMinute: 22 * 60, endMinute: 7 * 60, timeZone: 'UTC' };
      expect(inQuietHours(utc('2026-06-01T21:59:59Z'), q)).to.equal(false);
      expect(inQuietHours(utc('2026-06-01T22:00:00Z'), q)).to.equal(true);
      expect(inQuietHours(utc('2026-06-02T00:00:00Z'), q)).to.equal(true);
      expect(inQuietHours(utc('2026-06-02T06:59:59Z'), q)).to.equal(true);
      expect(inQuietHours(utc('2026-06-02T07:00:00Z'), q)).to.equal(false);
      const day: QuietHours = { startMinute: 9 * 60, endMinute: 17 * 60, timeZone: 'UTC' };
      expect(inQuietHours(utc('2026-06-01T08:59:00Z'), day)).to.equal(false);
      expect(inQuietHours(utc('2026-06-01T09:00:00Z'), day)).to.equal(true);
      expect(inQuietHours(utc('2026-06-01T17:00:00Z'), day)).to.equal(false);
      // Local time: 22:30 in Chicago is 03:30 UTC (CDT, UTC-5).
      expect(inQuietHours(utc('2026-06-02T03:30:00Z'), chicagoNight)).to.equal(true);
      expect(inQuietHours(utc('2026-06-01T23:30:00Z'), chicagoNight)).to.equal(false);
    });

    it('quietHoursEnd: across midnight, the same day, and exactly at minute boundaries', () => {
      const q: QuietHours = { startMinute: 22 * 60, endMinute: 7 * 60, timeZone: 'UTC' };
      expect(quietHoursEnd(utc('2026-06-01T23:30:00Z'), q)).to.deep.equal(utc('2026-06-02T07:00:00Z'));
      expect(quietHoursEnd(utc('2026-06-02T03:15:42.123Z'), q)).to.deep.equal(utc('2026-06-02T07:00:00Z'));
      expect(quietHoursEnd(utc('2026-06-01T22:00:00Z'), q)).to.deep.equal(utc('2026-06-02T07:00:00Z'));
      expect(quietHoursEnd(utc('2026-06-02T06:59:59.999Z'), q)).to.deep.equal(utc('2026-06-02T07:00:00Z'));
      const day: QuietHours = { startMinute: 9 * 60, endMinute: 17 * 60 + 30, timeZone: 'UTC' };
      expect(quietHoursEnd(utc('2026-06-01T12:00:00Z'), day)).to.deep.equal(utc('2026-06-01T17:30:00Z'));
      // In Chicago (CDT, UTC-5) 07:00 local is 12:00 UTC.
      expect(quietHoursEnd(utc('2026-06-02T04:00:00Z'), chicagoNight)).to.deep.equal(utc('2026-06-02T12:00:00Z'));
    });

    it('quietHoursEnd across the spring-forward change (America/Chicago, 2026-03-08)', () => {
      // 23:00 CST on the 7th and 01:30 CST on the 8th: the night ends at 07:00 CDT = 12:00 UTC (not 13:00).
      expect(quietHoursEnd(utc('2026-03-08T05:00:00Z'), chicagoNight)).to.deep.equal(utc('2026-03-08T12:00:00Z'));
      expect(quietHoursEnd(utc('2026-03-08T07:30:00Z'), chicagoNight)).to.deep.equal(utc('2026-03-08T12:00:00Z'));
      // After the change (03:30 CDT).
      expect(quietHoursEnd(utc('2026-03-08T08:30:00Z'), chicagoNight)).to.deep.equal(utc('2026-03-08T12:00:00Z'));
    });

    it('quietHoursEnd across the fall-back change (America/Chicago, 2026-11-01)', () => {
      // 23:00 CDT on Oct 31 and 01:30 CDT (the first 01:30): the night ends at 07:00 CST = 13:00 UTC (not 12:00).
      expect(quietHoursEnd(utc('2026-11-01T04:00:00Z'), chicagoNight)).to.deep.equal(utc('2026-11-01T13:00:00Z'));
      expect(quietHoursEnd(utc('2026-11-01T06:30:00Z'), chicagoNight)).to.deep.equal(utc('2026-11-01T13:00:00Z'));
      // The second 01:30 (CST).
      expect(quietHoursEnd(utc('2026-11-01T07:30:00Z'), chicagoNight)).to.deep.equal(utc('2026-11-01T13:00:00Z'));
      // A window ending at 01:30 ends at the first 01:30 (CDT).
      const short: QuietHours = { startMinute: 0, endMinute: 90, timeZone: 'America/Chicago' };
      expect(quietHoursEnd(utc('2026-11-01T05:10:00Z'), short)).to.deep.equal(utc('2026-11-01T06:30:00Z'));
    });

    it('quietHoursEnd when the end falls in the skipped hour: the window ends when the clock jumps (03:00 CDT)', () => {
      // 22:00–02:30 Chicago; on 2026-03-08 local time jumps from 01:59:59 CST to 03:00 CDT (08:00 UTC).
      const q: QuietHours = { startMinute: 22 * 60, endMinute: 150, timeZone: 'America/Chicago' };
      for (const iso of [
        '2026-03-08T05:00:00Z',
        '2026-03-08T07:00:00Z',
        '2026-03-08T07:30:00Z',
        '2026-03-08T07:59:30Z',
      ]) {
        const from = utc(iso);
        const end = quietHoursEnd(from, q);
        expect(end.getTime(), `${iso}: after the start`).to.be.greaterThan(from.getTime());
        expect(end, iso).to.deep.equal(utc('2026-03-08T08:00:00Z'));
      }
    });

    it('quietHoursEnd is the first instant after `at` outside the window, on every minute of both change days', () => {
      const windows: QuietHours[] = [
        chicagoNight,
        { startMinute: 0, endMinute: 90, timeZone: 'America/Chicago' },
        { startMinute: 60, endMinute: 3 * 60, timeZone: 'America/Chicago' },
        { startMinute: 23 * 60, endMinute: 2 * 60 + 30, timeZone: 'America/Chicago' },
        { startMinute: 22 * 60, endMinute: 7 * 60, timeZone: 'Europe/Berlin' },
      ];
      const problems: string[] = [];
      for (const day of [
        '2026-03-07T18:00:00Z',
        '2026-03-28T18:00:00Z',
        '2026-10-24T18:00:00Z',
        '2026-10-31T18:00:00Z',
      ]) {
        for (let t = Date.parse(day); t < Date.parse(day) + 24 * 3_600_000; t += 7 * MIN + 13 * SEC) {
          for (const q of windows) {
            const from = new Date(t);
            if (!inQuietHours(from, q)) continue;
            const end = quietHoursEnd(from, q);
            const ok =
              end.getTime() > t &&
              !inQuietHours(end, q) &&
              (end.getTime() - MIN <= t || inQuietHours(new Date(end.getTime() - MIN), q));
            if (!ok)
              problems.push(
                `${q.timeZone} ${q.startMinute}-${q.endMinute} at ${from.toISOString()} → ${end.toISOString()}`,
              );
          }
        }
      }
      expect(problems.slice(0, 5), `${problems.length} wrong ends`).to.deep.equal([]);
    });
  });
});
