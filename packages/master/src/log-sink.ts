/**
 * Where log lines go: every service writes JSON lines to its standard output,
 * master gathers them here and writes them to the terminal (foreground) or to
 * maillog_file, which it reopens on SIGHUP so logrotate can move it away.
 */
import * as fs from 'node:fs';
import * as readline from 'node:readline';
import { ChildProcess } from 'node:child_process';

export class LogSink {
  private out: NodeJS.WritableStream;
  /** Sees every line written (master's feed to the metrics service); must not block or throw. */
  tap?: (line: string) => void;

  constructor(private file: string | null) {
    this.out = this.open();
  }

  private open(): NodeJS.WritableStream {
    if (!this.file) return process.stdout;
    return fs.createWriteStream(this.file, { flags: 'a', mode: 0o640 });
  }

  reopen(): void {
    if (!this.file) return;
    const old = this.out;
    this.out = this.open();
    (old as fs.WriteStream).end();
  }

  close(): void {
    if (this.file) (this.out as fs.WriteStream).end();
  }

  write(line: string): void {
    this.out.write(line.endsWith('\n') ? line : line + '\n');
    this.tap?.(line);
  }

  event(service: string, fields: Record<string, unknown>, msg: string): void {
    const { level = 'info', ...rest } = fields;
    this.write(JSON.stringify({ level, time: new Date().toISOString(), service, pid: process.pid, ...rest, msg }));
  }

  /** Collect a child's output: JSON lines pass through, anything else (a crash trace) is wrapped. */
  attach(child: ChildProcess, service: string): void {
    if (child.stdout) {
      readline.createInterface({ input: child.stdout, crlfDelay: Infinity }).on('line', (line) => {
        if (line.startsWith('{')) this.write(line);
        else if (line.trim()) this.event(service, { level: 'info', child: child.pid }, line);
      });
    }
    if (child.stderr) {
      readline.createInterface({ input: child.stderr, crlfDelay: Infinity }).on('line', (line) => {
        if (line.trim()) this.event(service, { level: 'error', child: child.pid, stderr: true }, line);
      });
    }
  }
}
