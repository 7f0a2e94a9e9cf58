import { v7 as uuidv7, validate as uuidValidate } from 'uuid';

/** A new time-ordered identifier (UUIDv7), the one id format of the API. */
export function newId(): string {
  return uuidv7();
}

/** True for a canonical lower- or upper-case UUID string. */
export function isUuid(value: string): boolean {
  return uuidValidate(value);
}
