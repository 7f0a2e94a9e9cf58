/** The reverse of a domain value → proto enum table: proto enum number → domain value. */
export function invert<K extends string, V extends number>(table: Record<K, V>): Map<number, K> {
  return new Map(Object.entries(table).map(([k, v]) => [v as number, k as K]));
}
