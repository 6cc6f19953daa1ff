/**
 * Where log lines go: every service writes JSON lines to its standard output,
 * master gathers them here and writes them to the terminal (foreground) or to
 * maillog_file, which it reopens on SIGHUP so logrotate can move it away.
 *
 * master runs as root and its children do not: nothing a child writes may make
 * master buffer without limit, or log in another service's name. Lines are cut
 * at LOG_LINE_LIMIT as they stream (never gathered whole), and every line is
 * written with the service and pid master started, whatever the child claimed.
 */
import * as fs from 'node:fs';
import { Readable } from 'node:stream';
import { ChildProcess } from 'node:child_process';

/** Longest line master takes from a child; the rest of a longer line is dropped. */
export const LOG_LINE_LIMIT = 64 * 1024;

/**
 * Splits a byte stream into lines of at most `limit` bytes without holding
 * more than `limit` bytes: a longer line is handed on as its first `limit`
 * bytes, marked cut, and the rest of it up to the next newline is discarded.
 */
export class LineSplitter {
  private parts: Buffer[] = [];
  private size = 0;
  private discarding = false;
  /** Bytes of the current overlong line dropped so far (for the log). */
  private dropped = 0;

  constructor(private readonly limit: number, private readonly emit: (line: Buffer, cut: boolean) => void,
    private readonly cutEnded: (dropped: number) => void = () => undefined) {}

  push(chunk: Buffer): void {
    let start = 0;
    while (start < chunk.length) {
      const nl = chunk.indexOf(10, start);
      const end = nl < 0 ? chunk.length : nl;
      if (this.discarding) {
        this.dropped += end - start;
        if (nl < 0) return;
        this.discarding = false;
        this.cutEnded(this.dropped);
        this.dropped = 0;
        start = nl + 1;
        continue;
      }
      const room = this.limit - this.size;
      if (end - start > room) {
        this.take(chunk.subarray(start, start + room));
        this.flush(true);
        this.discarding = true;
        start += room;
        continue;
      }
      this.take(chunk.subarray(start, end));
      if (nl < 0) return;
      this.flush(false);
      start = nl + 1;
    }
  }

  /** The stream ended: a last line without a newline still counts. */
  end(): void {
    if (this.discarding) { this.discarding = false; this.cutEnded(this.dropped); this.dropped = 0; }
    if (this.size) this.flush(false);
  }

  private take(b: Buffer): void {
    if (!b.length) return;
    // a copy, so a small remainder does not keep a whole 64 KiB read buffer alive
    this.parts.push(Buffer.from(b));
    this.size += b.length;
  }

  private flush(cut: boolean): void {
    const line = Buffer.concat(this.parts, this.size);
    this.parts = [];
    this.size = 0;
    this.emit(line, cut);
  }
}

/** A string whose JSON form fits in `max` characters (escaping can make it longer than its bytes). */
function fitJson(s: string, max: number): string {
  for (let i = 0; i < 20 && JSON.stringify(s).length > max; i++) s = s.slice(0, Math.floor(s.length * 0.75));
  return s;
}

export class LogSink {
  private out: NodeJS.WritableStream;
  /** Child streams paused until the log output drains. */
  private paused = new Set<Readable>();
  /** Sees every line written (master's feed to the metrics service); must not block or throw. */
  tap?: (line: string) => void;

  constructor(private file: string | null) {
    this.out = this.open();
  }

  private open(): NodeJS.WritableStream {
    const out = this.file ? fs.createWriteStream(this.file, { flags: 'a', mode: 0o640 }) : process.stdout;
    out.on('drain', () => this.resumeAll());
    return out;
  }

  private resumeAll(): void {
    for (const s of this.paused) s.resume();
    this.paused.clear();
  }

  reopen(): void {
    if (!this.file) return;
    const old = this.out;
    this.out = this.open();
    (old as fs.WriteStream).end();
    // the old stream's drain will not come: whoever waited for it may write to the new file
    this.resumeAll();
  }

  close(): void {
    if (this.file) (this.out as fs.WriteStream).end();
  }

  /** Writes one line; false when the output is backed up (the caller should wait for it). */
  write(line: string): boolean {
    const ok = this.out.write(line.endsWith('\n') ? line : line + '\n');
    this.tap?.(line);
    return ok;
  }

  event(service: string, fields: Record<string, unknown>, msg: string): void {
    const { level = 'info', ...rest } = fields;
    this.write(JSON.stringify({ level, time: new Date().toISOString(), service, pid: process.pid, ...rest, msg }));
  }

  /**
   * Collect a child's output. `service` is the name master knows the child by
   * (`smtpd[127.0.0.1:25]`, `cleanup`): each JSON line is written with it and
   * the child's pid, the child's own claim kept as claimed_service/claimed_pid
   * when it differs. Anything else (a crash trace) is wrapped in a JSON line.
   */
  attach(child: ChildProcess, service: string): void {
    const pid = child.pid;
    const wrap = (level: string, extra: Record<string, unknown>, text: string) =>
      JSON.stringify({ level, time: new Date().toISOString(), service, pid, ...extra, msg: fitJson(text, LOG_LINE_LIMIT - 512) });

    const collect = (stream: Readable | null, stderr: boolean) => {
      if (!stream) return;
      const put = (line: string) => {
        if (!this.write(line) && !this.paused.has(stream)) {
          // master must not queue without limit either: let the child wait
          this.paused.add(stream);
          stream.pause();
        }
      };
      const splitter = new LineSplitter(LOG_LINE_LIMIT, (buf, cut) => {
        const text = buf.toString('utf8');
        if (cut) {
          put(wrap('warn', { truncated: true, ...(stderr ? { stderr: true } : {}) }, text));
          return;
        }
        if (!stderr && text.startsWith('{')) {
          let entry: unknown;
          try { entry = JSON.parse(text); } catch { entry = undefined; }
          if (entry && typeof entry === 'object' && !Array.isArray(entry)) {
            const e = entry as Record<string, unknown>;
            const claims: Record<string, unknown> = {};
            if (e.service !== undefined && e.service !== service) claims.claimed_service = e.service;
            if (e.pid !== undefined && e.pid !== pid) claims.claimed_pid = e.pid;
            put(JSON.stringify({ ...e, service, pid, ...claims }));
            return;
          }
        }
        if (text.trim()) put(wrap(stderr ? 'error' : 'info', stderr ? { stderr: true } : {}, text));
      }, (dropped) => {
        put(wrap('warn', { truncated: true, dropped_bytes: dropped }, `log line longer than ${LOG_LINE_LIMIT} bytes: ${dropped} bytes dropped`));
      });
      stream.on('data', (chunk: Buffer) => splitter.push(chunk));
      stream.on('end', () => { splitter.end(); this.paused.delete(stream); });
      stream.on('error', () => undefined);
    };
    collect(child.stdout, false);
    collect(child.stderr, true);
  }
}
