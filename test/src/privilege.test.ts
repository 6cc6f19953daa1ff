/**
 * Privilege separation, as a root-started instance really runs it: every
 * service under the account ARCHITECTURE.md gives it, nothing but master as
 * root, supplementary groups dropped, mail written as vmail, and the spool's
 * owners and modes exactly as designed. Needs root (CI runs as root): run as
 * anyone else it fails, loudly, rather than pretending.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { Instance, IS_ROOT, ROOT, requireTool, run, waitFor } from './harness.js';
import { lookupSystemUser, lookupGroup, SystemUser } from '../../packages/common/dist/index.js';

const ADDRESS = 'alice@example.test';

/** Which account each master.cf command runs as (ARCHITECTURE.md, "The processes"). */
const EXPECTED_USER: Record<string, string> = {
  smtpd: 'postern-smtpd',
  cleanup: 'postern',
  qmgr: 'postern',
  pickup: 'postern',
  showq: 'postern',
  anvil: 'postern-smtpd',
  smtp: 'postern-relay',
  lmtp: 'postern-relay',
  local: 'vmail',
  proxymap: 'postern', // reads the database table files (root:postern 0640)
};

const SERVICE_USERS = ['postern', 'postern-smtpd', 'postern-relay', 'vmail'];

function account(name: string): SystemUser {
  const u = lookupSystemUser(name);
  assert.ok(u, `system user ${name} exists (postern init --create-users makes it)`);
  return u;
}

function groupId(name: string): number {
  const g = lookupGroup(name);
  assert.ok(g !== null, `group ${name} exists`);
  return g;
}

/**
 * The services load their code from this checkout: each service user must be
 * able to reach and read it (CI's clone and /work/main alike).
 */
function checkCodeReadable(): void {
  const files = ['master', 'smtpd', 'cleanup', 'qmgr', 'smtp', 'local'].map((p) => path.join(ROOT, 'packages', p, 'dist', 'main.js'))
    .concat([path.join(ROOT, 'packages', 'common', 'dist', 'index.js'), path.join(ROOT, 'node_modules', 'smtp-server', 'package.json'),
      path.join(ROOT, 'node_modules', 'pino', 'package.json'), path.join(ROOT, 'package.json')]);
  const probe = 'const fs = require("fs"); for (const f of process.argv.slice(1)) fs.accessSync(f, fs.constants.R_OK);';
  for (const name of SERVICE_USERS) {
    const u = account(name);
    const r = spawnSync(process.execPath, ['-e', probe, ...files], { uid: u.uid, gid: u.gid, cwd: '/', encoding: 'utf8' });
    assert.equal(r.status, 0, `the repository ${ROOT} must be readable by the service user ${name} (the services load their ` +
      `code from it; every directory on the way needs o+x, the files o+r): ${r.stderr || r.error?.message}`);
  }
}

let shared: Promise<Instance> | null = null;

/** One root instance for every test in this file, started once. */
function instance(): Promise<Instance> {
  shared ??= (async () => {
    assert.ok(IS_ROOT, 'privilege.test.js must run as root (CI does): it creates the service accounts and checks that ' +
      'master drops every service to its own user. Run it with sudo, or in the CI container.');
    const inst = await Instance.create({ unprivileged: false, users: [{ address: ADDRESS }] });
    try {
      // a root instance listens on every address by default; tests keep to loopback
      const masterCf = path.join(inst.etc, 'master.cf');
      fs.writeFileSync(masterCf, fs.readFileSync(masterCf, 'utf8').replace(/^(\d+)(\s)/gm, '127.0.0.1:$1$2'));
      checkCodeReadable();
      await inst.start();
    } catch (e) {
      await inst.destroy();
      throw e;
    }
    return inst;
  })();
  return shared;
}

test.after(async () => {
  if (shared) await (await shared.catch(() => null))?.destroy();
});

interface ServiceStatus { service: string; type: string; command: string; pid: number; running: boolean; user: string }

function procStatus(pid: number): { uid: number[]; gid: number[]; groups: string } {
  const text = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string) => (new RegExp(`^${name}:\\t?(.*)$`, 'm').exec(text)?.[1] ?? '').trim();
  return { uid: field('Uid').split(/\s+/).map(Number), gid: field('Gid').split(/\s+/).map(Number), groups: field('Groups') };
}

/**
 * Every process under `root` (children, their children, ...), found from the
 * PPid of each process in /proc: what `postern status` lists and anything a
 * service or master started besides.
 */
function processTree(root: number): { pid: number; uid: number[]; cmdline: string }[] {
  const children = new Map<number, number[]>();
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let text: string;
    try { text = fs.readFileSync(`/proc/${name}/status`, 'utf8'); } catch { continue; } // exited meanwhile
    const ppid = Number(/^PPid:\s+(\d+)$/m.exec(text)?.[1]);
    if (!children.has(ppid)) children.set(ppid, []);
    children.get(ppid)!.push(Number(name));
  }
  const out: { pid: number; uid: number[]; cmdline: string }[] = [];
  const todo = [...(children.get(root) ?? [])];
  for (let i = 0; i < todo.length && i < 10000; i++) {
    const pid = todo[i];
    let uid: number[];
    let cmdline = '';
    try {
      uid = procStatus(pid).uid;
      cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'latin1').split('\0').join(' ').trim();
    } catch { continue; } // exited meanwhile
    out.push({ pid, uid, cmdline });
    todo.push(...(children.get(pid) ?? []));
  }
  return out;
}

test('as root: master runs as root and every service under its own account, with no supplementary groups', async (t) => {
  const inst = await instance();
  const status = inst.status();
  assert.equal(status.running, true, 'postern status --json says running');
  assert.equal(status.master.user, 'root', 'master runs as root');
  const services: ServiceStatus[] = status.services;
  for (const command of ['smtpd', 'cleanup', 'qmgr', 'smtp', 'lmtp', 'local']) {
    assert.ok(services.some((s) => s.command === command && s.running), `${command} runs (status: ${JSON.stringify(services)})`);
  }
  for (const s of services) {
    assert.ok(s.running && s.pid, `${s.command} (${s.service}) is running`);
    assert.notEqual(s.user, 'root', `${s.command} (${s.service}) does not run as root`);
    assert.ok(EXPECTED_USER[s.command], `${s.command}: a service this test knows`);
    if (EXPECTED_USER[s.command]) assert.equal(s.user, EXPECTED_USER[s.command], `postern status: ${s.command} runs as ${EXPECTED_USER[s.command]}`);
  }

  // ps's view; user:32 so long names are not shortened to a uid
  const pids = [status.master.pid, ...services.map((s) => s.pid)];
  const ps = run('ps', ['-o', 'user:32=,pid=,args=', '-p', pids.join(',')]);
  assert.equal(ps.code, 0, `ps: ${ps.stderr}`);
  for (const line of ps.stdout.trimEnd().split('\n')) t.diagnostic(`ps: ${line.trim().replace(/\s+/g, ' ')}`);
  const rows = new Map(ps.stdout.trim().split('\n').map((line) => {
    const [user, pid, ...args] = line.trim().split(/\s+/);
    return [Number(pid), { user, args: args.join(' ') }] as const;
  }));
  assert.equal(rows.get(status.master.pid)?.user, 'root', 'ps: master runs as root');
  for (const s of services) {
    const row = rows.get(s.pid);
    assert.ok(row, `ps lists ${s.command} pid ${s.pid}`);
    assert.match(row.args, new RegExp(`postern/${s.command}`), `ps names the process postern/${s.command}`);
    assert.equal(row.user, s.user, `ps: ${s.command} runs as ${s.user}`);
  }

  // the kernel's whole tree under master, not only the pids status names: no process in it has uid 0 anywhere
  assert.deepEqual(procStatus(status.master.pid).uid, [0, 0, 0, 0], 'master runs as root');
  const tree = processTree(status.master.pid);
  for (const p of tree) t.diagnostic(`under master: pid ${p.pid} uids ${p.uid.join(',')} ${p.cmdline}`);
  const treePids = new Set(tree.map((p) => p.pid));
  for (const s of services) assert.ok(treePids.has(s.pid), `${s.command} pid ${s.pid} is a descendant of master ${status.master.pid}`);
  assert.deepEqual(tree.filter((p) => p.uid.includes(0)).map((p) => `${p.pid} ${p.cmdline}`), [], 'nothing but master runs as root');

  // real, effective, saved and filesystem ids all dropped, and no supplementary groups kept
  for (const s of services) {
    const u = account(s.user);
    const p = procStatus(s.pid);
    assert.deepEqual(p.uid, [u.uid, u.uid, u.uid, u.uid], `${s.command}: every uid is ${s.user}'s`);
    assert.deepEqual(p.gid, [u.gid, u.gid, u.gid, u.gid], `${s.command}: every gid is ${s.user}'s primary group`);
    assert.equal(p.groups, '', `${s.command}: supplementary groups dropped (Groups: ${p.groups})`);
  }
});

test('as root: a message sent with swaks lands in the Maildir, written as vmail', async () => {
  const swaks = requireTool('swaks');
  const inst = await instance();
  const token = `privilege-${Date.now()}`;
  const r = run(swaks, ['--server', '127.0.0.1', '--port', String(inst.ports.smtp), '--from', 'sender@example.org', '--to', ADDRESS,
    '--helo', 'client.example.org', '--header', `Subject: ${token}`, '--body', `Delivered by the vmail user: ${token}`], { timeout: 60000 });
  assert.equal(r.code, 0, `swaks exits 0:\n${r.stdout}${r.stderr}`);
  assert.match(r.stdout, /<- {2}250 2\.0\.0 Ok: queued as [0-9A-F]+/, 'DATA is answered 250 with the queue id');

  const files = await waitFor('the message in the Maildir', () => inst.delivered(ADDRESS).length ? inst.delivered(ADDRESS) : null, 30000);
  assert.equal(files.length, 1, 'delivered once');
  assert.ok(fs.readFileSync(files[0], 'utf8').includes(`Subject: ${token}`), 'the delivered file is our message');
  const vmail = account('vmail');
  const maildir = inst.maildir(ADDRESS);
  for (const p of [files[0], maildir, path.join(maildir, 'new'), path.join(maildir, 'cur'), path.join(maildir, 'tmp'), path.dirname(maildir)]) {
    const st = fs.statSync(p);
    assert.equal(st.uid, vmail.uid, `${p} is owned by vmail`);
    assert.equal(st.gid, vmail.gid, `${p} has vmail's group`);
  }
  assert.equal(fs.statSync(files[0]).mode & 0o077, 0, 'the message file is private to vmail');
  await waitFor('the queue to drain', () => inst.queueEmpty(), 30000);
});

test('as root: the spool, its sockets and the secrets have the owners and modes of the design', async () => {
  const inst = await instance();
  const [postern, smtpd, relay, vmail] = SERVICE_USERS.map(account);
  const relayGroup = groupId('postern-relay');
  const smtpdGroup = groupId('postern-smtpd');
  const posternGroup = groupId('postern');
  const check = (rel: string, uid: number, gid: number, mode: number, what: string) => {
    const p = path.join(inst.spool, rel);
    const st = fs.statSync(p);
    const got = `${st.uid}:${st.gid} ${(st.mode & 0o7777).toString(8).padStart(4, '0')}`;
    assert.equal(got, `${uid}:${gid} ${mode.toString(8).padStart(4, '0')}`, `${rel}: ${what}`);
  };
  for (const q of ['incoming', 'active', 'deferred']) check(q, postern.uid, relayGroup, 0o2750, 'postern:postern-relay 2750');
  check('maildrop', postern.uid, posternGroup, 0o1733, 'postern 1733 (sticky drop box)');
  check('hold', postern.uid, posternGroup, 0o700, 'postern 0700');
  check('corrupt', postern.uid, posternGroup, 0o700, 'postern 0700');
  check('private', 0, 0, 0o755, 'root 0755');
  check('pid', 0, 0, 0o755, 'root 0755');

  // each socket's group is exactly its allowed clients
  check('private/cleanup', postern.uid, smtpdGroup, 0o660, 'cleanup socket: postern:postern-smtpd 0660');
  check('private/cleanup.local', postern.uid, posternGroup, 0o600, 'cleanup socket of the queue owner (pickup, qmgr): postern 0600');
  check('private/qmgr', postern.uid, posternGroup, 0o600, 'qmgr socket: postern 0600');
  check('private/smtp', relay.uid, posternGroup, 0o660, 'smtp socket: postern-relay:postern 0660');
  check('private/lmtp', relay.uid, posternGroup, 0o660, 'lmtp socket: postern-relay:postern 0660');
  check('private/local', vmail.uid, relayGroup, 0o660, 'local socket: vmail:postern-relay 0660');
  check('private/local.qmgr', vmail.uid, posternGroup, 0o660, 'local socket for qmgr\'s requests: vmail:postern 0660');
  check('private/proxymap', postern.uid, smtpdGroup, 0o660, 'proxymap socket: postern:postern-smtpd 0660 (+ ACL entries for vmail and postern-relay)');
  assert.ok(fs.statSync(path.join(inst.spool, 'private', 'cleanup')).isSocket(), 'private/cleanup is a socket');

  const key = fs.statSync(path.join(inst.etc, 'tls', 'key.pem'));
  assert.equal(`${key.uid}:${key.gid} ${(key.mode & 0o777).toString(8)}`, `0:${smtpdGroup} 640`, 'TLS key: root:postern-smtpd 0640');
  const users = fs.statSync(path.join(inst.etc, 'users'));
  assert.equal(`${users.uid}:${users.gid} ${(users.mode & 0o777).toString(8)}`, `0:${smtpdGroup} 640`, 'users table: root:postern-smtpd 0640 (vmail reads it through an ACL)');
  void smtpd;
});

test('as root: what a compromised smtpd could reach — no queue, no mailboxes', async () => {
  const inst = await instance();
  const smtpd = account('postern-smtpd');
  // as the smtpd account, try to list each place it must not see
  const probe = 'const fs = require("fs"); for (const d of process.argv.slice(1)) { try { fs.readdirSync(d); console.log("READABLE " + d); } ' +
    'catch (e) { console.log(e.code + " " + d); } }';
  const places = ['incoming', 'active', 'deferred', 'hold', 'corrupt', 'maildrop'].map((q) => path.join(inst.spool, q))
    .concat([path.join(inst.maildir(ADDRESS), 'new')]);
  const r = spawnSync(process.execPath, ['-e', probe, ...places], { uid: smtpd.uid, gid: smtpd.gid, cwd: '/', encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  for (const p of places) assert.match(r.stdout, new RegExp(`^EACCES ${p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'm'), `postern-smtpd cannot list ${p}`);
  // nor pose as pickup or qmgr: the queue owner's cleanup socket refuses it (identity comes from the socket)
  const connect = 'const s = require("net").createConnection(process.argv[1]); s.on("connect", () => { console.log("CONNECTED"); s.destroy(); }); s.on("error", (e) => console.log(e.code));';
  const c = spawnSync(process.execPath, ['-e', connect, path.join(inst.spool, 'private', 'cleanup.local')], { uid: smtpd.uid, gid: smtpd.gid, cwd: '/', encoding: 'utf8' });
  assert.equal(c.stdout.trim(), 'EACCES', 'postern-smtpd cannot connect to private/cleanup.local');
});
