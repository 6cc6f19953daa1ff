/**
 * One structured line per event, Postfix's fields (queue_id, from, to, relay,
 * delay, dsn, status). Services write to standard output; master collects
 * those lines and sends them to the terminal or to maillog_file.
 */
import * as fs from 'node:fs';
import pino from 'pino';

export type Logger = pino.Logger;

export function createLogger(service: string): Logger {
  const dest = pino.destination({ dest: 1, sync: false });
  // pino flushes at exit with sonic-boom's flushSync, which retries a failed write forever:
  // once master is gone our stdout is a broken pipe and an exiting service would hang there.
  const flushSync = dest.flushSync.bind(dest);
  dest.flushSync = () => { if (stdoutWritable()) flushSync(); };
  return pino({
    base: { service, pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
  }, dest);
}

/** A zero-byte write tells a broken pipe (EPIPE) from a merely full one. */
function stdoutWritable(): boolean {
  try { fs.writeSync(1, ''); return true; } catch (e) { return (e as NodeJS.ErrnoException).code === 'EAGAIN'; }
}

/** Seconds with two decimals, as Postfix prints delay=. */
export function delaySince(startMs: number): number {
  return Math.round((Date.now() - startMs) / 10) / 100;
}
