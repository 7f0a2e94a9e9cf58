import { fromOpaque, toOpaque } from './opaque.js';
import { InvalidArgument } from './errors.js';
import { isUuid } from './ids.js';

/**
 * Opaque AIP-158 page tokens: base64url JSON carrying the keyset position and the filter the walk was
 * started with, so a token cannot be replayed against another query. Not a security boundary: every
 * query still applies the caller's access rules.
 */
export function encodePageToken(kind: string, body: Record<string, unknown>): string {
  return toOpaque(JSON.stringify({ k: kind, ...body }));
}

/** Decodes a token made by encodePageToken for `kind`, or throws INVALID_ARGUMENT on `page_token`. */
export function decodePageToken(kind: string, token: string): Record<string, unknown> {
  const bad = () => new InvalidArgument([{ field: 'page_token', description: 'is not a token this list issued' }]);
  const text = fromOpaque(token, 1024);
  if (text === undefined) throw bad();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw bad();
  }
  if (typeof body !== 'object' || body === null || (body as { k?: unknown }).k !== kind) throw bad();
  return body as Record<string, unknown>;
}

/** A keyset position of lists ordered by (time, UUID): the last row of the page. */
export interface TimePosition {
  readonly at: Date;
  readonly id: string;
}

/** A page token carrying `position` and the `filter` the walk was started with. */
export function encodePositionToken(kind: string, filter: Record<string, unknown>, position: TimePosition): string {
  return encodePageToken(kind, { ...filter, at: position.at.toISOString(), id: position.id });
}

/**
 * Decodes a token made by encodePositionToken for `kind`: INVALID_ARGUMENT on `page_token` when it was
 * issued for another filter or its position is not a time and a UUID.
 */
export function decodePositionToken(kind: string, token: string, filter: Record<string, unknown>): TimePosition {
  const body = decodePageToken(kind, token);
  const at = new Date(String(body.at));
  if (
    Object.entries(filter).some(([key, value]) => body[key] !== value) ||
    typeof body.id !== 'string' ||
    !isUuid(body.id) ||
    Number.isNaN(at.getTime()) ||
    at.getUTCFullYear() < 1 ||
    at.getUTCFullYear() > 9999
  ) {
    throw new InvalidArgument([{ field: 'page_token', description: 'does not belong to this filter' }]);
  }
  return { at, id: body.id };
}
