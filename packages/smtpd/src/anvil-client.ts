/**
 * smtpd's link to anvil: one Unix socket connection kept open, requests and
 * replies as JSON frames in order (common's RequestConnection). anvil being
 * down or slow must never stop mail: a request then answers null (the caller
 * allows the client), the outage is logged once, and the link is tried again
 * at most once a second.
 */
import { RequestConnection, Logger, AnvilRequest, AnvilReply } from '@postern/common';

const REQUEST_TIMEOUT_MS = 2000;
const RETRY_MS = 1000;

export class AnvilClient {
  private conn: RequestConnection | null = null;
  private connecting: Promise<RequestConnection | null> | null = null;
  private failedAt = 0;
  private down = false;
  private closed = false;

  constructor(private readonly socketPath: string, private readonly log: Logger) {}

  /** anvil's reply, or null when anvil cannot be asked (no limit applies then). */
  async request(req: AnvilRequest): Promise<AnvilReply | null> {
    if (this.closed) return null;
    const conn = await this.connection();
    if (!conn) return null;
    // a failure ends the link (onDead logs it): every request in flight answers null
    return conn.request<AnvilReply>(req, REQUEST_TIMEOUT_MS).catch(() => null);
  }

  private connection(): Promise<RequestConnection | null> {
    if (this.conn) return Promise.resolve(this.conn);
    if (this.connecting) return this.connecting;
    if (Date.now() - this.failedAt < RETRY_MS) return Promise.resolve(null);
    this.connecting = RequestConnection.connect(this.socketPath, REQUEST_TIMEOUT_MS).then((conn) => {
      conn.onDead = (e) => {
        if (this.conn === conn) this.conn = null;
        this.markDown(e.message);
      };
      this.conn = conn;
      if (this.down) this.log.info({ socket: this.socketPath }, 'anvil is reachable again: client limits apply');
      this.down = false;
      return conn;
    }, (e) => {
      this.markDown((e as Error).message);
      return null;
    }).finally(() => { this.connecting = null; });
    return this.connecting;
  }

  private markDown(why: string): void {
    this.failedAt = Date.now();
    if (this.closed || this.down) return;
    this.down = true;
    this.log.warn({ socket: this.socketPath, err: why }, 'anvil is not reachable: client connection and rate limits are not enforced until it is');
  }

  close(): void {
    this.closed = true;
    const conn = this.conn;
    this.conn = null;
    conn?.close();
  }
}
