import { type Actor, governsTenant, hasRole } from '../actor.js';
import { Violations } from '../errors.js';
import { checkText, checkUserId } from '../validation.js';
import type { EscalationLevel, ParticipantRole, ThreadParticipant } from './thread.entity.js';

/** Limits of the thread aggregate. */
export const THREAD_LIMITS = {
  subjectMaxChars: 200,
  reasonMaxChars: 1000,
  maxParticipants: 50,
} as const;

/** What a caller may do to a thread, decided from its roles and whether it takes part. */
export interface ThreadPermissions {
  /** The thread exists for the caller (otherwise it is NOT_FOUND). */
  readonly see: boolean;
  /** Add or remove participants, escalate, archive. */
  readonly manage: boolean;
  /** Reopen an archived thread. */
  readonly reopen: boolean;
}

/**
 * The thread access rules in one place. Staff and service callers govern every thread of their tenant;
 * providers manage the threads they take part in; every participant may see and reopen its threads.
 */
export function threadPermissions(actor: Actor, participants: readonly ThreadParticipant[]): ThreadPermissions {
  return memberPermissions(
    actor,
    participants.some((p) => p.userId === actor.userId),
  );
}

/** The same rules, from whether the caller takes part. Only participants send and mark messages read. */
export function memberPermissions(actor: Actor, member: boolean): ThreadPermissions & { readonly post: boolean } {
  const governs = governsTenant(actor);
  return {
    see: governs || member,
    manage: governs || (member && hasRole(actor, 'provider')),
    reopen: governs || member,
    post: member,
  };
}

/**
 * The participant role a creator is given from its token: provider, then staff, then patient. A
 * `service` caller acts on behalf of others and does not take part.
 */
export function creatorParticipantRole(actor: Actor): ParticipantRole | undefined {
  if (hasRole(actor, 'provider')) return 'provider';
  if (hasRole(actor, 'staff')) return 'care_staff';
  if (hasRole(actor, 'patient')) return 'patient';
  return undefined;
}

/** A participant as a request names it. */
export interface ParticipantSpec {
  readonly userId: string;
  readonly role: ParticipantRole | undefined;
}

/** Validates one participant spec; `field` is its path in the request. */
export function checkParticipantSpec(v: Violations, field: string, spec: ParticipantSpec): void {
  checkUserId(v, `${field}.user_id`, spec.userId);
  if (spec.role === undefined) v.add(`${field}.role`, 'is required');
}

/** Validates CreateThread input (subject, participants, request id are checked by the caller). */
export function checkCreateThread(actor: Actor, subject: string, participants: readonly ParticipantSpec[]): Violations {
  const v = new Violations();
  checkText(v, 'subject', subject, 1, THREAD_LIMITS.subjectMaxChars);
  const selfJoins = creatorParticipantRole(actor) !== undefined;
  if (participants.length + (selfJoins ? 1 : 0) > THREAD_LIMITS.maxParticipants) {
    v.add('participants', `a thread has at most ${THREAD_LIMITS.maxParticipants} participants`);
  }
  if (!selfJoins && participants.length === 0) v.add('participants', 'is required when the caller does not take part');
  const seen = new Set<string>();
  participants.forEach((spec, i) => {
    const field = `participants[${i}]`;
    checkParticipantSpec(v, field, spec);
    if (selfJoins && spec.userId === actor.userId) {
      v.add(`${field}.user_id`, 'is the caller, who is added automatically');
    } else if (seen.has(spec.userId)) {
      v.add(`${field}.user_id`, 'is listed twice');
    }
    seen.add(spec.userId);
  });
  return v;
}

/** Validates EscalateThread input. */
export function checkEscalation(level: EscalationLevel | undefined, assignee: string, reason: string): Violations {
  const v = new Violations();
  if (level === undefined) v.add('level', 'is required');
  if (level === 'none') {
    if (assignee !== '') v.add('assignee_user_id', 'must be empty when clearing an escalation');
  } else {
    checkUserId(v, 'assignee_user_id', assignee);
  }
  checkText(v, 'reason', reason, 1, THREAD_LIMITS.reasonMaxChars);
  return v;
}
