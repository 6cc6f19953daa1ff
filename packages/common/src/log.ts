/**
 * One structured line per event, Postfix's fields (queue_id, from, to, relay,
 * delay, dsn, status). Services write to standard output; master collects
 * those lines and sends them to the terminal or to maillog_file.
 */
import pino from 'pino';

export type Logger = pino.Logger;

export function createLogger(service: string): Logger {
  return pino({
    base: { service, pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
  }, pino.destination({ dest: 1, sync: false }));
}

/** Seconds with two decimals, as Postfix prints delay=. */
export function delaySince(startMs: number): number {
  return Math.round((Date.now() - startMs) / 10) / 100;
}
