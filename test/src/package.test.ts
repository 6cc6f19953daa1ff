/**
 * The Debian package, as an administrator meets it: `make deb`, lintian, then
 * `dpkg -i` into a throwaway Debian 12 root made with debootstrap (a chroot
 * sharing this machine's network, so its port 25 is 127.0.0.1:25 here):
 * accounts, spool and modes; `postern start` runs every service under its own
 * account; mail to port 25 is delivered; `postern stop` stops everything;
 * `dpkg --purge` leaves nothing behind.
 *
 * Debian 12's own nodejs is 18, below the package's `Depends: nodejs (>= 20)`,
 * so the test installs a stand-in `nodejs` package holding this machine's
 * /usr/bin/node (built here with dpkg-deb). The debootstrap tarball is cached
 * under .cache/debootstrap/ so later runs do not download it again.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { ROOT, IS_ROOT, run, RunResult, requireTool, tempDir, waitFor } from './harness.js';

const SUITE = 'bookworm';
const CACHE = path.join(ROOT, '.cache', 'debootstrap');
const TARBALL = path.join(CACHE, `${SUITE}-minbase-openssl-acl.tgz`);
const PORTS = [25, 587, 465];

let deb: string;
let chroot: string | null = null;
let procMounted = false;

/** The Debian mirror this machine's apt uses (deb822 or one-line sources), for debootstrap. */
function debianMirror(): string {
  const files = ['/etc/apt/sources.list', ...fs.readdirSync('/etc/apt/sources.list.d').map((f) => `/etc/apt/sources.list.d/${f}`)];
  for (const f of files) {
    let text: string;
    try { text = fs.readFileSync(f, 'utf8'); } catch { continue; }
    for (const stanza of text.split(/\n\s*\n/)) {
      const uris = /^URIs:\s*(\S+)/m.exec(stanza)?.[1];
      const suites = /^Suites:\s*(.+)$/m.exec(stanza)?.[1].split(/\s+/) ?? [];
      if (uris && suites.includes(SUITE) && /\/debian\/?$/.test(uris)) return uris;
    }
    const line = new RegExp(`^deb\\s+(?:\\[[^\\]]*\\]\\s+)?(\\S+/debian/?)\\s+${SUITE}\\s`, 'm').exec(text);
    if (line) return line[1];
  }
  throw new Error(`no Debian ${SUITE} mirror in /etc/apt/sources.list(.d)`);
}

function must(what: string, r: RunResult): RunResult {
  assert.equal(r.code, 0, `${what} exited ${r.code}:\n${r.stderr}${r.stdout}`);
  return r;
}

/** A command inside the Debian root, as root, with a clean environment. */
function inRoot(args: string[], opts: { input?: string; timeout?: number } = {}): RunResult {
  return run('chroot', [chroot!, '/usr/bin/env', '-i', 'PATH=/usr/sbin:/usr/bin:/sbin:/bin', 'HOME=/root', 'LANG=C.UTF-8',
    'DEBIAN_FRONTEND=noninteractive', ...args], { input: opts.input, timeout: opts.timeout ?? 120000 });
}

/** name -> id from the Debian root's /etc/passwd or /etc/group. */
function ids(file: 'passwd' | 'group'): Map<string, number> {
  const text = fs.readFileSync(path.join(chroot!, 'etc', file), 'utf8');
  return new Map(text.split('\n').filter(Boolean).map((l) => { const f = l.split(':'); return [f[0], parseInt(f[2], 10)]; }));
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/** Processes whose root directory is the Debian root: only ones this test started. */
function processesInRoot(): number[] {
  if (!chroot) return [];
  const real = fs.realpathSync(chroot);
  const pids: number[] = [];
  for (const p of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try { if (fs.readlinkSync(`/proc/${p}/root`) === real) pids.push(parseInt(p, 10)); } catch { /* gone, or not ours to read */ }
  }
  return pids;
}

function isMounted(dir: string): boolean {
  const real = fs.realpathSync(dir);
  return fs.readFileSync('/proc/self/mounts', 'utf8').split('\n').some((l) => l.split(' ')[1] === real);
}

before(async () => {
  assert.ok(IS_ROOT, 'the package test installs into a chroot and needs root (CI runs as root)');
  for (const tool of ['debootstrap', 'dpkg-deb', 'lintian', 'chroot', 'mount', 'umount', 'swaks', 'make']) requireTool(tool);
  for (const port of PORTS) {
    assert.ok(await portFree(port), `127.0.0.1:${port} is in use on this machine; the package's listeners need it`);
  }

  must('make deb', run('make', ['deb'], { cwd: ROOT, timeout: 600000 }));
  const version = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version;
  deb = path.join(ROOT, 'build', `postern_${version}_all.deb`);
  assert.ok(fs.existsSync(deb), `${deb} was not built`);

  if (!fs.existsSync(TARBALL)) {
    fs.mkdirSync(CACHE, { recursive: true });
    const work = tempDir('debootstrap');
    try {
      must('debootstrap --make-tarball', run('debootstrap', ['--variant=minbase', '--include=openssl,acl', `--make-tarball=${TARBALL}.tmp`,
        SUITE, work, debianMirror()], { timeout: 900000 }));
      fs.renameSync(`${TARBALL}.tmp`, TARBALL);
    } finally { fs.rmSync(work, { recursive: true, force: true }); fs.rmSync(`${TARBALL}.tmp`, { force: true }); }
  }
  chroot = tempDir('debian-root');
  must('debootstrap --unpack-tarball', run('debootstrap', ['--variant=minbase', '--include=openssl,acl', `--unpack-tarball=${TARBALL}`,
    SUITE, chroot, debianMirror()], { timeout: 900000 }));
  must('mount /proc', run('mount', ['-t', 'proc', 'proc', path.join(chroot, 'proc')]));
  procMounted = true;
});

after(async () => {
  if (!chroot) return;
  // anything still running in the Debian root was started by this test
  for (let i = 0; i < 50 && processesInRoot().length; i++) {
    for (const pid of processesInRoot()) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  const proc = path.join(chroot, 'proc');
  if (procMounted || isMounted(proc)) {
    if (run('umount', [proc]).code !== 0) run('umount', ['-l', proc]);
  }
  // never remove a tree with a live mount inside it
  const real = fs.realpathSync(chroot);
  const inside = fs.readFileSync('/proc/self/mounts', 'utf8').split('\n').map((l) => l.split(' ')[1]).filter((m) => m && m.startsWith(`${real}/`));
  if (inside.length === 0) fs.rmSync(chroot, { recursive: true, force: true });
  else process.stderr.write(`package.test: left ${chroot} in place: still mounted: ${inside.join(', ')}\n`);
});

test('the package has the programs, not the sources, and Debian MTA relations; lintian finds no error', () => {
  const control = must('dpkg-deb -f', run('dpkg-deb', ['-f', deb])).stdout;
  assert.match(control, /^Architecture: all$/m);
  assert.match(control, /^Depends: .*nodejs \(>= 20\)/m);
  for (const rel of ['Provides', 'Conflicts', 'Replaces']) assert.match(control, new RegExp(`^${rel}: mail-transport-agent$`, 'm'));
  const files = must('dpkg-deb -c', run('dpkg-deb', ['-c', deb])).stdout.split('\n').map((l) => l.split(/\s+/).slice(5).join(' ')).filter(Boolean);
  const names = files.map((f) => f.replace(/ -> .*$/, ''));
  for (const want of ['./usr/sbin/postern', './usr/sbin/sendmail', './usr/bin/mailq', './usr/bin/newaliases', './etc/postern/main.cf',
    './etc/postern/master.cf', './etc/postern/users', './lib/systemd/system/postern.service', './etc/logrotate.d/postern',
    './usr/lib/postern/packages/master/dist/main.js', './usr/lib/postern/node_modules/smtp-server/package.json']) {
    assert.ok(names.includes(want), `${want} is in the package`);
  }
  const sources = names.filter((f) => /\.ts$|\/src\/|\/test\/|tsbuildinfo/.test(f) && !f.includes('/node_modules/'));
  assert.deepEqual(sources, [], 'no TypeScript sources or tests of our own');
  assert.ok(!names.some((f) => /\/node_modules\/(typescript|@types)\//.test(f)), 'no dev dependencies');
  const conffiles = must('dpkg-deb --ctrl-tarfile', run('sh', ['-c', `dpkg-deb --ctrl-tarfile "$1" | tar -xO ./conffiles`, 'sh', deb])).stdout;
  assert.deepEqual(conffiles.trim().split('\n').sort(), ['/etc/logrotate.d/postern', '/etc/postern/main.cf', '/etc/postern/master.cf', '/etc/postern/users']);

  const lint = run('lintian', ['--fail-on', 'error', deb], { timeout: 600000 });
  assert.doesNotMatch(lint.stdout, /^E: /m, lint.stdout);
  assert.equal(lint.code, 0, `lintian: ${lint.stdout}${lint.stderr}`);
});

test('installed into Debian 12: accounts, spool and modes; start, deliver on port 25, stop; purge leaves nothing', async () => {
  // --- a stand-in nodejs >= 20 (bookworm has 18): this machine's node binary
  const nodeVersion = process.versions.node;
  const nodePkg = tempDir('nodejs-deb');
  try {
    fs.mkdirSync(path.join(nodePkg, 'DEBIAN'));
    fs.mkdirSync(path.join(nodePkg, 'usr', 'bin'), { recursive: true });
    fs.copyFileSync(fs.realpathSync(process.execPath), path.join(nodePkg, 'usr', 'bin', 'node'));
    fs.chmodSync(path.join(nodePkg, 'usr', 'bin', 'node'), 0o755);
    const arch = must('dpkg --print-architecture', run('dpkg', ['--print-architecture'])).stdout.trim();
    fs.writeFileSync(path.join(nodePkg, 'DEBIAN', 'control'), `Package: nodejs\nVersion: ${nodeVersion}\nArchitecture: ${arch}\n`
      + 'Maintainer: Postern tests <tests@postern.invalid>\nDepends: libc6, libstdc++6, libgcc-s1\n'
      + 'Description: node from the test machine (package test stand-in)\n');
    // gzip, not xz: packing the node binary must not hit run()'s time limit on a loaded machine
    must('dpkg-deb --build nodejs', run('dpkg-deb', ['--root-owner-group', '-Zgzip', '--build', nodePkg, path.join(chroot!, 'tmp', 'nodejs.deb')],
      { timeout: 600000 }));
  } finally { fs.rmSync(nodePkg, { recursive: true, force: true }); }
  fs.copyFileSync(deb, path.join(chroot!, 'tmp', 'postern.deb'));

  // --- install: no systemd runs here, and postinst must not need it
  must('dpkg -i', inRoot(['dpkg', '-i', '/tmp/nodejs.deb', '/tmp/postern.deb'], { timeout: 300000 }));
  const users = ids('passwd');
  const groups = ids('group');
  for (const u of ['postern', 'postern-smtpd', 'postern-relay', 'vmail']) {
    assert.ok(users.has(u), `user ${u} exists`);
    assert.ok(groups.has(u), `group ${u} exists`);
  }
  const at = (p: string) => path.join(chroot!, p);
  const expectDir = (p: string, user: string, group: string, mode: number) => {
    const st = fs.statSync(at(p));
    assert.ok(st.isDirectory(), `${p} is a directory`);
    assert.equal(st.uid, users.get(user), `${p} owner`);
    assert.equal(st.gid, groups.get(group), `${p} group`);
    assert.equal((st.mode & 0o7777).toString(8), mode.toString(8), `${p} mode`);
  };
  expectDir('/var/spool/postern', 'root', 'root', 0o755);
  for (const q of ['incoming', 'active', 'deferred']) expectDir(`/var/spool/postern/${q}`, 'postern', 'postern-relay', 0o2750);
  expectDir('/var/spool/postern/hold', 'postern', 'postern', 0o700);
  expectDir('/var/spool/postern/maildrop', 'postern', 'postern', 0o1733);
  expectDir('/var/spool/postern/private', 'root', 'root', 0o755);
  // /var/mail is setgid (2775 root:mail) on Debian, and the mail root inherits the bit
  const mailRoot = fs.statSync(at('/var/mail/vhosts'));
  assert.deepEqual([mailRoot.uid, mailRoot.gid, mailRoot.mode & 0o777], [users.get('vmail'), groups.get('vmail'), 0o755]);
  const usersFile = fs.statSync(at('/etc/postern/users'));
  // root's; smtpd reads it through its group, local (vmail) through an ACL entry (docs/security.md)
  assert.deepEqual([usersFile.uid, usersFile.gid, usersFile.mode & 0o777], [0, groups.get('postern-smtpd'), 0o640]);
  const key = fs.statSync(at('/etc/postern/tls/key.pem'));
  assert.deepEqual([key.uid, key.gid, key.mode & 0o777], [0, groups.get('postern-smtpd'), 0o640]);
  assert.ok(fs.existsSync(at('/etc/postern/tls/cert.pem')), 'a self-signed certificate');
  // (an absolute link into the Debian root: lstat, not stat, from out here)
  assert.equal(fs.readlinkSync(at('/etc/systemd/system/multi-user.target.wants/postern.service')), '/lib/systemd/system/postern.service',
    'the service is enabled');
  assert.equal(fs.readlinkSync(at('/usr/sbin/sendmail')), '../lib/postern/bin/sendmail');
  const check = inRoot(['postern', 'check']);
  assert.equal(check.code, 0, `postern check on the installed system:\n${check.stderr}`);
  assert.doesNotMatch(check.stderr, /: error: /);

  // --- listeners on loopback only (the package's default is every address)
  const masterCf = at('/etc/postern/master.cf');
  fs.writeFileSync(masterCf, fs.readFileSync(masterCf, 'utf8').replace(/^(25|587|465)(\s)/mg, (_m, port, sp) => `127.0.0.1:${port}${sp}`));
  must('postern user add', inRoot(['postern', 'user', 'add', 'alice@example.test', '--password-stdin'], { input: 'secret\n' }));
  // an alias table for newaliases to check and cleanup to expand
  const aliases = at('/etc/postern/aliases');
  const goodAliases = '# aliases for the package test\ninfo@example.test alice@example.test\n';
  fs.writeFileSync(aliases, goodAliases, { mode: 0o644 });
  must('postern config set alias_maps', inRoot(['postern', 'config', 'set', 'alias_maps=texthash:/etc/postern/aliases']));

  // --- start: every service under its own account
  must('postern start', inRoot(['postern', 'start'], { timeout: 60000 }));
  const status = JSON.parse(must('postern status --json', inRoot(['postern', 'status', '--json'])).stdout);
  assert.equal(status.running, true);
  assert.equal(status.master.user, 'root');
  const expectedUser: Record<string, string> = { smtpd: 'postern-smtpd', cleanup: 'postern', qmgr: 'postern', pickup: 'postern', showq: 'postern', anvil: 'postern-smtpd',
    smtp: 'postern-relay', lmtp: 'postern-relay', local: 'vmail', proxymap: 'postern' };
  const commands = new Set<string>();
  const pids: number[] = [status.master.pid];
  for (const s of status.services) {
    assert.equal(s.running, true, `${s.command} (${s.service}) runs`);
    // a service this table does not know fails here: its account must be decided, not skipped
    assert.ok(expectedUser[s.command], `${s.command} (${s.service}): a service this test knows (add its account to expectedUser)`);
    assert.equal(s.user, expectedUser[s.command], `${s.command} runs as ${expectedUser[s.command]}`);
    // the kernel's word for it, not only postern's
    const uid = parseInt(/^Uid:\s+(\d+)/m.exec(fs.readFileSync(`/proc/${s.pid}/status`, 'utf8'))![1], 10);
    assert.equal(uid, users.get(s.user), `pid ${s.pid} (${s.command}) has uid ${users.get(s.user)}`);
    commands.add(s.command);
    pids.push(s.pid);
  }
  for (const c of ['smtpd', 'cleanup', 'qmgr', 'smtp', 'lmtp', 'local', 'pickup', 'showq', 'anvil', 'proxymap']) assert.ok(commands.has(c), `${c} runs`);

  // --- a message to port 25 on loopback reaches alice's Maildir, once
  const newDir = at('/var/mail/vhosts/example.test/alice/Maildir/new');
  const withSubject = (subject: string) => (fs.existsSync(newDir) ? fs.readdirSync(newDir) : [])
    .filter((f) => new RegExp(`^Subject: ${subject}$`, 'm').test(fs.readFileSync(path.join(newDir, f), 'utf8')));
  const queueEmpty = async () => waitFor('mailq to say the queue is empty', () => /Mail queue is empty/.test(inRoot(['mailq']).stdout), 30000);
  const swaks = run('swaks', ['--server', '127.0.0.1:25', '--from', 'sender@elsewhere.test', '--to', 'alice@example.test',
    '--header', 'Subject: installed-package-test', '--body', 'delivered by the installed package'], { timeout: 60000 });
  assert.equal(swaks.code, 0, `swaks: ${swaks.stdout}${swaks.stderr}`);
  const queueId = /<- {2}250 2\.0\.0 Ok: queued as ([0-9A-F]+)/.exec(swaks.stdout)?.[1];
  assert.ok(queueId, `DATA is answered 250 with the queue id:\n${swaks.stdout}`);
  await waitFor('the message in alice\'s Maildir', () => withSubject('installed-package-test').length > 0, 30000);
  await queueEmpty();
  const files = withSubject('installed-package-test');
  assert.equal(files.length, 1, `delivered exactly once: ${files.join(' ')}`);
  const message = fs.readFileSync(path.join(newDir, files[0]), 'utf8');
  assert.match(message, new RegExp(` id ${queueId}\\r?\\n`), 'the copy is the message that got the 250 (its queue id in Received:)');
  assert.equal(fs.statSync(path.join(newDir, files[0])).uid, users.get('vmail'));

  // --- the MTA interface other Debian packages use: sendmail, mailq, newaliases
  must('sendmail', inRoot(['sh', '-c', 'printf "Subject: via-sendmail\\n\\nsubmitted locally\\n" | sendmail alice@example.test']));
  await waitFor('the sendmail message in alice\'s Maildir', () => withSubject('via-sendmail').length > 0, 30000);
  await queueEmpty();
  assert.equal(withSubject('via-sendmail').length, 1, 'the sendmail message delivered exactly once');
  assert.match(must('mailq', inRoot(['mailq'])).stdout, /Mail queue is empty/);

  // newaliases: a table that parses passes quietly, and its alias works; a broken line fails with FILE:LINE
  const good = inRoot(['newaliases']);
  assert.deepEqual([good.code, good.stderr], [0, ''], `newaliases on a good table: ${good.stderr}`);
  must('sendmail to an alias', inRoot(['sh', '-c', 'printf "Subject: via-alias\\n\\nto info@\\n" | sendmail info@example.test']));
  await waitFor('the message to info@ in alice\'s Maildir', () => withSubject('via-alias').length > 0, 30000);
  await queueEmpty();
  assert.equal(withSubject('via-alias').length, 1, 'the aliased message delivered exactly once');
  fs.appendFileSync(aliases, 'a-key-without-a-target\n');
  const bad = inRoot(['newaliases']);
  assert.equal(bad.code, 1, `newaliases on a broken table exits 1 (stderr: ${bad.stderr})`);
  assert.match(bad.stderr, /^newaliases: \/etc\/postern\/aliases:3: error: expected "key value", found "a-key-without-a-target"$/m,
    'newaliases names the file and line');
  fs.writeFileSync(aliases, goodAliases);
  assert.equal(inRoot(['newaliases']).code, 0, 'newaliases passes again once the table is fixed');

  // --- stop: master and every service gone
  must('postern stop', inRoot(['postern', 'stop'], { timeout: 60000 }));
  await waitFor('every postern process to exit', () => pids.every((pid) => { try { process.kill(pid, 0); return false; } catch { return true; } }), 30000);
  assert.deepEqual(processesInRoot(), [], 'nothing left running in the Debian root');

  // --- purge: nothing of postern is left but the delivered mail
  must('dpkg --purge', inRoot(['dpkg', '--purge', 'postern'], { timeout: 300000 }));
  const usersAfter = ids('passwd');
  const groupsAfter = ids('group');
  for (const u of ['postern', 'postern-smtpd', 'postern-relay', 'vmail']) {
    assert.ok(!usersAfter.has(u), `user ${u} removed`);
    assert.ok(!groupsAfter.has(u), `group ${u} removed`);
  }
  for (const p of ['/var/spool/postern', '/etc/postern', '/usr/lib/postern', '/var/log/postern', '/var/lib/postern', '/usr/sbin/postern',
    '/usr/sbin/sendmail', '/usr/bin/mailq', '/usr/bin/newaliases', '/lib/systemd/system/postern.service', '/etc/logrotate.d/postern',
    '/etc/systemd/system/multi-user.target.wants/postern.service']) {
    assert.ok(!fs.existsSync(at(p)) && !isSymlink(at(p)), `${p} removed`);
  }
  assert.equal(inRoot(['dpkg-query', '-W', 'postern']).code, 1, 'dpkg knows no postern package any more');
  assert.ok(fs.existsSync(path.join(newDir, files[0])), 'delivered mail is the users\' and stays');
});

function isSymlink(p: string): boolean {
  try { return fs.lstatSync(p).isSymbolicLink(); } catch { return false; }
}
