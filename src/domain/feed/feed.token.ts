import { fromOpaque, toOpaque } from '../opaque.js';
import { InvalidArgument } from '../errors.js';

/**
 * Resume tokens: opaque to clients, base64url of `f1|<stream>|<position>`. A token names the stream it
 * was issued for, so it cannot be replayed against another thread's or user's feed. Not a security
 * boundary: every subscription checks access again.
 */
export function encodeResumeToken(stream: string, position: string | number): string {
  return toOpaque(`f1|${stream}|${position}`);
}

/**
 * The position a token names in `stream`, as text matching `pattern` (the whole position), or
 * INVALID_ARGUMENT on `resume_token`. Empty → undefined.
 */
export function decodeResumeToken(token: string, stream: string, pattern: RegExp): string | undefined {
  if (token === '') return undefined;
  const bad = (why: string) => new InvalidArgument([{ field: 'resume_token', description: why }]);
  const match = /^f1\|(.+)\|([^|]+)$/s.exec(fromOpaque(token, 400) ?? '');
  if (!match || !pattern.test(match[2]!)) throw bad('is not a resume token');
  if (match[1] !== stream) throw bad('belongs to another feed');
  return match[2];
}
