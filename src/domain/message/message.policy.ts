import { Violations } from '../errors.js';
import { checkText, checkUuid } from '../validation.js';

/** Limits of the message aggregate. `bodyMaxBytes` is configurable (MESSAGE_MAX_BYTES). */
export interface MessageLimits {
  readonly bodyMaxBytes: number;
}

/** What SendMessage carries, decoded. */
export interface SendInput {
  readonly threadId: string;
  readonly clientMutationId: string;
  readonly body: string;
  readonly clientSentAt: Date | undefined;
}

// NUL cannot be stored in PostgreSQL text; other C0 controls but tab, LF and CR have no place in a message.
const BODY_CONTROL = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/;

/** Validates a send; returns the normalized thread id. Every bad field is reported at once. */
export function checkSend(input: SendInput, limits: MessageLimits): string {
  const v = new Violations();
  const threadId = checkUuid(v, 'thread_id', input.threadId);
  checkText(v, 'client_mutation_id', input.clientMutationId, 1, 128);
  const bytes = Buffer.byteLength(input.body, 'utf8');
  if (input.body.trim() === '') v.add('body', 'is required and must not be blank');
  else if (bytes > limits.bodyMaxBytes)
    v.add('body', `must be at most ${limits.bodyMaxBytes} UTF-8 bytes, got ${bytes}`);
  else if (BODY_CONTROL.test(input.body))
    v.add('body', 'must not contain control characters other than tab and newlines');
  if (input.clientSentAt && Number.isNaN(input.clientSentAt.getTime())) v.add('client_sent_at', 'is not a valid time');
  v.throwIfAny();
  return threadId;
}
