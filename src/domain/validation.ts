import { InvalidArgument, type Violations } from './errors.js';
import { isUuid } from './ids.js';

// Control characters (C0, DEL, C1) are refused in identifiers and single-line texts.
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

/** Checks a required UUID field. Returns the lower-cased id. */
export function checkUuid(v: Violations, field: string, value: string): string {
  if (value === '') v.add(field, 'is required');
  else if (!isUuid(value)) v.add(field, 'must be a UUID');
  return value.toLowerCase();
}

/** Checks a user id (token subject): 1 to 128 characters, no control characters. */
export function checkUserId(v: Violations, field: string, value: string): void {
  if (value === '') v.add(field, 'is required');
  else if (value.length > 128) v.add(field, 'must be at most 128 characters');
  else if (CONTROL.test(value)) v.add(field, 'must not contain control characters');
}

/** Checks a single-line text of `min`..`max` characters (Unicode code points). */
export function checkText(v: Violations, field: string, value: string, min: number, max: number): void {
  const length = [...value].length;
  if (length < min) v.add(field, min === 1 ? 'is required' : `must be at least ${min} characters`);
  else if (length > max) v.add(field, `must be at most ${max} characters`);
  else if (CONTROL.test(value)) v.add(field, 'must not contain control characters');
}

/** Checks an optional idempotency key: empty, or 1 to 128 printable characters. */
export function checkRequestId(v: Violations, field: string, value: string): void {
  if (value === '') return;
  checkText(v, field, value, 1, 128);
}

/** AIP-158 page size: 0 → default, above max → max, negative → INVALID_ARGUMENT. */
export function pageSize(value: number, defaultSize: number, maxSize: number): number {
  if (value < 0) throw new InvalidArgument([{ field: 'page_size', description: 'must not be negative' }]);
  if (value === 0) return defaultSize;
  return Math.min(value, maxSize);
}
