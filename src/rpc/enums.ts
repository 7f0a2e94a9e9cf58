import { InvalidArgument } from '../domain/errors.js';

/** The reverse of a domain value → proto enum table: proto enum number → domain value. */
export function invert<K extends string, V extends number>(table: Record<K, V>): Map<number, K> {
  return new Map(Object.entries(table).map(([k, v]) => [v as number, k as K]));
}

/**
 * An enum field of a request: 0 → undefined (unset); a known value → its domain value; a value this
 * server does not know → INVALID_ARGUMENT naming the field.
 */
export function fromPb<K>(table: Map<number, K>, value: number, field: string): K | undefined {
  if (value === 0) return undefined;
  const known = table.get(value);
  if (known === undefined) throw new InvalidArgument([{ field, description: `unknown value ${value}` }]);
  return known;
}
