/**
 * master's feed to the metrics service: every log line, as written, over the
 * metrics service's Unix socket (private/metrics, root-only). master parses
 * nothing here; the metrics service does. The feed never blocks master and
 * never grows without bound: while the socket is down or full, lines wait in a
 * bounded queue, and beyond it they are dropped and counted; the count is sent
 * when the link is back.
 *
 * Wire: one record per line. `L{json}` is a log line; `D<n>` says n lines were
 * dropped. A log line cannot start a record of its own: services' output is
 * split into lines before it gets here.
 */
import * as net from 'node:net';

/** batchMs: lines pushed within it are sent in one write (master's log sink writes at the same pace). */
export interface FeedLimits { lines: number; bytes: number; lineBytes: number; retryMs: number; batchMs?: number }

export const DEFAULT_FEED_LIMITS: FeedLimits = { lines: 10000, bytes: 4 * 1024 * 1024, lineBytes: 64 * 1024, retryMs: 1000, batchMs: 10 };

export class MetricsFeed {
  private sock: net.Socket | null = null;
  private connected = false;
  /** The socket's own buffer is full: queue here (bounded) until 'drain'. */
  private blocked = false;
  private queue: string[] = [];
  private queuedBytes = 0;
  private dropped = 0;
  private timer?: NodeJS.Timeout;
  private stopped = false;
  /** A flush is due within batchMs. */
  private scheduled = false;

  constructor(private socketPath: string, private limits: FeedLimits = DEFAULT_FEED_LIMITS) {}

  start(): void { this.connect(); }

  push(line: string): void {
    if (this.stopped) return;
    const rec = `L${line.endsWith('\n') ? line.slice(0, -1) : line}\n`;
    if (rec.length > this.limits.lineBytes) { this.dropped++; return; }
    if (this.queue.length >= this.limits.lines || this.queuedBytes + rec.length > this.limits.bytes) { this.dropped++; return; }
    this.queue.push(rec);
    this.queuedBytes += rec.length;
    // lines go out together, at most one write per batchMs (a system call per line cost master more than the rest of relaying it)
    if (!this.scheduled) { this.scheduled = true; setTimeout(() => { this.scheduled = false; this.flush(); }, this.limits.batchMs ?? 10).unref(); }
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.sock?.destroy();
    this.queue = [];
  }

  private send(rec: string): void {
    if (!this.sock!.write(rec)) this.blocked = true;
  }

  private flush(): void {
    if (this.dropped && this.connected && !this.blocked) {
      this.send(`D${this.dropped}\n`);
      this.dropped = 0;
    }
    if (this.connected && !this.blocked && this.queue.length) {
      // all at once: the queue is bounded (limits.bytes), and the socket takes what it can
      const text = this.queue.length === 1 ? this.queue[0] : this.queue.join('');
      this.queue = [];
      this.queuedBytes = 0;
      this.send(text);
    }
  }

  private connect(): void {
    if (this.stopped) return;
    const sock = net.createConnection(this.socketPath);
    this.sock = sock;
    sock.on('connect', () => { this.connected = true; this.blocked = false; this.flush(); });
    sock.on('drain', () => { this.blocked = false; this.flush(); });
    sock.on('data', () => undefined); // the service never answers
    sock.on('error', () => undefined); // 'close' follows
    sock.on('close', () => {
      if (this.sock !== sock) return;
      this.sock = null;
      this.connected = false;
      if (this.stopped) return;
      // the service is starting or restarting: try again soon, never in a tight loop
      this.timer = setTimeout(() => { this.timer = undefined; this.connect(); }, this.limits.retryMs);
      this.timer.unref();
    });
  }
}
