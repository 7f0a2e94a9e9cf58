import { fromOpaque, toOpaque } from '../opaque.js';
import { InvalidArgument } from '../errors.js';

/** A position in one thread's message order, as clients hold it: (thread, seq). */
export interface MessageCursor {
  readonly threadId: string;
  readonly seq: number;
}

/** Largest seq a message can have (the column is a 32-bit integer). */
export const MAX_SEQ = 2_147_483_647;

/** True for a value that can be a message position: a whole number in [0, MAX_SEQ]. */
export function isSeq(value: unknown): value is number {
  return Number.isInteger(value) && (value as number) >= 0 && (value as number) <= MAX_SEQ;
}

/** The opaque cursor string of a message position (Message.cursor, MessagePosition.cursor). */
export function encodeCursor(threadId: string, seq: number): string {
  return toOpaque(`m1:${threadId}:${seq}`);
}

/** Decodes a cursor of `threadId`, or throws INVALID_ARGUMENT on `field`. */
export function decodeCursor(field: string, cursor: string, threadId: string): MessageCursor {
  const bad = (why: string) => new InvalidArgument([{ field, description: why }]);
  const match = /^m1:([0-9a-f-]{36}):(\d{1,10})$/.exec(fromOpaque(cursor, 200) ?? '');
  if (!match) throw bad('is not a message cursor');
  if (match[1] !== threadId) throw bad('belongs to another thread');
  const seq = Number(match[2]);
  if (!isSeq(seq)) throw bad('is not a message cursor');
  return { threadId, seq };
}
