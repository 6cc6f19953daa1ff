// pgsql: tables (issue 12): two Postern instances on 127.0.0.11 and 127.0.0.12, each
// with its own spool, share one user database in a real PostgreSQL cluster that this
// test creates (initdb in a temporary directory, as an unprivileged account when run
// as root) and stops. Every service reaches the database through proxymap.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  openTable, openUserDb, openUserDbWriter, parseSqlCf, expandQuery, closeSqlTables, TableUnavailable,
} from '../../packages/common/dist/index.js';
import { generateKeyPairSync } from 'node:crypto';
import { Instance, IS_ROOT, rcptReply, freePort, requireTool, run, tempDir, waitFor, RawSmtp, headerFields } from './harness.js';
import { Dovecot, reloadAndWait } from './dovecot.js';
import { ImapClient } from './imap.js';
import { SmtpSink } from './smtp-sink.js';

const ROOT = path.resolve(__dirname, '..', '..');
const PG_BIN = '/usr/lib/postgresql/15/bin';
const DB_PASS = "s3cret'pw";

/** A throwaway PostgreSQL cluster: initdb under a temporary directory, 127.0.0.1 only. */
class PgCluster {
  readonly data: string;
  private constructor(readonly dir: string, readonly port: number) { this.data = path.join(dir, 'data'); }

  static async create(): Promise<PgCluster> {
    for (const t of ['initdb', 'pg_ctl']) if (!fs.existsSync(path.join(PG_BIN, t))) throw new Error(`${PG_BIN}/${t} missing: install the Debian package "postgresql" (.ci/install-test-deps)`);
    requireTool('psql');
    const c = new PgCluster(tempDir('pg'), await freePort());
    fs.mkdirSync(c.data, { mode: 0o700 });
    fs.writeFileSync(path.join(c.dir, 'pw'), 'admin-pw\n');
    if (IS_ROOT) { fs.chownSync(c.data, 65534, 65534); fs.chownSync(c.dir, 65534, 65534); fs.chownSync(path.join(c.dir, 'pw'), 65534, 65534); }
    const r = c.pg(path.join(PG_BIN, 'initdb'), ['-D', c.data, '-U', 'postgres', '--auth=scram-sha-256', `--pwfile=${path.join(c.dir, 'pw')}`, '--no-sync']);
    if (r.code !== 0) throw new Error(`initdb: ${r.stderr}${r.stdout}`);
    c.start();
    try {
      c.psql('postgres', `CREATE ROLE postern LOGIN PASSWORD '${DB_PASS.replace(/'/g, "''")}'`);
      c.psql('postgres', 'CREATE DATABASE mail OWNER postern');
      const s = run(requireTool('psql'), ['-v', 'ON_ERROR_STOP=1', '-q', c.url('mail', 'postern', DB_PASS), '-f', path.join(ROOT, 'docs', 'sql', 'pgsql.sql')]);
      if (s.code !== 0) throw new Error(`schema: ${s.stderr}`);
    } catch (e) {
      c.destroy();
      throw e;
    }
    return c;
  }

  /** Runs a PostgreSQL program as the cluster's owner (nobody when the test is root: postgres refuses root). */
  private pg(cmd: string, args: string[]) {
    return IS_ROOT ? run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', cmd, ...args], { cwd: '/' }) : run(cmd, args);
  }

  url(db: string, user = 'postgres', pw = 'admin-pw'): string {
    return `postgresql://${user}:${encodeURIComponent(pw)}@127.0.0.1:${this.port}/${db}`;
  }

  psql(db: string, sql: string): string {
    const r = run(requireTool('psql'), ['-v', 'ON_ERROR_STOP=1', '-qAt', this.url(db), '-c', sql]);
    if (r.code !== 0) throw new Error(`psql: ${r.stderr}`);
    return r.stdout.trim();
  }

  start(): void {
    const r = this.pg(path.join(PG_BIN, 'pg_ctl'), ['-D', this.data, '-w', '-t', '60', '-l', path.join(this.dir, 'log'), '-o',
      `-c listen_addresses=127.0.0.1 -p ${this.port} -c unix_socket_directories=${this.dir} -c fsync=off`, 'start']);
    if (r.code !== 0) throw new Error(`pg_ctl start: ${r.stderr}${r.stdout}`);
  }

  stop(): void {
    this.pg(path.join(PG_BIN, 'pg_ctl'), ['-D', this.data, '-w', '-t', '60', '-m', 'fast', 'stop']);
  }

  destroy(): void {
    this.stop();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

let pg: PgCluster;
const hosts: { inst: Instance; addr: string }[] = [];
let mailBase: string;

/** The users.cf every instance gets: Postfix's pgsql_table(5) format. */
function usersCf(): string {
  return [
    '# the shared user database (docs/tables.md)',
    `hosts = inet:127.0.0.1:${pg.port}`,
    'user = postern',
    `password = ${DB_PASS}`,
    'dbname = mail',
    "query = SELECT mail FROM users WHERE email = '%s'",
    '',
  ].join('\n');
}

function maildirNew(address: string): string[] {
  const [local, domain] = address.split('@');
  const d = path.join(mailBase, domain, local, 'Maildir', 'new');
  return fs.existsSync(d) ? fs.readdirSync(d) : [];
}

const rcpt = (h: { inst: Instance; addr: string }, to: string) => rcptReply(h.inst.ports.smtp, to, h.addr);

function swaks(h: { inst: Instance; addr: string }, args: string[]): { code: number; out: string } {
  const r = run(requireTool('swaks'), ['--timeout', '20', '--server', h.addr, ...args]);
  return { code: r.code, out: r.stdout + r.stderr };
}

before(async () => {
  pg = await PgCluster.create();
  mailBase = tempDir('pgmail');
  for (const addr of ['127.0.0.11', '127.0.0.12']) {
    const inst = await Instance.create({ main: { proxymap_cache_ttl: '2s' } });
    fs.writeFileSync(path.join(inst.etc, 'users.cf'), usersCf(), { mode: 0o600 });
    inst.cli(['config', 'set', `virtual_mailbox_maps=pgsql:${path.join(inst.etc, 'users.cf')}`, `virtual_mailbox_base=${mailBase}`]);
    const mcf = path.join(inst.etc, 'master.cf');
    fs.writeFileSync(mcf, fs.readFileSync(mcf, 'utf8').replace(/^127\.0\.0\.1:/gm, `${addr}:`));
    await inst.start();
    hosts.push({ inst, addr });
  }
});

after(async () => {
  for (const h of hosts) await h.inst.destroy();
  pg?.destroy();
  if (mailBase) fs.rmSync(mailBase, { recursive: true, force: true });
  await closeSqlTables();
});

test('the .cf parser: Postfix format, clear errors, %s %u %d expansion with quoting', () => {
  const cf = parseSqlCf('hosts = unix:/run/postgresql, inet:db2:5433\nuser = postern\n# c\nquery = SELECT a\n  FROM t WHERE k = \'%s\'\n', '/etc/postern/users.cf');
  assert.deepEqual(cf.hosts, ['unix:/run/postgresql', 'inet:db2:5433']);
  assert.equal(cf.query, "SELECT a FROM t WHERE k = '%s'");
  assert.equal(expandQuery("k='%s' u='%u' d='%d' %%", "o'neil@example.test"), "k='o''neil@example.test' u='o''neil' d='example.test' %");
  assert.equal(expandQuery("d='%d'", 'nodomain'), null, 'a query with %d is not run for a key without a domain');
  assert.throws(() => parseSqlCf('hosts = x\nselect_field = a\n', '/etc/postern/v.cf'),
    (e: unknown) => e instanceof TableUnavailable && /^\/etc\/postern\/v\.cf:2: unknown parameter "select_field" \(the old interface: write a "query" instead\)$/.test((e as Error).message));
});

test('pgsql: user database, table and writer answer directly from the CLI side (no proxymap)', async () => {
  const cf = path.join(hosts[0].inst.etc, 'users.cf');
  const spec = `pgsql:${cf}`;
  await openUserDbWriter(spec).addUser('Direct@Example.test', '{PLAIN}pw', { uid: null, gid: null, home: '/var/vmail/example.test/direct' });
  const db = openUserDb(spec);
  assert.equal(await db.exists('direct@example.test'), true);
  assert.deepEqual(await db.credentials('DIRECT@example.test'), { user: 'direct@example.test', password: '{PLAIN}pw' });
  assert.deepEqual(await db.userInfo('direct@example.test'),
    { user: 'direct@example.test', uid: null, gid: null, home: '/var/vmail/example.test/direct', extra: { userdb_mail: 'maildir:~/Maildir' } });
  assert.equal(await openTable(spec)!.lookup('direct@example.test'), 'maildir:~/Maildir');
  assert.equal(await db.exists("x' OR '1'='1"), false, 'the key is quoted, not SQL');
  assert.equal(await openUserDbWriter(spec).deleteUser('direct@example.test'), true);
  assert.equal(await db.exists('direct@example.test'), false);
  const down = openUserDb(`pgsql:${path.join(hosts[0].inst.etc, 'nowhere.cf')}`);
  await assert.rejects(down.exists('a@example.test'), TableUnavailable);
});

test('a user added once is accepted, delivered and can AUTH on both hosts; deleted, refused by both', async () => {
  hosts[0].inst.cli(['user', 'add', 'alice@example.test', '--password-stdin'], { input: 'correct horse\n' });
  assert.match(hosts[1].inst.cli(['user', 'list']).stdout, /^alice@example\.test$/m, 'the other host lists the same users');
  assert.match(hosts[1].inst.cli(['map', 'query', `pgsql:${path.join(hosts[1].inst.etc, 'users.cf')}`, 'alice@example.test']).stdout, /^maildir:~\/Maildir$/m);
  for (const h of hosts) {
    const r = swaks(h, ['--port', String(h.inst.ports.smtp), '--from', 'someone@remote.test', '--to', 'alice@example.test', '--header', `Subject: via ${h.addr}`]);
    assert.equal(r.code, 0, r.out);
  }
  await waitFor('both messages delivered', () => maildirNew('alice@example.test').length === 2 || undefined, 30000);
  for (const h of hosts) {
    const r = swaks(h, ['--port', String(h.inst.ports.submission), '-tls', '--auth', 'PLAIN', '--auth-user', 'alice@example.test',
      '--auth-password', 'correct horse', '--from', 'alice@example.test', '--to', 'alice@example.test']);
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /<~\s+235 /, `AUTH on ${h.addr}`);
  }
  hosts[1].inst.cli(['user', 'del', 'alice@example.test']);
  for (const h of hosts) {
    await waitFor(`${h.addr} refuses the deleted user`, async () => /^550 5\.1\.1 /.test(await rcpt(h, 'alice@example.test')) || undefined, 20000, 500);
  }
});

test('PostgreSQL down: 451 4.3.0 at RCPT, queued mail stays queued; back up: everything flows, nothing lost', async () => {
  hosts[0].inst.cli(['user', 'add', 'carol@example.test', '--password-stdin'], { input: 'pw\n' });
  hosts[0].inst.cli(['user', 'add', 'dave@example.test', '--password-stdin'], { input: 'pw\n' });
  pg.stop();
  try {
    for (const h of hosts) {
      assert.equal(await rcpt(h, 'dave@example.test'), '451 4.3.0 <dave@example.test>: Temporary lookup failure');
      const r = run(process.execPath, [path.join(ROOT, 'bin', 'sendmail'), '-C', h.inst.etc, '-f', 'root@example.test', 'carol@example.test'],
        { input: `Subject: queued on ${h.addr}\n\nwhile the database is down\n`, cwd: '/' });
      assert.equal(r.code, 0, r.stderr);
    }
    for (const h of hosts) {
      await h.inst.waitForLog('carol deferred', (e) => e.status === 'deferred' && /carol@example\.test/.test(String(e.to)), 30000);
      assert.equal(h.inst.queueEmpty(), false, 'the message stays queued');
    }
    assert.equal(maildirNew('carol@example.test').length, 0);
  } finally {
    pg.start();
  }
  await waitFor('both queued messages delivered', () => maildirNew('carol@example.test').length === 2 || undefined, 60000, 500);
  for (const h of hosts) {
    await waitFor(`${h.addr} queue empty`, () => h.inst.queueEmpty() || undefined, 30000, 500);
    await waitFor(`${h.addr} accepts dave again`, async () => /^250 /.test(await rcpt(h, 'dave@example.test')) || undefined, 20000, 500);
  }
});

/** The fenced block of docs/sql/README.md opened with "```ini NAME": the doc is what the test runs. */
function sqlDocBlock(name: string): string {
  const doc = fs.readFileSync(path.join(ROOT, 'docs', 'sql', 'README.md'), 'utf8');
  const m = new RegExp('^```ini ' + name.replace(/[.]/g, '\\.') + '\\n([\\s\\S]*?)^```$', 'm').exec(doc);
  if (!m) throw new Error(`docs/sql/README.md has no block "${name}"`);
  return m[1];
}

function replaceAll(text: string, subs: [string, string][]): string {
  for (const [from, to] of subs) {
    assert.ok(text.includes(from), `the doc's block still contains "${from}"`);
    text = text.split(from).join(to);
  }
  return text;
}

test('Dovecot (passdb/userdb sql, docs/sql/README.md) logs in a user of the same table and reads what Postern delivered', async () => {
  pg.psql('mail', "CREATE ROLE dovecot LOGIN PASSWORD 'dv-pw'; GRANT SELECT ON users TO dovecot;");
  hosts[1].inst.cli(['user', 'add', 'erin@example.test', '--password-stdin'], { input: 'imap pw\n' });
  // Dovecot will not run mail processes as root: the test's (root) instances deliver as the user's uid
  if (IS_ROOT) pg.psql('mail', "UPDATE users SET uid = 65534, gid = 65534 WHERE email = 'erin@example.test'");
  const r = swaks(hosts[0], ['--port', String(hosts[0].inst.ports.smtp), '--from', 'someone@remote.test', '--to', 'erin@example.test', '--header', 'Subject: for IMAP']);
  assert.equal(r.code, 0, r.out);
  await waitFor('delivered to erin', () => maildirNew('erin@example.test').length === 1 || undefined, 30000);
  // the root-run test instances made the domain directory root's 0700 for alice; nobody (erin) must pass through it
  if (IS_ROOT) fs.chmodSync(path.join(mailBase, 'example.test'), 0o755);
  const dovecot = await Dovecot.start({
    config: (dir, port) => {
      const sqlConf = path.join(dir, 'dovecot-sql.conf.ext');
      fs.writeFileSync(sqlConf, replaceAll(sqlDocBlock('dovecot-sql.conf.ext'),
        [['host=db.example.org port=5432', `host=127.0.0.1 port=${pg.port}`], ['password=change-me-too', 'password=dv-pw']]));
      const me = IS_ROOT ? null : run('id', ['-un']).stdout.trim();
      return [
        'protocols = imap', 'listen = 127.0.0.1', `base_dir = ${dir}/run`, `state_dir = ${dir}/state`, `log_path = ${dir}/dovecot.log`,
        'ssl = no', 'disable_plaintext_auth = no', 'auth_mechanisms = plain', 'mail_location = maildir:~/Maildir',
        `service imap-login {\n  inet_listener imap {\n    address = 127.0.0.1\n    port = ${port}\n  }\n}`,
        replaceAll(sqlDocBlock('dovecot-auth-sql'), [['/etc/dovecot/dovecot-sql.conf.ext', sqlConf]]),
        ...(me ? [`default_internal_user = ${me}`, `default_internal_group = ${run('id', ['-gn']).stdout.trim()}`, `default_login_user = ${me}`,
          'service anvil {\n  chroot =\n}', 'service imap-login {\n  chroot =\n}']
          : ['default_internal_user = dovecot', 'default_login_user = dovenull']),
        '',
      ].join('\n');
    },
  });
  try {
    const imap = await ImapClient.connect(dovecot.port);
    try {
      await imap.login('erin@example.test', 'imap pw');
      const n = await imap.select('INBOX').catch((e: Error) => { throw new Error(`${e.message}\ndovecot log:\n${dovecot.log()}`); });
      assert.equal(n, 1, `erin's INBOX (dovecot log:\n${dovecot.log()})`);
      assert.match((await imap.fetchMessage(1)).body.toString(), /^Subject: for IMAP\r?$/m);
    } finally {
      await imap.logout();
    }
  } finally {
    await dovecot.stop();
  }
});

test('real service accounts: only proxymap reads users.cf; smtpd, local and smtp reach proxymap, other users cannot', async () => {
  const inst = await Instance.create({ unprivileged: false, main: { proxymap_cache_ttl: '2s' } });
  try {
    const cf = path.join(inst.etc, 'users.cf');
    fs.writeFileSync(cf, usersCf(), { mode: 0o640 });
    const owner = run('id', ['-g', 'postern']).stdout.trim();
    fs.chownSync(cf, 0, Number(owner)); // root's, readable by the queue owner's group (proxymap) only
    inst.cli(['config', 'set', `virtual_mailbox_maps=pgsql:${cf}`]);
    inst.cli(['user', 'add', 'frank@example.test', '--password-stdin'], { input: 'frank pw\n' });
    await inst.start();
    await waitFor('proxymap listening', () => fs.existsSync(path.join(inst.spool, 'private', 'proxymap')) || undefined);
    const as = (user: string, cmd: string[]) => run('setpriv', [`--reuid=${user}`, `--regid=${user}`, '--clear-groups', ...cmd], { cwd: '/' });
    assert.notEqual(as('postern-smtpd', ['cat', cf]).code, 0, 'smtpd\'s account cannot read the database password');
    const sock = path.join(inst.spool, 'private', 'proxymap');
    // connect() needs write permission on the socket: test -w is the same check, for each account
    await waitFor('ACL entries for local and smtp', () => /user:vmail:rw-/.test(run('getfacl', ['-p', sock]).stdout) || undefined);
    for (const u of ['postern', 'postern-smtpd', 'vmail', 'postern-relay']) assert.equal(as(u, ['test', '-w', sock]).code, 0, `${u} reaches proxymap`);
    assert.notEqual(as('nobody', ['test', '-w', sock]).code, 0, 'another local account does not');
    const r = run(requireTool('swaks'), ['--timeout', '20', '--server', '127.0.0.1', '--port', String(inst.ports.submission), '-tls',
      '--auth', 'PLAIN', '--auth-user', 'frank@example.test', '--auth-password', 'frank pw', '--from', 'frank@example.test', '--to', 'frank@example.test']);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    await waitFor('delivered by local (vmail) through proxymap', () => inst.delivered('frank@example.test').length === 1 || undefined, 30000);
  } finally {
    await inst.destroy();
  }
});

// ---- the other tables of issue 12: domains, sender logins, transports, DKIM keys, passwords

/** A pgsql: table file on a host: the shared login and one query. */
function pgTable(h: { inst: Instance }, name: string, query: string): string {
  const f = path.join(h.inst.etc, name);
  fs.writeFileSync(f, [`hosts = inet:127.0.0.1:${pg.port}`, 'user = postern', `password = ${DB_PASS}`, 'dbname = mail', `query = ${query}`, ''].join('\n'), { mode: 0o600 });
  return `pgsql:${f}`;
}

function sendmail(h: { inst: Instance }, from: string, to: string, message: string) {
  const r = run(process.execPath, [path.join(ROOT, 'bin', 'sendmail'), '-C', h.inst.etc, '-f', from, to], { input: message, cwd: '/' });
  assert.equal(r.code, 0, r.stderr);
}

let sink: SmtpSink;
let dkimKey: string;
after(async () => { await sink?.stop(); });

/** Set main.cf parameters on a host and wait until its services use them. */
async function configure(h: { inst: Instance; addr: string }, settings: string[]): Promise<void> {
  h.inst.cli(['config', 'set', ...settings]);
  // every service that reads these tables: the three smtpd listeners, cleanup, qmgr, smtp and proxymap
  const { smtp, submission, submissions } = h.inst.ports;
  await reloadAndWait(h.inst, [...[smtp, submission, submissions].map((p) => `smtpd[${h.addr}:${p}]`), 'cleanup', 'qmgr', 'smtp', 'proxymap']);
}

test('virtual_mailbox_domains from PostgreSQL: a domain added to the table is accepted without reload, an unknown one is relaying', async () => {
  const h = hosts[0];
  // the test's client is an outsider: relaying is refused (and no reverse-DNS check: there is no DNS here)
  await configure(h, ['mynetworks=127.0.0.99/32', 'smtpd_client_restrictions=',
    `virtual_mailbox_domains=example.test, ${pgTable(h, 'domains.cf', "SELECT domain FROM domains WHERE domain = '%s'")}`]);
  assert.equal(await rcpt(h, 'zoe@new.test'), '554 5.7.1 <zoe@new.test>: Relay access denied');
  pg.psql('mail', `INSERT INTO users (email, password, home) VALUES ('zoe@new.test', '{PLAIN}x', '${path.join(mailBase, 'new.test', 'zoe')}')`);
  pg.psql('mail', "INSERT INTO domains VALUES ('new.test')");
  await waitFor('new.test accepted from the table', async () => /^250 /.test(await rcpt(h, 'zoe@new.test')) || undefined, 20000, 500);
  assert.equal(await rcpt(h, 'zoe@other.test'), '554 5.7.1 <zoe@other.test>: Relay access denied');
  const z = swaks(h, ['--port', String(h.inst.ports.smtp), '--from', 'someone@remote.test', '--to', 'zoe@new.test']);
  assert.equal(z.code, 0, z.out);
  await waitFor('delivered to zoe@new.test (qmgr routes the table\'s domain to local)', () => maildirNew('zoe@new.test').length === 1 || undefined, 30000);
});

test('smtpd_sender_login_maps from PostgreSQL: bob may send as sales@ (MAIL FROM and From:), not as other@ (553 5.7.1)', async () => {
  const h = hosts[0];
  pg.psql('mail', "INSERT INTO sender_logins VALUES ('sales@example.test', 'bob@example.test'), ('sales2@example.test', 'bob@example.test')");
  h.inst.cli(['user', 'add', 'bob@example.test', '--password-stdin'], { input: 'bob pw\n' });
  await configure(h, [`smtpd_sender_login_maps=${pgTable(h, 'senders.cf', "SELECT login FROM sender_logins WHERE address = '%s'")}`]);
  const auth = ['--port', String(h.inst.ports.submission), '-tls', '--auth', 'PLAIN', '--auth-user', 'bob@example.test', '--auth-password', 'bob pw', '--to', 'bob@example.test'];
  const ok = swaks(h, [...auth, '--from', 'sales@example.test', '--header', 'Subject: as sales']);
  assert.equal(ok.code, 0, ok.out);
  const refused = swaks(h, [...auth, '--from', 'other@example.test']);
  assert.match(refused.out, /<~\*\s+553 5\.7\.1 <other@example\.test>: Sender address rejected: not owned by user bob@example\.test/, refused.out);
  await waitFor('bob\'s mail as sales@ delivered (the From: check agrees)', () => maildirNew('bob@example.test').length === 1 || undefined, 30000);
});

test('transport_maps from PostgreSQL: a domain routed to smtp:[127.0.0.1]:PORT reaches that smtp-sink', async () => {
  const h = hosts[0];
  sink = await new SmtpSink('127.0.0.1', await freePort()).start();
  pg.psql('mail', `INSERT INTO transports VALUES ('routed.test', 'smtp:[127.0.0.1]:${sink.port}'), ('routed2.test', 'smtp:[127.0.0.1]:${sink.port}')`);
  await configure(h, [`transport_maps=${pgTable(h, 'transport.cf', "SELECT transport FROM transports WHERE domain = '%s'")}`]);
  sendmail(h, 'root@example.test', 'someone@routed.test', 'From: root@example.test\nTo: someone@routed.test\nSubject: routed\n\nhello\n');
  await waitFor('the sink got the routed message', () => sink.received().some((m) => /Subject: routed\r?$/m.test(m)) || undefined, 30000, 200);
});

test('dkim_signing_table from PostgreSQL: submitted mail is signed with the d= and s= of the table', async () => {
  const h = hosts[0];
  dkimKey = path.join(h.inst.etc, 'pgsel.key');
  fs.writeFileSync(dkimKey, generateKeyPairSync('ed25519').privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
  pg.psql('mail', `INSERT INTO dkim_keys VALUES ('example.test', 'pgsel', '${dkimKey}', 'ed25519-sha256')`);
  h.inst.cli(['user', 'add', 'dk@example.test', '--password-stdin'], { input: 'dk pw\n' });
  await configure(h, [`dkim_signing_table=${pgTable(h, 'dkim.cf', "SELECT selector || ' ' || keyfile || ' ' || algorithm FROM dkim_keys WHERE domain = '%s'")}`]);
  sendmail(h, 'root@example.test', 'dk@example.test', 'From: dk@example.test\nTo: dk@example.test\nSubject: signed\n\nhello\n');
  await waitFor('delivered to dk@', () => maildirNew('dk@example.test').length === 1 || undefined, 30000);
  const [file] = maildirNew('dk@example.test');
  const text = fs.readFileSync(path.join(mailBase, 'example.test', 'dk', 'Maildir', 'new', file), 'latin1');
  const sig = headerFields(text).find((f) => f.name === 'dkim-signature');
  assert.ok(sig, `a DKIM-Signature from the table:\n${text.slice(0, 1500)}`);
  assert.match(sig.value, /\bd=example\.test;/);
  assert.match(sig.value, /\bs=pgsel;/);
  assert.match(sig.value, /\ba=ed25519-sha256;/);
});

test('postern user passwd changes the SMTP AUTH password on both hosts (pgsql:)', async () => {
  hosts[0].inst.cli(['user', 'add', 'pat@example.test', '--password-stdin'], { input: 'old pw\n' });
  const r = hosts[1].inst.cli(['user', 'passwd', 'pat@example.test', '--password-stdin'], { input: 'new pw\n' });
  assert.match(r.stdout, /changed the password of pat@example\.test/);
  const login = (h: { inst: Instance; addr: string }, pw: string) => swaks(h, ['--port', String(h.inst.ports.submission), '-tls', '--auth', 'PLAIN',
    '--auth-user', 'pat@example.test', '--auth-password', pw, '--from', 'pat@example.test', '--to', 'pat@example.test', '--quit-after', 'AUTH']);
  for (const h of hosts) {
    await waitFor(`${h.addr} takes the new password`, () => /<~\s+235 /.test(login(h, 'new pw').out) || undefined, 20000, 500);
    assert.match(login(h, 'old pw').out, /<~\*\s+535 5\.7\.8 /, `${h.addr} refuses the old password`);
  }
  const none = hosts[0].inst.tryCli(['user', 'passwd', 'nobody@example.test', '--password-stdin'], { input: 'x\n' });
  assert.equal(none.code, 1);
  assert.match(none.stderr, /nobody@example\.test: no such user/);
});

test('PostgreSQL down: 451 4.3.0 for an uncached domain and sender login, delivery and DKIM signing deferred; back up, nothing lost', async () => {
  const h = hosts[0];
  pg.psql('mail', `INSERT INTO users (email, password, home) VALUES ('yan@later.test', '{PLAIN}x', '${path.join(mailBase, 'later.test', 'yan')}')`);
  pg.psql('mail', "INSERT INTO domains VALUES ('later.test')");
  // bob logs in while the database is up; his session stays open across the outage
  const s = await RawSmtp.connectTls(h.inst.ports.submissions, { host: h.addr });
  try {
    assert.match(await s.command('EHLO client.example.test'), /^250/);
    assert.match(await s.command(`AUTH PLAIN ${Buffer.from('\0bob@example.test\0bob pw').toString('base64')}`), /^235 /);
    pg.stop();
    try {
      assert.equal(await rcpt(h, 'yan@later.test'), '451 4.3.0 <yan@later.test>: Temporary lookup failure');
      assert.equal(await s.command('MAIL FROM:<sales2@example.test>'), '451 4.3.0 <sales2@example.test>: Sender address rejected: Temporary lookup failure');
      sendmail(h, 'root@example.test', 'someone@routed2.test', 'From: dk@example.test\nTo: someone@routed2.test\nSubject: while down\n\nhello\n');
      // cleanup cannot read the DKIM table: pickup keeps the message and retries (never sent unsigned)
      await h.inst.waitForLog('cleanup refused for now', (e) => e.service === 'pickup' && /Temporary lookup failure/.test(String(e.err)), 30000);
      assert.equal(sink.received().filter((m) => /Subject: while down/.test(m)).length, 0);
    } finally {
      pg.start();
    }
    // back up: the same session may now send as sales2@
    await waitFor('MAIL FROM sales2@ accepted', async () => {
      const r = await s.command('MAIL FROM:<sales2@example.test>');
      if (/^250 /.test(r)) return true;
      await s.command('RSET');
      return undefined;
    }, 30000, 1000);
  } finally {
    s.close();
  }
  const got = await waitFor('the message queued during the outage reached the sink, signed', () => sink.received().find((m) => /Subject: while down/.test(m)), 90000, 500);
  assert.match(headerFields(got).find((f) => f.name === 'dkim-signature')?.value ?? '', /\bs=pgsel;/);
  await waitFor('later.test accepted', async () => /^250 /.test(await rcpt(h, 'yan@later.test')) || undefined, 20000, 500);
  await waitFor('queue empty', () => h.inst.queueEmpty() || undefined, 30000, 500);
});

test('PostgreSQL down: transport_maps lookup defers in qmgr (4.3.0), the message stays queued and goes out when it is back', async () => {
  const h = hosts[0];
  // signing from a file again, so cleanup needs no database: only qmgr's route lookup does
  await configure(h, [`dkim_signing_table=${path.join(h.inst.etc, 'no-such.table')}`]);
  pg.stop();
  try {
    // submitted by root while the database is down (no alias tables): cleanup queues it, qmgr cannot route it
    sendmail(h, 'root@example.test', 'someone@routed2.test', 'From: root@mx.example.test\nTo: someone@routed2.test\nSubject: route while down\n\nhello\n');
    await h.inst.waitForLog('deferred by the transport lookup', (e) => e.status === 'deferred' && e.dsn === '4.3.0' && /someone@routed2\.test/.test(String(e.to)), 30000);
    assert.equal(h.inst.queueEmpty(), false, 'the message stays queued');
  } finally {
    pg.start();
  }
  await waitFor('delivered after the database is back', () => sink.received().some((m) => /Subject: route while down/.test(m)) || undefined, 90000, 500);
  await waitFor('queue empty', () => h.inst.queueEmpty() || undefined, 30000, 500);
});
