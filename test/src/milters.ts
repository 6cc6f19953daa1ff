/**
 * Real milters for tests: OpenDKIM, rspamd (proxy worker in milter mode) and
 * spamass-milter (in front of a real spamd), each started on a free loopback
 * port under a temp directory of its own, as an unprivileged account (nobody
 * when the tests run as root), with the configuration of docs/milter.md:
 * only paths, ports, the test domain and the test DNS server are put in.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, ChildProcess } from 'node:child_process';
import { IS_ROOT, freePort, requireTool, run, tempDir, waitFor } from './harness.js';
import { docBlock, substitute } from './dovecot.js';
import { Spamd } from './spamd.js';

/** A fenced block of docs/milter.md (see docBlock). */
export const milterDoc = (name: string): string => docBlock(name, 'milter.md');

/** `name = value` settings of docs/milter.md's main.cf block, as a record for Instance.create / config set. */
export function milterMainCf(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const l of milterDoc('main.cf').split('\n')) {
    const m = /^(\w+)\s*=\s*(.*)$/.exec(l);
    if (m) out[m[1]] = m[2];
  }
  return out;
}

/** The account the milters run as: nobody when we are root, else ourselves. */
function account(): { uid: number; gid: number; name: string } {
  if (!IS_ROOT) return { uid: process.getuid!(), gid: process.getgid!(), name: os.userInfo().username };
  return { uid: 65534, gid: 65534, name: 'nobody' };
}

function chownTree(dir: string, uid: number, gid: number): void {
  fs.chownSync(dir, uid, gid);
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) chownTree(p, uid, gid);
    else fs.chownSync(p, uid, gid);
  }
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    const done = (ok: boolean) => { s.destroy(); resolve(ok); };
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
    s.setTimeout(2000, () => done(false));
  });
}

/** One milter process: started in the foreground, its output kept for assertion messages, stopped with TERM then KILL. */
export class MilterProcess {
  private output = '';
  private readonly exited: Promise<void>;

  protected constructor(readonly name: string, readonly dir: string, readonly port: number, private readonly child: ChildProcess,
    private readonly logFile?: string) {
    child.stdout?.on('data', (d) => { this.output = (this.output + d).slice(-8000); });
    child.stderr?.on('data', (d) => { this.output = (this.output + d).slice(-8000); });
    this.exited = new Promise((r) => child.once('exit', () => r()));
  }

  /** Postern's name for it: a smtpd_milters / non_smtpd_milters entry. */
  get address(): string { return `inet:127.0.0.1:${this.port}`; }

  /** What it printed, and its own log file when it has one. */
  log(): string {
    let file = '';
    if (this.logFile) try { file = fs.readFileSync(this.logFile, 'utf8').slice(-8000); } catch { /* not yet */ }
    return `${this.output}${file}`;
  }

  protected static launch(cmd: string, args: string[], dir: string): ChildProcess {
    const a = account();
    // its own process group: rspamd's workers and spamass-milter's spamc are stopped with it
    return spawn(cmd, args, { cwd: dir, uid: a.uid, gid: a.gid, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  }

  /** Bounded wait until the port accepts; a process that exits first is a failure with its output. */
  protected async ready(timeoutMs: number): Promise<void> {
    try {
      const state = await waitFor(`${this.name} to listen on 127.0.0.1:${this.port}`, async () => {
        if (this.child.exitCode !== null || this.child.signalCode !== null) return 'exited';
        return (await accepts(this.port)) && 'up';
      }, timeoutMs, 250);
      if (state === 'exited') throw new Error(`${this.name} exited at start (${this.child.exitCode ?? this.child.signalCode})`);
    } catch (e) {
      const log = this.log();
      await this.stop();
      throw new Error(`${(e as Error).message}\n${this.name}'s output:\n${log}`);
    }
  }

  async stop(): Promise<void> {
    const c = this.child;
    const group = c.pid!;
    const alive = () => { try { process.kill(-group, 0); return true; } catch { return false; } };
    if (alive()) {
      try { process.kill(-group, 'SIGTERM'); } catch { /* gone */ }
      await waitFor(`${this.name} (process group ${group}) to exit`, () => !alive(), 10000)
        .catch(() => { try { process.kill(-group, 'SIGKILL'); } catch { /* gone */ } });
    }
    if (c.exitCode === null && c.signalCode === null) await this.exited;
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** OpenDKIM signing for one domain with a key made here by opendkim-genkey. */
export class OpenDkim extends MilterProcess {
  /** The public key record to publish: NAME TXT VALUE. */
  txt!: { name: string; value: string };

  static async start(o: { domain: string; selector?: string }): Promise<OpenDkim> {
    const opendkim = requireTool('opendkim');
    const genkey = requireTool('opendkim-genkey');
    const selector = o.selector ?? 'mail';
    // OpenDKIM refuses a configuration or key below a directory others may write (/tmp):
    // as root, a directory in /run (root's, 0755); else one in our home
    const dir = fs.mkdtempSync(path.join(IS_ROOT ? '/run' : os.homedir(), 'postern-opendkim-'));
    fs.chmodSync(dir, 0o755);
    const keys = path.join(dir, 'keys');
    fs.mkdirSync(keys);
    const g = run(genkey, ['-D', keys, '-d', o.domain, '-s', selector]);
    if (g.code !== 0) throw new Error(`opendkim-genkey: ${g.stderr}`);
    const port = await freePort();
    const conf = substitute(milterDoc('opendkim.conf'), [
      ['Syslog                  yes', 'Syslog                  no'],
      ['inet:8891@127.0.0.1', `inet:${port}@127.0.0.1`],
      ['/run/opendkim/opendkim.pid', path.join(dir, 'opendkim.pid')],
      ['UserID                  opendkim', `UserID                  ${account().name}`],
      [`/etc/opendkim/keys/example.org/mail.private`, path.join(keys, `${selector}.private`)],
      ['Selector                mail', `Selector                ${selector}`],
      ['example.org', o.domain],
    ], 'docs/milter.md opendkim.conf');
    fs.writeFileSync(path.join(dir, 'opendkim.conf'), conf);
    chownTree(dir, account().uid, account().gid);
    fs.chmodSync(path.join(keys, `${selector}.private`), 0o600);
    const child = MilterProcess.launch(opendkim, ['-f', '-x', path.join(dir, 'opendkim.conf')], dir);
    const m = new OpenDkim('opendkim', dir, port, child);
    // mail.txt: `mail._domainkey IN TXT ( "v=DKIM1; h=sha256; k=rsa; " "p=..." ) ; comment`
    const txt = fs.readFileSync(path.join(keys, `${selector}.txt`), 'utf8');
    m.txt = { name: `${selector}._domainkey.${o.domain}`, value: [...txt.matchAll(/"([^"]*)"/g)].map((x) => x[1]).join('') };
    await m.ready(30000);
    return m;
  }
}

/** rspamd's proxy worker in milter mode, self-scanning, no Redis, DNS asked of the test DNS server only. */
export class Rspamd extends MilterProcess {
  static async start(o: { dns: string }): Promise<Rspamd> {
    const rspamd = requireTool('rspamd');
    const dir = tempDir('rspamd');
    const local = path.join(dir, 'local.d');
    for (const d of [local, path.join(dir, 'db'), path.join(dir, 'run'), path.join(dir, 'log')]) fs.mkdirSync(d);
    const port = await freePort();
    const controller = await freePort();
    const put = (file: string, text: string) => fs.writeFileSync(path.join(local, file), text);
    put('worker-proxy.inc', substitute(milterDoc('worker-proxy.inc'), [['127.0.0.1:11332', `127.0.0.1:${port}`]], 'docs/milter.md worker-proxy.inc'));
    put('worker-normal.inc', milterDoc('worker-normal.inc'));
    put('worker-controller.inc', substitute(milterDoc('worker-controller.inc'), [['127.0.0.1:11334', `127.0.0.1:${controller}`]], 'docs/milter.md worker-controller.inc'));
    put('milter_headers.conf', milterDoc('milter_headers.conf'));
    put('options.inc', substitute(milterDoc('options.inc'), [['127.0.0.1:53', o.dns]], 'docs/milter.md options.inc'));
    chownTree(dir, account().uid, account().gid);
    // Debian's /etc/rspamd with our local.d, and every place it writes under the temp directory
    const child = MilterProcess.launch(rspamd, ['-f', '-c', '/etc/rspamd/rspamd.conf', `--var=LOCAL_CONFDIR=${dir}`,
      `--var=DBDIR=${dir}/db`, `--var=RUNDIR=${dir}/run`, `--var=LOGDIR=${dir}/log`], dir);
    const m = new Rspamd('rspamd', dir, port, child, path.join(dir, 'log', 'rspamd.log'));
    // it loads its Lua modules and compiles the public suffix list first: over a minute on a busy machine
    await m.ready(300000);
    await waitFor('rspamd\'s proxy worker to start', () => /starting rspamd_proxy process/.test(m.log()), 60000, 250)
      .catch(async (e) => { const log = m.log(); await m.stop(); throw new Error(`${(e as Error).message}\n${log}`); });
    return m;
  }
}

/** spamass-milter asking a spamd started for it (stopped with it). */
export class SpamassMilter extends MilterProcess {
  private spamd?: Spamd;

  static async start(): Promise<SpamassMilter> {
    const bin = requireTool('spamass-milter');
    requireTool('spamc');
    const spamd = await Spamd.start();
    const dir = tempDir('spamass');
    chownTree(dir, account().uid, account().gid);
    const port = await freePort();
    const line = substitute(milterDoc('spamass-milter').trim(), [
      ['inet:8893@127.0.0.1', `inet:${port}@127.0.0.1`],
      ['-p 783', `-p ${spamd.port}`],
    ], 'docs/milter.md spamass-milter');
    const [cmd, ...args] = line.split(/\s+/);
    if (cmd !== 'spamass-milter') throw new Error(`docs/milter.md spamass-milter block runs ${cmd}`);
    // -P: a pid file in our directory, so stop() finds what it started
    const child = MilterProcess.launch(bin, ['-P', path.join(dir, 'spamass.pid'), ...args], dir);
    const m = new SpamassMilter('spamass-milter', dir, port, child);
    m.spamd = spamd;
    try {
      await m.ready(30000);
    } catch (e) {
      await spamd.stop();
      throw e;
    }
    return m;
  }

  override async stop(): Promise<void> {
    await super.stop();
    await this.spamd?.stop();
  }
}
