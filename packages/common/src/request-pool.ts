/**
 * JSON requests to one service over connections kept open between requests.
 * qmgr asks a delivery agent once per message, and a new Unix-socket
 * connection for each request costs more than the request itself.
 *
 * The wire is framing.ts's: a J frame out, a J frame back. One request at a
 * time per connection. A server that goes on reading after its reply serves
 * the next request on the same connection; one that closes after the first
 * still works (the pool notices the close and opens a new connection).
 */
import * as net from 'node:net';
import { FrameWriter, connectUnix } from './framing.js';

const MAX_JSON = 16 * 1024 * 1024;

class ConnectionClosed extends Error {}

/** One kept connection; reads in flowing mode, so a close while idle is seen at once. */
class PooledConnection {
  private buf: Buffer = Buffer.alloc(0);
  private pending: { resolve: (v: any) => void; reject: (e: Error) => void } | null = null;
  private readonly writer: FrameWriter;
  dead: Error | null = null;
  onDead: (() => void) | null = null;
  idleTimer: NodeJS.Timeout | null = null;

  constructor(readonly socket: net.Socket, private readonly socketPath: string) {
    this.writer = new FrameWriter(socket);
    socket.on('data', (d: Buffer) => this.onData(d));
    socket.on('error', (e) => this.fail(e));
    socket.on('close', () => this.fail(new ConnectionClosed(`${socketPath}: connection closed before a reply`)));
  }

  exchange(request: unknown, timeoutMs: number): Promise<any> {
    if (this.dead) return Promise.reject(this.dead);
    const reply = new Promise<any>((resolve, reject) => { this.pending = { resolve, reject }; });
    this.socket.setTimeout(timeoutMs, () => this.socket.destroy(new Error(`${this.socketPath}: no reply within ${timeoutMs} ms`)));
    this.writer.json(request).catch((e) => this.fail(e));
    return reply.finally(() => { if (!this.dead) this.socket.setTimeout(0); });
  }

  private onData(d: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    while (this.buf.length >= 5) {
      const type = String.fromCharCode(this.buf[0]);
      const len = this.buf.readUInt32BE(1);
      if (type !== 'J' || len > MAX_JSON) return this.protocolError(`unexpected ${type} frame of ${len} bytes`);
      if (this.buf.length < 5 + len) return;
      const payload = this.buf.subarray(5, 5 + len);
      this.buf = this.buf.subarray(5 + len);
      let reply: any;
      try { reply = JSON.parse(payload.toString('utf8')); } catch { return this.protocolError('reply is not valid JSON'); }
      const p = this.pending;
      if (!p) return this.protocolError('a reply nobody asked for');
      this.pending = null;
      p.resolve(reply);
    }
  }

  private protocolError(problem: string): void {
    this.socket.destroy(new Error(`${this.socketPath}: ${problem}`));
  }

  private fail(e: Error): void {
    if (!this.dead) this.dead = e;
    this.socket.destroy();
    const p = this.pending;
    this.pending = null;
    p?.reject(this.dead);
    this.onDead?.();
  }
}

export class RequestPool {
  private idle: PooledConnection[] = [];
  private closed = false;

  constructor(readonly socketPath: string, private readonly idleMs = 5000) {}

  /** Send one request and wait for its reply, on a kept connection when there is one. */
  async request(request: unknown, timeoutMs = 10000): Promise<any> {
    for (let attempt = 0; ; attempt++) {
      const kept = attempt === 0 ? this.takeIdle() : null;
      const conn = kept ?? new PooledConnection(await connectUnix(this.socketPath, timeoutMs), this.socketPath);
      try {
        const reply = await conn.exchange(request, timeoutMs);
        this.putIdle(conn);
        return reply;
      } catch (e) {
        conn.socket.destroy();
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
    for (const c of this.idle.splice(0)) c.socket.destroy();
  }

  private takeIdle(): PooledConnection | null {
    let conn: PooledConnection | undefined;
    while ((conn = this.idle.pop())) {
      if (conn.idleTimer) clearTimeout(conn.idleTimer);
      conn.onDead = null;
      if (!conn.dead) return conn;
    }
    return null;
  }

  private putIdle(conn: PooledConnection): void {
    if (this.closed || conn.dead) { conn.socket.destroy(); return; }
    const drop = () => {
      const i = this.idle.indexOf(conn);
      if (i >= 0) this.idle.splice(i, 1);
      if (conn.idleTimer) clearTimeout(conn.idleTimer);
      conn.socket.destroy();
    };
    conn.onDead = drop;
    conn.idleTimer = setTimeout(drop, this.idleMs);
    conn.idleTimer.unref();
    this.idle.push(conn);
  }
}
