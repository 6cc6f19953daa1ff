/**
 * smtpd's link to anvil: one Unix socket connection kept open, requests and
 * replies as JSON frames in order. anvil being down or slow must never stop
 * mail: a request then answers null (the caller allows the client), the outage
 * is logged once, and the link is tried again at most once a second.
 */
import * as net from 'node:net';
import { connectUnix, FrameReader, FrameWriter, Logger } from '@postern/common';

const REQUEST_TIMEOUT_MS = 2000;
const RETRY_MS = 1000;

interface Pending { resolve: (reply: any) => void; timer: NodeJS.Timeout }

export class AnvilClient {
  private sock: net.Socket | null = null;
  private writer: FrameWriter | null = null;
  private connecting: Promise<boolean> | null = null;
  private pending: Pending[] = [];
  private failedAt = 0;
  private down = false;
  private closed = false;

  constructor(private readonly socketPath: string, private readonly log: Logger) {}

  /** anvil's reply, or null when anvil cannot be asked (no limit applies then). */
  async request(req: Record<string, unknown>): Promise<any | null> {
    if (this.closed || !(await this.ensureConnected())) return null;
    const writer = this.writer!;
    return new Promise((resolve) => {
      const entry: Pending = {
        resolve,
        timer: setTimeout(() => this.fail(`no reply within ${REQUEST_TIMEOUT_MS} ms`), REQUEST_TIMEOUT_MS),
      };
      this.pending.push(entry);
      writer.json(req).catch((e) => this.fail(`write: ${(e as Error).message}`));
    });
  }

  private ensureConnected(): Promise<boolean> {
    if (this.sock) return Promise.resolve(true);
    if (this.connecting) return this.connecting;
    if (Date.now() - this.failedAt < RETRY_MS) return Promise.resolve(false);
    this.connecting = connectUnix(this.socketPath, REQUEST_TIMEOUT_MS).then((sock) => {
      sock.on('error', () => undefined);
      this.sock = sock;
      this.writer = new FrameWriter(sock);
      void this.readReplies(sock);
      if (this.down) this.log.info({ socket: this.socketPath }, 'anvil is reachable again: client limits apply');
      this.down = false;
      return true;
    }, (e) => {
      this.markDown((e as Error).message);
      return false;
    }).finally(() => { this.connecting = null; });
    return this.connecting;
  }

  private async readReplies(sock: net.Socket): Promise<void> {
    const reader = new FrameReader(sock);
    try {
      for (;;) {
        const f = await reader.next();
        if (!f) break;
        const p = this.pending.shift();
        if (!p) throw new Error('reply without a request');
        clearTimeout(p.timer);
        p.resolve(f.type === 'J' ? f.json : null);
      }
      if (sock === this.sock) this.fail('anvil closed the connection');
    } catch (e) {
      if (sock === this.sock) this.fail((e as Error).message);
    }
  }

  /** Drop the link; every request in flight answers null. */
  private fail(why: string): void {
    const sock = this.sock;
    this.sock = null;
    this.writer = null;
    sock?.destroy();
    for (const p of this.pending.splice(0)) { clearTimeout(p.timer); p.resolve(null); }
    this.markDown(why);
  }

  private markDown(why: string): void {
    this.failedAt = Date.now();
    if (this.closed || this.down) return;
    this.down = true;
    this.log.warn({ socket: this.socketPath, err: why }, 'anvil is not reachable: client connection and rate limits are not enforced until it is');
  }

  close(): void {
    this.closed = true;
    const sock = this.sock;
    this.sock = null;
    sock?.destroy();
    for (const p of this.pending.splice(0)) { clearTimeout(p.timer); p.resolve(null); }
  }
}
