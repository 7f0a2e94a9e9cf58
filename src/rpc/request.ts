import type { ServiceDefinition } from '@grpc/grpc-js';
import { type FieldViolation, InvalidArgument } from '../domain/errors.js';

/** What a request whose bytes do not decode becomes (instead of grpc-js answering INTERNAL). */
class Undecodable {
  constructor(readonly reason: string) {}
}

/**
 * The service definition with each method's request deserializer made total: bytes that are not a
 * valid message become an Undecodable marker, which `checkRequest` refuses with INVALID_ARGUMENT. (A
 * deserializer that throws makes grpc-js answer INTERNAL before any handler runs.)
 */
export function decodeSafely(definition: ServiceDefinition): ServiceDefinition {
  return Object.fromEntries(
    Object.entries(definition).map(([method, def]) => {
      const deserialize = def.requestDeserialize;
      const requestDeserialize = (bytes: Buffer) => {
        try {
          return deserialize(bytes);
        } catch (err) {
          return new Undecodable(err instanceof Error ? err.message : String(err));
        }
      };
      return [method, { ...def, requestDeserialize }];
    }),
  ) as ServiceDefinition;
}

// google.protobuf.Timestamp's range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
const MIN_TIME = Date.parse('0001-01-01T00:00:00Z');
const MAX_TIME = Date.parse('9999-12-31T23:59:59.999Z');

/** True for a Date inside google.protobuf.Timestamp's range (and not Invalid Date). */
export function inTimestampRange(date: Date): boolean {
  const t = date.getTime();
  return Number.isFinite(t) && t >= MIN_TIME && t <= MAX_TIME;
}

/**
 * Refuses, with INVALID_ARGUMENT, a request that did not decode, and every timestamp in it outside
 * google.protobuf.Timestamp's range (ts-proto turns any seconds value into a Date, so year 10000 or an
 * Invalid Date would otherwise reach the database). Field paths are the proto's (snake_case).
 */
export function checkRequest(request: unknown): void {
  if (request instanceof Undecodable) {
    throw new InvalidArgument([{ field: '', description: `the request is not a valid message: ${request.reason}` }]);
  }
  const violations: FieldViolation[] = [];
  walk(request, '', violations, 0);
  if (violations.length > 0) throw new InvalidArgument(violations);
}

function walk(value: unknown, path: string, out: FieldViolation[], depth: number): void {
  if (depth > 8 || value === null || typeof value !== 'object') return;
  if (value instanceof Date) {
    if (!inTimestampRange(value))
      out.push({ field: path, description: 'must be a time between 0001-01-01 and 9999-12-31' });
    return;
  }
  if (ArrayBuffer.isView(value)) return;
  if (Array.isArray(value)) {
    value.forEach((v, i) => walk(v, `${path}[${i}]`, out, depth + 1));
    return;
  }
  for (const [key, v] of Object.entries(value)) {
    const field = key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
    walk(v, path ? `${path}.${field}` : field, out, depth + 1);
  }
}
