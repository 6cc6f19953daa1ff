/**
 * Postfix's smtp-sink as a remote SMTP server for tests: unpacked from the
 * postfix .deb by .ci/postfix-tools (never installed), writing each message
 * it accepts into a directory. `flags` are smtp-sink's own, e.g. `-r RCPT`
 * (4xx to every RCPT) or `-f RCPT` (5xx).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn, ChildProcess } from 'node:child_process';
import { SMTPServer } from 'smtp-server';
import { run, waitFor, tempDir, ROOT } from './harness.js';
import type { KeyPair } from './tls-fixtures.js';

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

/**
 * A receiving SMTP server (smtp-server) that records each transaction's
 * envelope, DSN and REQUIRETLS parameters included: plaintext, or with
 * STARTTLS when given a key pair. `dsn`/`requireTls` false hide the keyword.
 */
export class EnvelopeSink {
  readonly messages: { envelope: any; text: string }[] = [];
  private server: SMTPServer;
  constructor(readonly host: string, readonly port: number, opts: { dsn?: boolean; tls?: KeyPair; requireTls?: boolean }) {
    this.server = new SMTPServer({
      ...(opts.tls ? { key: opts.tls.key, cert: opts.tls.cert, disabledCommands: ['AUTH'] } : { disabledCommands: ['AUTH', 'STARTTLS'] }),
      authOptional: true, logger: false, hideDSN: !opts.dsn, hideREQUIRETLS: !opts.requireTls,
      onData: (stream: any, session: any, cb: () => void) => {
        const chunks: Buffer[] = [];
        stream.on('data', (c: Buffer) => chunks.push(c));
        stream.on('end', () => { this.messages.push({ envelope: JSON.parse(JSON.stringify(session.envelope)), text: Buffer.concat(chunks).toString('utf8') }); cb(); });
      },
    } as any);
    this.server.on('error', () => undefined);
  }
  async start(): Promise<this> { await new Promise<void>((r) => this.server.listen(this.port, this.host, () => r())); return this; }
  got(subject: string) { return this.messages.find((m) => m.text.includes(`Subject: ${subject}`)); }
  async stop(): Promise<void> { await new Promise<void>((r) => this.server.close(() => r())); }
}
