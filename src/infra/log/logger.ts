import { type DestinationStream, pino, type Logger } from 'pino';

/**
 * Structured JSON logs (pino), to stdout unless `destination` is given. Never log message bodies or
 * tokens: the adapter logs method, code, latency and request id only, and these paths are redacted in
 * case anything else passes one.
 */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  const options = { level, base: { service: 'comms' }, redact: ['authorization', '*.authorization', '*.body'] };
  return destination ? pino(options, destination) : pino(options);
}

export type { Logger };
