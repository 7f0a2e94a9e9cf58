/**
 * Opaque strings handed to clients (page tokens, message cursors, resume tokens): UTF-8 text as
 * base64url, so clients treat them as tokens and copy them verbatim.
 */
export function toOpaque(text: string): string {
  return Buffer.from(text, 'utf8').toString('base64url');
}

/** The text behind an opaque string, or undefined when it is longer than `maxLength` or not base64url. */
export function fromOpaque(token: string, maxLength: number): string | undefined {
  if (token.length > maxLength || !/^[A-Za-z0-9_-]+$/.test(token)) return undefined;
  return Buffer.from(token, 'base64url').toString('utf8');
}
