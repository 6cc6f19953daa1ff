/**
 * Idle client sessions kept for the next message to the same place (Postfix's
 * scache): the SMTP client's per host and port, the LMTP client's per server,
 * smtpd's connections to cleanup.
 * A new connection, greeting and EHLO/LHLO per message is most of what a
 * delivery costs. A session is kept for a while, closed politely (QUIT) when
 * that runs out, and forgotten at once when the server closes it first.
 */

/** What the pool needs of a session: nodemailer's SMTPConnection has it, CleanupSubmission too. */
export interface KeptSession {
  once(event: 'end', listener: () => void): unknown;
  off(event: 'end', listener: () => void): unknown;
  quit(): void;
}

interface Entry<C, M> { conn: C; meta: M; timer: NodeJS.Timeout; onEnd: () => void }

function quit(conn: KeptSession): void {
  try { conn.quit(); } catch { /* closed already */ }
}

export class IdlePool<C extends KeptSession, M = undefined> {
  private readonly idle = new Map<string, Entry<C, M>[]>();

  /** The most recently kept session for `key` (the least likely to have timed out at the server), or null. */
  take(key: string): { conn: C; meta: M } | null {
    const list = this.idle.get(key);
    const e = list?.pop();
    if (!e) return null;
    if (!list!.length) this.idle.delete(key);
    clearTimeout(e.timer);
    e.conn.off('end', e.onEnd);
    return { conn: e.conn, meta: e.meta };
  }

  /**
   * Keep a session for `idleMs`; with `max` kept for this key already it is
   * closed instead (a server's connection count stays within what qmgr lets
   * run at once). Returns whether it was kept.
   */
  put(key: string, conn: C, meta: M, idleMs: number, max = Infinity): boolean {
    const list = this.idle.get(key) ?? [];
    if (list.length >= max) { quit(conn); return false; }
    const remove = () => {
      const i = list.indexOf(entry);
      if (i >= 0) list.splice(i, 1);
      if (!list.length && this.idle.get(key) === list) this.idle.delete(key);
      clearTimeout(entry.timer);
      conn.off('end', remove);
    };
    const entry: Entry<C, M> = { conn, meta, onEnd: remove, timer: setTimeout(() => { remove(); quit(conn); }, idleMs) };
    entry.timer.unref();
    conn.once('end', remove); // the server closed it while idle
    list.push(entry);
    this.idle.set(key, list);
    return true;
  }

  /** Sessions kept for `key`. */
  count(key: string): number { return this.idle.get(key)?.length ?? 0; }
}
