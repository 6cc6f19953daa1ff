/**
 * What cleanup tells its client when a message could not be queued, and how it
 * gets the client to listen. A write error (a full spool above all) is found
 * while the client is still sending: cleanup reads and discards the rest of the
 * message, as Postfix's cleanup does after a write error, so the client reaches
 * the end and reads the reply instead of blocking on a connection nobody reads.
 */
import { FrameReader } from '@postern/common';

/** errno codes that mean "no room": the client says 452 4.3.1 Insufficient system storage. */
const NO_SPACE = new Set(['ENOSPC', 'EDQUOT']);

/** The error reply: `code` is the errno when there is one, so the client can tell a full disk from other failures. */
export function failureReply(e: unknown): { ok: false; error: string; code?: string; storage?: boolean } {
  const code = (e as NodeJS.ErrnoException)?.code;
  return { ok: false, error: (e as Error)?.message ?? String(e), ...(typeof code === 'string' ? { code } : {}),
    ...(code && NO_SPACE.has(code) ? { storage: true } : {}) };
}

/**
 * Read and discard frames up to the end (E) or abort (A) of the message, or
 * until the client goes away; bounded in time so a stalled client cannot hold it.
 */
export async function drainMessage(reader: FrameReader, timeoutMs = 10 * 60 * 1000): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<void>((r) => { timer = setTimeout(r, timeoutMs); timer.unref(); });
  const drain = (async () => {
    for (;;) {
      const f = await reader.next();
      if (!f || f.type === 'E' || f.type === 'A') return;
    }
  })().catch(() => undefined);
  try { await Promise.race([drain, expired]); } finally { clearTimeout(timer); }
}
