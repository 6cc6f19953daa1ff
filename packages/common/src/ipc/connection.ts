/**
 * One kept request/reply connection: J frames out, one J frame back for each,
 * in order. qmgr's pool of connections to a delivery agent (request-pool.ts)
 * and smtpd's link to anvil are both made of it.
 *
 * The socket is read in flowing mode, so a close while idle is seen at once
 * (a kept connection must not look alive after the service restarted), with
 * framing.ts's one parser and limits.
 */
import * as net from 'node:net';
import { connectUnix, FrameWriter, FrameLimits, parseFrame } from './framing.js';

/** The connection closed before the reply came: the request may be sent again on a new one. */
export class ConnectionClosed extends Error {}

interface Pending { resolve: (reply: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }

export class RequestConnection {
  private buf: Buffer = Buffer.alloc(0);
  private readonly pending: Pending[] = [];
  private readonly writer: FrameWriter;
  /** Why the connection ended; once set, every request fails with it. */
  dead: Error | null = null;
  /** Called once when the connection ends (closed, broken, timed out). */
  onDead: ((e: Error) => void) | null = null;

  constructor(readonly socket: net.Socket, readonly label: string, private readonly limits: FrameLimits = {}) {
    this.writer = new FrameWriter(socket);
    socket.on('data', (d: Buffer) => this.onData(d));
    socket.on('error', (e) => this.fail(e));
    socket.on('close', () => this.fail(new ConnectionClosed(`${label}: connection closed before a reply`)));
  }

  static async connect(socketPath: string, timeoutMs = 10000, limits?: FrameLimits): Promise<RequestConnection> {
    return new RequestConnection(await connectUnix(socketPath, timeoutMs), socketPath, limits);
  }

  /** Requests sent and not answered yet. */
  get inFlight(): number { return this.pending.length; }

  /**
   * Send one request; resolves to its reply. No reply within `timeoutMs` ends
   * the connection (a reply that comes later would answer the wrong request).
   */
  request<Reply = any>(request: unknown, timeoutMs: number, body?: AsyncIterable<Buffer>): Promise<Reply> {
    if (this.dead) return Promise.reject(this.dead);
    return new Promise<Reply>((resolve, reject) => {
      const timer = setTimeout(() => this.socket.destroy(new Error(`${this.label}: no reply within ${timeoutMs} ms`)), timeoutMs);
      this.pending.push({ resolve: resolve as (r: unknown) => void, reject, timer });
      this.send(request, body).catch((e) => this.fail(e));
    });
  }

  /** `body`: message bytes after the J frame, as D frames with the socket's backpressure, then E (qmgr -> local). */
  private async send(request: unknown, body?: AsyncIterable<Buffer>): Promise<void> {
    if (!body) return this.writer.json(request);
    // frames go out gathered up to 64 KiB a write: a small message is one write, request and all
    let frames: { type: 'J' | 'D' | 'E'; payload: Buffer }[] = [{ type: 'J', payload: Buffer.from(JSON.stringify(request)) }];
    let size = frames[0]!.payload.length;
    for await (const chunk of body) {
      // a connection that ended meanwhile takes no more writes (one would wait for a drain that never comes)
      if (this.dead) throw this.dead;
      frames.push({ type: 'D', payload: chunk });
      size += chunk.length;
      if (size >= 64 * 1024) { await this.writer.batch(frames); frames = []; size = 0; }
    }
    if (this.dead) throw this.dead;
    frames.push({ type: 'E', payload: Buffer.alloc(0) });
    await this.writer.batch(frames);
  }

  close(): void { this.socket.destroy(); }

  private onData(d: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    for (;;) {
      let parsed;
      try { parsed = parseFrame(this.buf, this.limits); } catch (e) { return this.protocolError((e as Error).message); }
      if (!parsed) return;
      this.buf = parsed.rest;
      if (parsed.frame.type !== 'J') return this.protocolError(`unexpected ${parsed.frame.type} frame`);
      const p = this.pending.shift();
      if (!p) return this.protocolError('a reply nobody asked for');
      clearTimeout(p.timer);
      p.resolve(parsed.frame.json);
    }
  }

  private protocolError(problem: string): void {
    this.socket.destroy(new Error(`${this.label}: ${problem}`));
  }

  private fail(e: Error): void {
    const first = !this.dead;
    if (first) this.dead = e;
    this.socket.destroy();
    for (const p of this.pending.splice(0)) { clearTimeout(p.timer); p.reject(this.dead!); }
    if (first) this.onDead?.(this.dead!);
  }
}

/** One request, one JSON reply, then the connection closes: triggers and small queries (cleanup, the CLI). */
export async function requestJson<Reply = any>(socketPath: string, request: unknown, timeoutMs = 10000): Promise<Reply> {
  const conn = await RequestConnection.connect(socketPath, timeoutMs);
  try {
    return await conn.request<Reply>(request, timeoutMs);
  } finally {
    conn.close();
  }
}
