/**
 * A real Dovecot (Debian's dovecot-imapd) for tests: IMAP on a free loopback
 * port, a configuration of its own in a temp directory, users and passwords
 * read from a Postern instance's passwd-file, exactly as an administrator
 * would point Dovecot at it. Started as a child process, stopped by the test.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, ChildProcess } from 'node:child_process';
import { freePort, requireTool, run, tempDir, waitFor, IS_ROOT, ROOT, Instance } from './harness.js';
import { ImapClient } from './imap.js';

export interface DovecotOptions {
  /** The instance's passwd-file (DIR/etc/users), for the minimal IMAP-only configuration. */
  usersFile?: string;
  /**
   * A whole configuration instead (docs/dovecot.md's, see configFromDoc): given
   * Dovecot's temp directory and a free IMAP port; it must log to DIR/dovecot.log.
   */
  config?: (dir: string, imapPort: number) => Promise<string> | string;
}

export class Dovecot {
  private exited: Promise<void>;

  private constructor(readonly dir: string, readonly port: number, private readonly child: ChildProcess) {
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()));
  }

  static async start(o: DovecotOptions): Promise<Dovecot> {
    const dovecot = requireTool('dovecot');
    const dir = tempDir('dovecot');
    const port = await freePort();
    const conf = path.join(dir, 'dovecot.conf');
    if (!o.config && !o.usersFile) throw new Error('Dovecot.start: usersFile or config');
    fs.writeFileSync(conf, o.config ? await o.config(dir, port) : dovecotConf(dir, port, o.usersFile!));
    const child = spawn(dovecot, ['-F', '-c', conf], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout!.on('data', (d) => { output += d; });
    child.stderr!.on('data', (d) => { output += d; });
    const d = new Dovecot(dir, port, child);
    let gone = false;
    void d.exited.then(() => { gone = true; });
    try {
      const state = await waitFor(`dovecot to accept IMAP on 127.0.0.1:${port}`, async () => {
        if (gone) return 'exited';
        const c = await ImapClient.connect(port, '127.0.0.1', 2000);
        await c.logout();
        return 'up';
      }, 15000, 200);
      if (state === 'exited') throw new Error(`dovecot exited at start: ${output}${d.log()}`);
    } catch (e) {
      const log = d.log();
      await d.stop();
      throw new Error(`${(e as Error).message}\ndovecot's log:\n${log}`);
    }
    return d;
  }

  /** Dovecot's own log (log_path), for assertion messages. */
  log(): string {
    try { return fs.readFileSync(path.join(this.dir, 'dovecot.log'), 'utf8'); } catch { return ''; }
  }

  /**
   * SIGTERM, bounded wait, SIGKILL; then wait (bounded) for the master's own
   * processes (auth, lmtp, imap...) to be gone too: they may outlive the master
   * for a moment and still answer a client that is already connected.
   */
  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const children = this.child.pid ? run('ps', ['--ppid', String(this.child.pid), '-o', 'pid=']).stdout.split('\n').map((l) => parseInt(l, 10)).filter((n) => n > 0) : [];
      this.child.kill('SIGTERM');
      const stopped = await Promise.race([this.exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 10000))]);
      if (!stopped) { this.child.kill('SIGKILL'); await this.exited; }
      const alive = (pid: number) => { try { process.kill(pid, 0); return true; } catch { return false; } };
      await waitFor('Dovecot\'s processes to exit', () => !children.some(alive), 10000).catch(() => {
        for (const pid of children.filter(alive)) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
      });
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** The fenced block of docs/PAGE (dovecot.md unless named) opened with "```LANG NAME": the doc is what the tests run. */
export function docBlock(name: string, page = 'dovecot.md'): string {
  const doc = fs.readFileSync(path.join(ROOT, 'docs', page), 'utf8');
  const m = new RegExp('^```\\w+ ' + name.replace(/[.]/g, '\\.') + '\\n([\\s\\S]*?)^```$', 'm').exec(doc);
  if (!m) throw new Error(`docs/${page} has no block "${name}"`);
  return m[1];
}

/** Replace each key of `subs` in `text`; every one must occur (a doc that changed shape fails loudly, never half-applies). */
export function substitute(text: string, subs: [string, string][], what: string): string {
  for (const [from, to] of subs) {
    if (!text.includes(from)) throw new Error(`${what} no longer contains "${from}": update the test's substitutions`);
    text = text.split(from).join(to);
  }
  return text;
}

/** `name = value` lines of a main.cf block, for `postern config set`. */
export function mainCfSettings(block: string): string[] {
  return block.split('\n').filter((l) => /^\w+\s*=/.test(l)).map((l) => l.replace(/\s*=\s*/, '='));
}

/**
 * docs/dovecot.md's dovecot.conf (and optional further blocks) for a Postern
 * instance: its etc/ and spool/ for /etc/postern and /var/spool/postern, Dovecot's
 * temp directory for its own paths, loopback and free ports for the listeners.
 */
export function configFromDoc(o: { etc: string; spool: string; dir: string; imapPort: number; imapsPort: number; extra?: string }): string {
  const conf = substitute(docBlock('dovecot.conf'), [
    ['/etc/postern/', `${o.etc}/`],
    ['/var/spool/postern/', `${o.spool}/`],
    ['/run/dovecot', `${o.dir}/run`],
    ['/var/lib/dovecot', `${o.dir}/state`],
    ['/var/log/dovecot.log', `${o.dir}/dovecot.log`],
    ['listen = *, ::', 'listen = 127.0.0.1'],
    ['port = 143', `port = ${o.imapPort}`],
    ['port = 993', `port = ${o.imapsPort}`],
  ], 'docs/dovecot.md dovecot.conf');
  return conf + (o.extra ?? '');
}

/**
 * The minimal configuration: IMAP only, plaintext LOGIN on loopback, the
 * instance's passwd-file for passwords and users (its userdb_mail field says
 * Maildir or mbox per user).
 */
function dovecotConf(dir: string, port: number, usersFile: string): string {
  return `# written by test/src/dovecot.ts
protocols = imap
listen = 127.0.0.1
base_dir = ${dir}/run
state_dir = ${dir}/state
log_path = ${dir}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = maildir:~/Maildir
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = ${port}
  }
}
passdb {
  driver = passwd-file
  args = scheme=SHA512-CRYPT ${usersFile}
}
userdb {
  driver = passwd-file
  args = username_format=%u ${usersFile}
}
${IS_ROOT ? AS_ROOT : asInvokingUser()}`;
}

/** Debian's accounts for the login and internal processes; auth as root, since `postern init` leaves the users file 0640 root's. */
const AS_ROOT = `default_internal_user = dovecot
default_login_user = dovenull
service auth {
  user = root
}
`;

/** Not root (a developer's run): every process runs as the invoking user, and without chroot, which needs root. */
function asInvokingUser(): string {
  const me = os.userInfo().username;
  return `default_internal_user = ${me}
default_internal_group = ${run('id', ['-gn']).stdout.trim()}
default_login_user = ${me}
service anvil {
  chroot =
}
service imap-login {
  chroot =
}
`;
}

/** `postern reload`, then wait (bounded) until each service (log field `service`: a name, or a pattern) has logged it. */
export async function reloadAndWait(inst: Instance, services: (string | RegExp)[]): Promise<void> {
  const count = (s: string | RegExp) => inst.logs().filter((e) => e.msg === 'configuration reloaded'
    && (typeof s === 'string' ? String(e.service) === s : s.test(String(e.service)))).length;
  const before = services.map(count);
  inst.cli(['reload']);
  await waitFor(`${services.map(String).join(', ')} to reload`, () => services.every((s, i) => count(s) > before[i]), 15000);
}
