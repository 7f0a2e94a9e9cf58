import { pino, type Logger } from 'pino';

/** Structured JSON logs. Never log message bodies or tokens. */
export function createLogger(level: string): Logger {
  return pino({ level, base: { service: 'comms' }, redact: ['authorization', '*.authorization', '*.body'] });
}

export type { Logger };
