/**
 * SpamAssassin's own spamd (Debian spamd) for tests, on a free loopback port with
 * network tests off: used by spamd.test.ts (smtpd asks it directly) and by
 * milters.ts (spamass-milter in front of it).
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { spawn, ChildProcess } from 'node:child_process';
import { IS_ROOT, freePort, requireTool, tempDir, waitFor } from './harness.js';

/** spamd on 127.0.0.1:port with Debian's rules, local tests only, no Bayes, no user configs. */
export class Spamd {
  private child?: ChildProcess;
  private stderr = '';
  private constructor(readonly port: number, private readonly dir: string) {}

  static async start(): Promise<Spamd> {
    const bin = requireTool('spamd');
    const dir = tempDir('spamd');
    // the site config: Debian's plugin loads (*.pre), and a local.cf without Bayes so nothing is learnt or stored
    for (const f of fs.readdirSync('/etc/spamassassin').filter((n) => n.endsWith('.pre'))) {
      fs.copyFileSync(path.join('/etc/spamassassin', f), path.join(dir, f));
    }
    fs.writeFileSync(path.join(dir, 'local.cf'), 'use_bayes 0\nbayes_auto_learn 0\n');
    const s = new Spamd(await freePort(), dir);
    s.child = spawn(bin, ['-L', '-x', `--listen=127.0.0.1:${s.port}`, `--siteconfigpath=${dir}`, '--syslog=stderr',
      '--max-children=2', ...(IS_ROOT ? ['-u', 'nobody'] : [])], { stdio: ['ignore', 'ignore', 'pipe'] });
    s.child.stderr!.on('data', (d) => { s.stderr = (s.stderr + d.toString()).slice(-8000); });
    // it compiles its rules first: ready when it answers PING
    await waitFor('spamd to answer PING', async () => {
      if (s.child!.exitCode !== null) throw new Error(`spamd exited ${s.child!.exitCode}: ${s.stderr}`);
      return (await ping(s.port)).startsWith('SPAMD/1.5 0 PONG');
    }, 90000, 250);
    return s;
  }

  async stop(): Promise<void> {
    const c = this.child;
    if (c && c.exitCode === null && c.signalCode === null) {
      const exited = new Promise<void>((r) => c.once('exit', () => r()));
      c.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 15000))]);
      if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

function ping(port: number): Promise<string> {
  return new Promise((resolve) => {
    const sock = net.connect(port, '127.0.0.1');
    let got = '';
    const timer = setTimeout(() => sock.destroy(), 5000);
    sock.on('connect', () => sock.write('PING SPAMC/1.5\r\n\r\n'));
    sock.on('data', (d) => { got += d.toString(); });
    sock.on('error', () => undefined);
    sock.on('close', () => { clearTimeout(timer); resolve(got); });
  });
}
