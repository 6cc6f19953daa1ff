/**
 * Postfix's smtp-sink as a remote SMTP server for tests: unpacked from the
 * postfix .deb by .ci/postfix-tools (never installed), writing each message
 * it accepts into a directory. `flags` are smtp-sink's own, e.g. `-r RCPT`
 * (4xx to every RCPT) or `-f RCPT` (5xx).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn, ChildProcess } from 'node:child_process';
import { run, waitFor, tempDir, ROOT } from './harness.js';

/** The directory holding the unpacked smtp-sink and smtp-source. */
export function postfixTools(): string {
  const r = run(path.join(ROOT, '.ci', 'postfix-tools'), []);
  if (r.code !== 0) throw new Error(`.ci/postfix-tools failed: ${r.stderr}`);
  return r.stdout.trim();
}

export class SmtpSink {
  proc!: ChildProcess;
  readonly dumpDir = tempDir('sink');
  constructor(readonly host: string, readonly port: number, readonly flags: string[] = []) {
    fs.chmodSync(this.dumpDir, 0o777);
  }
  async start(): Promise<this> {
    const sbin = postfixTools();
    this.proc = spawn(path.join(sbin, 'smtp-sink'), ['-u', 'nobody', ...this.flags, '-d', `${this.dumpDir}/%Y%m%d%H%M%S.`, `${this.host}:${this.port}`, '50'],
      { env: { ...process.env, LD_LIBRARY_PATH: path.join(sbin, '..', 'lib', 'postfix') }, stdio: 'ignore' });
    await waitFor(`smtp-sink on ${this.host}:${this.port}`, () => run('ss', ['-ltn', `sport = :${this.port}`]).stdout.includes(`${this.host}:${this.port}`), 10000);
    return this;
  }
  received(): string[] {
    return fs.readdirSync(this.dumpDir).map((f) => fs.readFileSync(path.join(this.dumpDir, f), 'latin1'));
  }
  async stop(): Promise<void> {
    if (this.proc && this.proc.exitCode === null) {
      this.proc.kill('SIGTERM');
      await new Promise((r) => this.proc.once('exit', r));
    }
  }
}
