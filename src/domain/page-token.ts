import { fromOpaque, toOpaque } from './opaque.js';
import { InvalidArgument } from './errors.js';

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
