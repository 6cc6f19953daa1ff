/**
 * JSON requests to one service over connections kept open between requests.
 * qmgr asks a delivery agent once per message, and a new Unix-socket
 * connection for each request costs more than the request itself.
 *
 * The wire is framing.ts's: a J frame out (for local, the message after it as
 * D frames and E), a J frame back. One request at a
 * time per connection. A server that goes on reading after its reply serves
 * the next request on the same connection; one that closes after the first
 * still works (the pool notices the close and opens a new connection).
 * Each connection is an ipc/connection.ts RequestConnection, as smtpd's anvil link is.
 */
import { RequestConnection, ConnectionClosed } from './connection.js';

interface Kept { conn: RequestConnection; idleTimer: NodeJS.Timeout | null }

export class RequestPool {
  private idle: Kept[] = [];
  private closed = false;

  constructor(readonly socketPath: string, private readonly idleMs = 5000) {}

  /** Send one request and wait for its reply, on a kept connection when there is one. */
  async request(request: unknown, timeoutMs = 10000, body?: () => AsyncIterable<Buffer>): Promise<any> {
    for (let attempt = 0; ; attempt++) {
      const kept = attempt === 0 ? this.takeIdle() : null;
      const conn = kept ?? await RequestConnection.connect(this.socketPath, timeoutMs);
      try {
        // a fresh body per attempt: a retry sends the message again from its start
        const reply = await conn.request(request, timeoutMs, body?.());
        this.putIdle(conn);
        return reply;
      } catch (e) {
        conn.close();
        // a kept connection the service closed just as we sent (it was restarting): a new one, once
        const code = (e as NodeJS.ErrnoException).code;
        if (kept && (e instanceof ConnectionClosed || code === 'EPIPE' || code === 'ECONNRESET')) continue;
        throw e;
      }
    }
  }

  /** Close every kept connection; later requests open new ones. */
  close(): void {
    this.closed = true;
    for (const k of this.idle.splice(0)) k.conn.close();
  }

  private takeIdle(): RequestConnection | null {
    let k: Kept | undefined;
    while ((k = this.idle.pop())) {
      if (k.idleTimer) clearTimeout(k.idleTimer);
      k.conn.onDead = null;
      if (!k.conn.dead) return k.conn;
    }
    return null;
  }

  private putIdle(conn: RequestConnection): void {
    if (this.closed || conn.dead) { conn.close(); return; }
    const kept: Kept = { conn, idleTimer: null };
    const drop = () => {
      const i = this.idle.indexOf(kept);
      if (i >= 0) this.idle.splice(i, 1);
      if (kept.idleTimer) clearTimeout(kept.idleTimer);
      conn.close();
    };
    conn.onDead = drop;
    kept.idleTimer = setTimeout(drop, this.idleMs);
    kept.idleTimer.unref();
    this.idle.push(kept);
  }
}
