/**
 * Where log lines go: every service writes JSON lines to its standard output,
 * master gathers them here and writes them to the terminal (foreground) or to
 * maillog_file, which it reopens on SIGHUP so logrotate can move it away.
 *
 * master runs as root and its children do not: nothing a child writes may make
 * master buffer without limit, or log in another service's name. Lines are cut
 * at LOG_LINE_LIMIT as they stream (never gathered whole), and every line is
 * written with the service and pid master started, whatever the child claimed.
 *
 * Cost (bench/README.md, "Performance"): every message makes about six lines,
 * so master's share is per line, and mostly system calls, not JSON. Children are
 * read, and the log and the metrics feed written, at most once per
 * LOG_READ_INTERVAL_MS, each time with all the lines gathered since;
 * a line that already carries exactly the right service and pid, once each, is
 * forwarded as the child wrote it instead of being parsed into an object and
 * serialised again.
 */
import * as fs from 'node:fs';
import { Readable } from 'node:stream';
import { ChildProcess } from 'node:child_process';

/** Longest line master takes from a child; the rest of a longer line is dropped. */
export const LOG_LINE_LIMIT = 64 * 1024;

/** How often master reads a child's output, and writes the log, at most (ms); see attach(). */
export const LOG_READ_INTERVAL_MS = 10;

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

/** `needle` occurs exactly once in `text`. */
function once(text: string, needle: string): boolean {
  const at = text.indexOf(needle);
  return at >= 0 && text.indexOf(needle, at + needle.length) < 0;
}

export class LogSink {
  private out: NodeJS.WritableStream;
  /** Child streams paused until the log output drains. */
  private paused = new Set<Readable>();
  /** Sees every line written (master's feed to the metrics service); must not block or throw. */
  tap?: (line: string) => void;
  /** Lines written together by flush(). */
  private pending = '';
  private scheduled = false;
  /** The output's buffer is full: children are paused until its 'drain'. */
  private backedUp = false;

  constructor(private file: string | null) {
    this.out = this.open();
  }

  private open(): NodeJS.WritableStream {
    const out = this.file ? fs.createWriteStream(this.file, { flags: 'a', mode: 0o640 }) : process.stdout;
    out.on('drain', () => { if (this.out === out) this.backedUp = false; this.resumeAll(); });
    return out;
  }

  private resumeAll(): void {
    for (const s of this.paused) s.resume();
    this.paused.clear();
  }

  reopen(): void {
    if (!this.file) return;
    this.flush();
    const old = this.out;
    this.backedUp = false;
    this.out = this.open();
    (old as fs.WriteStream).end();
    // the old stream's drain will not come: whoever waited for it may write to the new file
    this.resumeAll();
  }

  close(): void {
    this.flush();
    if (this.file) (this.out as fs.WriteStream).end();
  }

  /**
   * Writes one line; false when the output is backed up (the caller should wait
   * for it). The line goes out with the others of the next LOG_READ_INTERVAL_MS,
   * in one write: a system call and thread-pool round trip per interval, not per line.
   */
  write(line: string): boolean {
    this.pending += line.endsWith('\n') ? line : line + '\n';
    if (!this.scheduled) { this.scheduled = true; setTimeout(() => this.flush(), LOG_READ_INTERVAL_MS).unref(); }
    this.tap?.(line);
    return !this.backedUp;
  }

  /** Writes what this turn gathered. */
  private flush(): void {
    this.scheduled = false;
    if (!this.pending) return;
    const text = this.pending;
    this.pending = '';
    if (!this.out.write(text)) this.backedUp = true;
  }

  /** master's own lines: rare, and one may be the last before exit, so written at once. */
  event(service: string, fields: Record<string, unknown>, msg: string): void {
    const { level = 'info', ...rest } = fields;
    this.write(JSON.stringify({ level, time: new Date().toISOString(), service, pid: process.pid, ...rest, msg }));
    this.flush();
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
            // What our services write (common/util/log.ts) already carries both fields: forward
            // it as written. Only when each key occurs once in the text, so that no reader,
            // whichever duplicate it believes, sees another name; a key spelled with a
            // \u escape, or written twice, takes the re-serialising path below.
            if (e.service === service && e.pid === pid && once(text, '"service"') && once(text, '"pid"') && !text.includes('\\u')) {
              put(text);
              return;
            }
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
      // Read each child at most once per LOG_READ_INTERVAL_MS: under load a read then
      // takes many lines at once (a pipe read and its event cost master more than the
      // line's relaying); the pipe holds what comes in between, and a child never waits
      // on it (its log writes are asynchronous), so a line is at most that much later.
      let resting = false;
      stream.on('data', (chunk: Buffer) => {
        splitter.push(chunk);
        if (resting) return;
        resting = true;
        stream.pause();
        setTimeout(() => {
          resting = false;
          if (!this.paused.has(stream)) stream.resume();
        }, LOG_READ_INTERVAL_MS).unref();
      });
      stream.on('end', () => { splitter.end(); this.paused.delete(stream); });
      stream.on('error', () => undefined);
    };
    collect(child.stdout, false);
    collect(child.stderr, true);
  }
}
