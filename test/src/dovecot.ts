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
import { freePort, requireTool, run, tempDir, waitFor, IS_ROOT } from './harness.js';
import { ImapClient } from './imap.js';

export interface DovecotOptions {
  /** The instance's passwd-file (DIR/etc/users). */
  usersFile: string;
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
    fs.writeFileSync(conf, dovecotConf(dir, port, o.usersFile));
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

  /** SIGTERM, bounded wait, SIGKILL; then remove the temp directory. */
  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGTERM');
      const stopped = await Promise.race([this.exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 10000))]);
      if (!stopped) { this.child.kill('SIGKILL'); await this.exited; }
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
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
