import { expect } from 'chai';
import {
  CLOSED_STATES,
  decideSuggestion,
  SESSION_STATES,
  type SessionState,
  type Suggestion,
  SUGGESTIONS,
  transition,
  TRANSITIONS,
} from '../../src/domain/session/session.policy.js';

// RequestTransition's decisions exactly as proto/comms/v1/session.proto words them: for a caller who
// governs the session (provider of it, staff, service), the resulting state when accepted (`=` marks
// "accepted unchanged") or the rejection reason.
const GOVERNING: Record<Suggestion, Record<SessionState, string>> = {
  open: {
    scheduled: 'open',
    open: '=open',
    in_progress: 'SESSION_ALREADY_STARTED',
    ended: 'SESSION_CLOSED',
    cancelled: 'SESSION_CLOSED',
    expired: 'SESSION_CLOSED',
  },
  end: {
    scheduled: 'SESSION_NOT_STARTED',
    open: 'SESSION_NOT_STARTED',
    in_progress: 'ended',
    ended: '=ended',
    cancelled: 'SESSION_CLOSED',
    expired: 'SESSION_CLOSED',
  },
  cancel: {
    scheduled: 'cancelled',
    open: 'cancelled',
    in_progress: 'SESSION_ALREADY_STARTED',
    ended: 'SESSION_CLOSED',
    cancelled: '=cancelled',
    expired: 'SESSION_CLOSED',
  },
};

function outcome(state: SessionState, suggestion: Suggestion, governs: boolean): string {
  const d = decideSuggestion(state, suggestion, governs);
  if (!d.accepted) return d.callerLeaves ? `${d.reason}+LEFT` : d.reason;
  return d.changed ? d.state : `=${d.state}`;
}

describe('session policy: the transition table and RequestTransition decisions', () => {
  it('decides every state × suggestion for a governing caller as the contract says', () => {
    for (const suggestion of SUGGESTIONS) {
      for (const state of SESSION_STATES) {
        expect(outcome(state, suggestion, true), `${suggestion} in ${state}`).to.equal(GOVERNING[suggestion][state]);
      }
    }
  });

  it('turns every other participant away: END means they leave, OPEN and CANCEL are not theirs', () => {
    for (const state of SESSION_STATES) {
      expect(outcome(state, 'end', false), `end in ${state}`).to.equal('CALLER_LEFT_ONLY+LEFT');
      expect(outcome(state, 'open', false), `open in ${state}`).to.equal('ROLE_NOT_ALLOWED');
      expect(outcome(state, 'cancel', false), `cancel in ${state}`).to.equal('ROLE_NOT_ALLOWED');
    }
  });

  it('never moves a closed session, and every accepted change is a row of the table', () => {
    for (const t of TRANSITIONS) expect(CLOSED_STATES.has(t.from), `${t.from} --${t.trigger}-->`).to.equal(false);
    for (const suggestion of SUGGESTIONS) {
      for (const state of SESSION_STATES) {
        const d = decideSuggestion(state, suggestion, true);
        if (d.accepted && d.changed) expect(transition(state, suggestion)).to.equal(d.state);
        if (CLOSED_STATES.has(state)) expect(d.accepted && d.changed).to.equal(false);
      }
    }
  });

  it('has one row per (state, trigger): the machine is deterministic', () => {
    const keys = TRANSITIONS.map((t) => `${t.from} ${t.trigger}`);
    expect(new Set(keys).size).to.equal(keys.length);
  });

  it('reaches IN_PROGRESS only from OPEN, once a provider and another participant are admitted', () => {
    const into = TRANSITIONS.filter((t) => t.to === 'in_progress');
    expect(into).to.deep.equal([{ from: 'open', trigger: 'visit_started', to: 'in_progress' }]);
    expect(transition('scheduled', 'visit_started')).to.equal(undefined);
  });
});
