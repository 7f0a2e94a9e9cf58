/** A daily window in a named time zone, minutes after local midnight; end < start spans midnight. */
export interface QuietHours {
  readonly startMinute: number;
  readonly endMinute: number;
  readonly timeZone: string;
}

const formatters = new Map<string, Intl.DateTimeFormat>();

function formatter(timeZone: string): Intl.DateTimeFormat {
  let f = formatters.get(timeZone);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', { timeZone, hourCycle: 'h23', hour: '2-digit', minute: '2-digit' });
    formatters.set(timeZone, f);
  }
  return f;
}

/** True when `timeZone` is an IANA zone name this runtime knows (not an offset such as `+05:00`). */
export function isKnownTimeZone(timeZone: string): boolean {
  if (timeZone === '' || timeZone.length > 64 || /^[+-]\d/.test(timeZone)) return false;
  try {
    formatter(timeZone);
    return true;
  } catch {
    return false;
  }
}

/** Minutes after local midnight at `at` in `timeZone` (daylight saving included). */
export function localMinute(at: Date, timeZone: string): number {
  let hour = 0;
  let minute = 0;
  for (const part of formatter(timeZone).formatToParts(at)) {
    if (part.type === 'hour') hour = Number(part.value);
    if (part.type === 'minute') minute = Number(part.value);
  }
  return hour * 60 + minute;
}

/** True when `at` falls inside the window (start inclusive, end exclusive). */
export function inQuietHours(at: Date, q: QuietHours): boolean {
  const m = localMinute(at, q.timeZone);
  return q.startMinute < q.endMinute ? m >= q.startMinute && m < q.endMinute : m >= q.startMinute || m < q.endMinute;
}

/**
 * The first whole minute after `at` that is outside the window. Jumps by the local minutes left until
 * `endMinute`, corrects once for a daylight-saving change in between, then walks minute by minute while
 * still inside (an end inside a skipped hour ends when the clocks jump past it).
 */
export function quietHoursEnd(at: Date, q: QuietHours): Date {
  const minuteStart = Math.floor(at.getTime() / 60_000) * 60_000;
  const ahead = (q.endMinute - localMinute(at, q.timeZone) + 1440) % 1440 || 1440;
  let end = minuteStart + ahead * 60_000;
  const drift = ((localMinute(new Date(end), q.timeZone) - q.endMinute + 720 + 1440) % 1440) - 720;
  end -= drift * 60_000;
  if (end <= at.getTime()) end = minuteStart + 60_000;
  for (let guard = 0; guard < 1500 && inQuietHours(new Date(end), q); guard++) end += 60_000;
  return new Date(end);
}
