import { v7 as uuidv7 } from 'uuid';

const COUNTER_BITS = 74n; // rand_a (12 bits) + rand_b (62 bits) of a UUIDv7

/** The millisecond timestamp a UUIDv7 carries. */
export function uuidv7Millis(id: string): number {
  return Number.parseInt(id.replace(/-/g, '').slice(0, 12), 16);
}

/**
 * The next message id of a thread: a UUIDv7 for `millis` that sorts after `previous` (the thread's last
 * message id). Called under the thread's row lock, so within a thread ids strictly increase with the
 * sequence even when several messages share a millisecond (RFC 9562 §6.2, method 2: the random bits act
 * as a counter); together with non-decreasing sent_at this makes (sent_at, message_id) order equal
 * commit order.
 */
export function nextMessageId(millis: number, previous: string | null): string {
  if (previous === null || uuidv7Millis(previous) < millis) return uuidv7({ msecs: millis });
  const hex = previous.replace(/-/g, '');
  const value = BigInt(`0x${hex}`);
  const ms = value >> 80n;
  const randA = (value >> 64n) & 0xfffn;
  const randB = value & ((1n << 62n) - 1n);
  let counter = ((randA << 62n) | randB) + 1n;
  let nextMs = ms;
  if (counter >> COUNTER_BITS !== 0n) {
    // 2^74 ids in one millisecond cannot happen; move to the next millisecond rather than wrap.
    counter = 0n;
    nextMs += 1n;
  }
  const next =
    (nextMs << 80n) | (0x7n << 76n) | ((counter >> 62n) << 64n) | (0x2n << 62n) | (counter & ((1n << 62n) - 1n));
  const s = next.toString(16).padStart(32, '0');
  return `${s.slice(0, 8)}-${s.slice(8, 12)}-${s.slice(12, 16)}-${s.slice(16, 20)}-${s.slice(20)}`;
}
