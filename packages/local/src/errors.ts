/**
 * What a failed mailbox write means: `MailboxError` carries whether the
 * delivery may work later (defer, 4xx) or never will (bounce, 5xx). Only
 * classifies errors; touches no file and knows nothing of LMTP replies
 * (delivery.ts turns a MailboxError into one).
 */

/** A delivery failure. `temporary` tells the caller whether to defer (4xx) or bounce (5xx). */
export class MailboxError extends Error {
  temporary: boolean;
  /** errno code of the underlying failure, when there is one. */
  code?: string;
  constructor(message: string, temporary: boolean, options?: { cause?: unknown; code?: string }) {
    super(message, options?.cause !== undefined ? { cause: options.cause } : undefined);
    this.name = 'MailboxError';
    this.temporary = temporary;
    if (options?.code !== undefined) this.code = options.code;
  }
}

/** Everything is worth retrying except a path that can never work (a file where a directory must be, or vice versa). */
const PERMANENT_CODES = new Set(['EISDIR', 'ENOTDIR']);

/** The errno code of an error (`ENOENT`, ...), if it has one. */
export function errCode(err: unknown): string | undefined {
  const c = (err as NodeJS.ErrnoException | null)?.code;
  return typeof c === 'string' ? c : undefined;
}

/** `err` as a MailboxError saying what was being done; a MailboxError passes through unchanged. */
export function toMailboxError(what: string, err: unknown): MailboxError {
  if (err instanceof MailboxError) return err;
  const code = errCode(err);
  const msg = err instanceof Error ? err.message : String(err);
  return new MailboxError(`${what}: ${msg}`, !(code && PERMANENT_CODES.has(code)), { cause: err, code });
}
