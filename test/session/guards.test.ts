import { expect } from 'chai';
import type { DatabaseError } from 'pg';
import { newId } from '../../src/domain/ids.js';
import {
  ADMIT_STATES,
  ADMIT_TRANSITIONS,
  type AdmitState,
  CLOSED_STATES,
  SESSION_STATES,
  type SessionState,
  TRANSITIONS,
} from '../../src/domain/session/session.policy.js';
import { newTenant } from '../support/clients.js';
import { db } from '../support/threads.js';

const HOUR = 3_600_000;
const T = new Date(Date.now() + HOUR);
const later = (ms: number) => new Date(T.getTime() + ms);

/** The columns the check constraints tie to a session state, filled consistently for `state`. */
function sessionColumns(state: SessionState) {
  const closed = CLOSED_STATES.has(state);
  return {
    expires_at: state === 'scheduled' || state === 'open' ? later(2 * HOUR) : null,
    latest_end_at: state === 'in_progress' ? later(3 * HOUR) : null,
    next_timer_at: closed ? null : later(HOUR),
    opened_at: state === 'open' || state === 'in_progress' || state === 'ended' ? T : null,
    started_at: state === 'in_progress' || state === 'ended' ? T : null,
    ended_at: closed ? later(HOUR) : null,
  };
}

/** Inserts a session row in `state`; returns its id. */
async function insertSession(tenantId: string, state: SessionState): Promise<string> {
  const id = newId();
  const c = sessionColumns(state);
  await db().query(
    `insert into virtual_session (tenant_id, session_id, thread_id, state, state_reason, scheduled_start_at,
       scheduled_end_at, waiting_room_opens_at, expires_at, latest_end_at, providers_gone_at, next_timer_at, provider,
       provider_room_id, created_by, create_request_id, created_at, updated_at, opened_at, started_at, ended_at, version)
     values ($1, $2::uuid, null, $3, 'GUARD_TEST', $4, $5, $6, $7, $8, null, $9, 'sandbox', 'sandbox-' || $2::text, 'u-guard', null,
             $10, $10, $11, $12, $13, 1)`,
    [
      tenantId,
      id,
      state,
      later(HOUR),
      later(2 * HOUR),
      T,
      c.expires_at,
      c.latest_end_at,
      c.next_timer_at,
      new Date(),
      c.opened_at,
      c.started_at,
      c.ended_at,
    ],
  );
  return id;
}

/** Runs `sql`; returns the database error, or undefined when it succeeded. */
async function attempt(sql: string, params: unknown[] = []): Promise<DatabaseError | undefined> {
  try {
    await db().query(sql, params);
    return undefined;
  } catch (err) {
    return err as DatabaseError;
  }
}

/** Runs `sql` in a transaction that is always rolled back; returns the database error, if any. */
async function attemptRolledBack(sql: string, params: unknown[] = []): Promise<DatabaseError | undefined> {
  const client = await db().connect();
  try {
    await client.query('begin');
    await client.query(sql, params);
    return undefined;
  } catch (err) {
    return err as DatabaseError;
  } finally {
    await client.query('rollback');
    client.release();
  }
}

/** Asserts a refusal by a trigger (not a check constraint) with SQLSTATE `code` and a message matching `message`. */
function expectRefused(err: DatabaseError | undefined, code: string, message: RegExp, what: string): void {
  expect(err, `${what}: refused`).to.not.equal(undefined);
  expect(err!.code, `${what}: SQLSTATE (${err!.message})`).to.equal(code);
  expect(err!.constraint, `${what}: not a check constraint (${err!.message})`).to.equal(undefined);
  expect(err!.message, what).to.match(message);
}

describe('sessions: database guards', () => {
  it('lets virtual_session.state move exactly along TRANSITIONS; a closed session never changes', async () => {
    const tenantId = newTenant();
    const allowed = new Set(TRANSITIONS.map((t) => `${t.from}>${t.to}`));
    const outcomes: string[] = [];
    const expected: string[] = [];
    for (const from of SESSION_STATES) {
      for (const to of SESSION_STATES) {
        const id = await insertSession(tenantId, from);
        const c = sessionColumns(to);
        const err = await attempt(
          `update virtual_session set state = $3, expires_at = $4, latest_end_at = $5, next_timer_at = $6,
                  opened_at = $7, started_at = $8, ended_at = $9, version = version + 1
            where tenant_id = $1 and session_id = $2`,
          [tenantId, id, to, c.expires_at, c.latest_end_at, c.next_timer_at, c.opened_at, c.started_at, c.ended_at],
        );
        const ok = !CLOSED_STATES.has(from) && (from === to || allowed.has(`${from}>${to}`));
        expected.push(`${from}>${to}: ${ok ? 'allowed' : 'refused'}`);
        outcomes.push(`${from}>${to}: ${err ? 'refused' : 'allowed'}`);
        if (err) {
          expectRefused(err, '23514', /is not a transition|is closed/, `${from}>${to}`);
        }
        const { rows } = await db().query<{ state: string; version: number }>(
          'select state, version from virtual_session where tenant_id = $1 and session_id = $2',
          [tenantId, id],
        );
        expect(rows[0], `${from}>${to} stored`).to.deep.equal(
          err ? { state: from, version: 1 } : { state: to, version: 2 },
        );
      }
    }
    expect(outcomes).to.deep.equal(expected);
  });

  it('refuses any update of a closed session, even of a column that is not its state', async () => {
    const tenantId = newTenant();
    for (const state of CLOSED_STATES) {
      const id = await insertSession(tenantId, state);
      for (const set of ["state_reason = 'X'", 'updated_at = now()', 'version = version + 1', 'thread_id = null']) {
        const err = await attempt(`update virtual_session set ${set} where tenant_id = $1 and session_id = $2`, [
          tenantId,
          id,
        ]);
        expectRefused(err, '23514', /is closed/, `${state}: ${set}`);
      }
    }
  });

  it("never changes a session's identity columns", async () => {
    const tenantId = newTenant();
    const id = await insertSession(tenantId, 'scheduled');
    const changes: [string, unknown][] = [
      ['tenant_id', newTenant()],
      ['session_id', newId()],
      ['created_by', 'u-someone-else'],
      ['created_at', new Date(0)],
      ['provider', 'other'],
      ['provider_room_id', 'sandbox-other'],
    ];
    for (const [column, value] of changes) {
      const err = await attempt(`update virtual_session set ${column} = $3 where tenant_id = $1 and session_id = $2`, [
        tenantId,
        id,
        value,
      ]);
      expectRefused(err, '23514', /identity never changes/, column);
    }
    // The same row still takes an allowed change.
    expect(
      await attempt(
        `update virtual_session set state_reason = 'STILL_MUTABLE' where tenant_id = $1 and session_id = $2`,
        [tenantId, id],
      ),
    ).to.equal(undefined);
  });

  it('lets session_participant.admit_state move exactly along ADMIT_TRANSITIONS', async () => {
    const tenantId = newTenant();
    const sessionId = await insertSession(tenantId, 'open');
    const allowed = new Set(ADMIT_TRANSITIONS.map((t) => `${t.from}>${t.to}`));
    const columns = (state: AdmitState) => ({
      waiting_expires_at: state === 'waiting' ? later(HOUR) : null,
      admitted_at: state === 'admitted' ? T : null,
      left_at: state === 'left' ? T : null,
      rejoin_expires_at: state === 'left' ? later(HOUR) : null,
    });
    const outcomes: string[] = [];
    const expected: string[] = [];
    let ordinal = 0;
    for (const from of ADMIT_STATES) {
      for (const to of ADMIT_STATES) {
        const userId = `u-${from}-${to}`;
        const c = columns(from);
        await db().query(
          `insert into session_participant (tenant_id, session_id, user_id, role, ordinal, admit_state,
             admit_state_changed_at, admit_state_changed_by, invited_by, invited_at, joined_at, admitted_at,
             admitted_by, left_at, waiting_expires_at, rejoin_expires_at)
           values ($1, $2, $3, 'patient', $4, $5, $6, '', 'u-guard', $6, null, $7, '', $8, $9, $10)`,
          [
            tenantId,
            sessionId,
            userId,
            ordinal++,
            from,
            T,
            c.admitted_at,
            c.left_at,
            c.waiting_expires_at,
            c.rejoin_expires_at,
          ],
        );
        const n = columns(to);
        const err = await attempt(
          `update session_participant
              set admit_state = $4, waiting_expires_at = $5, admitted_at = coalesce(admitted_at, $6),
                  rejoin_expires_at = $7, admit_state_changed_at = now()
            where tenant_id = $1 and session_id = $2 and user_id = $3`,
          [tenantId, sessionId, userId, to, n.waiting_expires_at, n.admitted_at, n.rejoin_expires_at],
        );
        const ok = from === to || allowed.has(`${from}>${to}`);
        expected.push(`${from}>${to}: ${ok ? 'allowed' : 'refused'}`);
        outcomes.push(`${from}>${to}: ${err ? 'refused' : 'allowed'}`);
        if (err) expectRefused(err, '23514', /is not allowed/, `${from}>${to}`);
        const { rows } = await db().query<{ admit_state: string }>(
          'select admit_state from session_participant where tenant_id = $1 and session_id = $2 and user_id = $3',
          [tenantId, sessionId, userId],
        );
        expect(rows[0]!.admit_state, `${from}>${to} stored`).to.equal(err ? from : to);
      }
    }
    expect(outcomes).to.deep.equal(expected);
  });

  it("never changes a participant's identity; keeps the waiting deadline set exactly while WAITING", async () => {
    const tenantId = newTenant();
    const sessionId = await insertSession(tenantId, 'open');
    const insert = (userId: string, ordinal: number, state: AdmitState, waitingExpiresAt: Date | null) =>
      attempt(
        `insert into session_participant (tenant_id, session_id, user_id, role, ordinal, admit_state,
           admit_state_changed_at, admit_state_changed_by, invited_by, invited_at, admitted_by, waiting_expires_at)
         values ($1, $2, $3, 'patient', $4, $5, now(), '', 'u-guard', now(), '', $6)`,
        [tenantId, sessionId, userId, ordinal, state, waitingExpiresAt],
      );
    expect(await insert('u-1', 0, 'invited', null)).to.equal(undefined);
    for (const [column, value] of [
      ['user_id', 'u-2'],
      ['ordinal', 7],
    ] as const) {
      const err = await attempt(
        `update session_participant set ${column} = $3 where tenant_id = $1 and session_id = $2 and user_id = 'u-1'`,
        [tenantId, sessionId, value],
      );
      expectRefused(err, '23514', /identity never changes/, column);
    }
    const noDeadline = await insert('u-3', 1, 'waiting', null);
    expect(noDeadline?.constraint).to.equal('session_participant_waiting');
    const deadlineNotWaiting = await insert('u-4', 2, 'invited', T);
    expect(deadlineNotWaiting?.constraint).to.equal('session_participant_waiting');
    const twice = await insert('u-1', 3, 'invited', null);
    expect(twice?.code, 'one row per (session, user)').to.equal('23505');
  });

  it('keeps session_event append-only (UPDATE, DELETE, TRUNCATE refused with 42501)', async () => {
    const tenantId = newTenant();
    const sessionId = await insertSession(tenantId, 'scheduled');
    const eventId = newId();
    await db().query(
      `insert into session_event (tenant_id, session_id, event_id, kind, from_state, to_state, transition,
         subject_user_id, from_admit_state, to_admit_state, actor_user_id, reason_code, reason, occurred_at)
       values ($1, $2, $3, 'created', null, 'scheduled', null, '', null, null, 'u-guard', 'CREATED', '', now())`,
      [tenantId, sessionId, eventId],
    );
    const where = 'where tenant_id = $1 and session_id = $2 and event_id = $3';
    const params = [tenantId, sessionId, eventId];
    expectRefused(
      await attempt(`update session_event set reason = 'rewritten' ${where}`, params),
      '42501',
      /append-only/,
      'UPDATE',
    );
    expectRefused(
      await attemptRolledBack(`delete from session_event ${where}`, params),
      '42501',
      /append-only/,
      'DELETE',
    );
    expectRefused(await attemptRolledBack('truncate session_event'), '42501', /append-only/, 'TRUNCATE');
    const { rows } = await db().query(`select reason from session_event ${where}`, params);
    expect(rows).to.deep.equal([{ reason: '' }]);
  });

  it('never deletes a session or a participant', async () => {
    const tenantId = newTenant();
    const sessionId = await insertSession(tenantId, 'scheduled');
    await db().query(
      `insert into session_participant (tenant_id, session_id, user_id, role, ordinal, admit_state,
         admit_state_changed_at, admit_state_changed_by, invited_by, invited_at, admitted_by)
       values ($1, $2, 'u-1', 'provider', 0, 'invited', now(), '', 'u-guard', now(), '')`,
      [tenantId, sessionId],
    );
    expectRefused(
      await attemptRolledBack('delete from session_participant where tenant_id = $1 and session_id = $2', [
        tenantId,
        sessionId,
      ]),
      '42501',
      /never deleted/,
      'DELETE participant',
    );
    // A session without participants is refused just the same (not by the foreign key).
    const lone = await insertSession(tenantId, 'cancelled');
    for (const id of [sessionId, lone]) {
      expectRefused(
        await attemptRolledBack('delete from virtual_session where tenant_id = $1 and session_id = $2', [tenantId, id]),
        '42501',
        /never deleted/,
        'DELETE session',
      );
    }
    expectRefused(
      await attemptRolledBack('truncate virtual_session, session_participant, session_event'),
      '42501',
      /refused/,
      'TRUNCATE sessions',
    );
    const { rows } = await db().query<{ n: number }>(
      'select count(*)::int as n from virtual_session where tenant_id = $1',
      [tenantId],
    );
    expect(rows[0]!.n).to.equal(2);
  });
});
