// sqlite: tables (issue 12): the table suite of pgsql.test on one host with the users in
// an SQLite database (docs/sql/sqlite.sql), read through proxymap.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { openTable, openUserDb, openUserDbWriter, TableUnavailable } from '../../packages/common/dist/index.js';
import { Instance, requireTool, run, tempDir, waitFor, rcptReply, freePort } from './harness.js';
import { SmtpSink } from './smtp-sink.js';
import { reloadAndWait } from './dovecot.js';

const ROOT = path.resolve(__dirname, '..', '..');
let inst: Instance;
let dbDir: string;
let db: string;
let cf: string;

const rcpt = (to: string) => rcptReply(inst.ports.smtp, to);

before(async () => {
  dbDir = tempDir('sqlite');
  db = path.join(dbDir, 'mail.sqlite');
  const r = run(requireTool('sqlite3'), [db], { input: fs.readFileSync(path.join(ROOT, 'docs', 'sql', 'sqlite.sql')) });
  assert.equal(r.code, 0, r.stderr);
  inst = await Instance.create({ main: { proxymap_cache_ttl: '2s' } });
  cf = path.join(inst.etc, 'users.cf');
  fs.writeFileSync(cf, `# the user database (docs/tables.md)\ndbpath = ${db}\nquery = SELECT mail FROM users WHERE email = '%s'\n`);
  inst.cli(['config', 'set', `virtual_mailbox_maps=sqlite:${cf}`]);
  await inst.start();
});

after(async () => {
  await inst?.destroy();
  if (dbDir) fs.rmSync(dbDir, { recursive: true, force: true });
});

test('sqlite: user database, table and writer answer from the CLI side; a missing database is unavailable', async () => {
  const spec = `sqlite:${cf}`;
  await openUserDbWriter(spec).addUser('Direct@Example.test', '{PLAIN}pw', { uid: 5000, gid: 5001, home: '/var/vmail/example.test/direct', mailbox: 'mbox' });
  const users = openUserDb(spec);
  assert.equal(await users.exists('direct@example.test'), true);
  assert.deepEqual(await users.credentials('DIRECT@example.test'), { user: 'direct@example.test', password: '{PLAIN}pw' });
  assert.deepEqual(await users.userInfo('direct@example.test'),
    { user: 'direct@example.test', uid: 5000, gid: 5001, home: '/var/vmail/example.test/direct', extra: { userdb_mail: 'mbox:~/mail:INBOX=~/mbox' } });
  assert.equal(await openTable(spec)!.lookup('direct@example.test'), 'mbox:~/mail:INBOX=~/mbox');
  assert.equal(await users.exists("x' OR '1'='1"), false, 'the key is quoted, not SQL');
  await assert.rejects(openUserDbWriter(spec).addUser('direct@example.test', '{PLAIN}x', { uid: null, gid: null, home: '/x' }), /already exists/);
  assert.equal(await openUserDbWriter(spec).deleteUser('direct@example.test'), true);
  assert.equal(await openUserDbWriter(spec).deleteUser('direct@example.test'), false);
  const other = path.join(dbDir, 'typo.cf');
  fs.writeFileSync(other, `dbpath = ${dbDir}/no-such.sqlite\n`);
  await assert.rejects(openUserDb(`sqlite:${other}`).exists('a@example.test'),
    (e: unknown) => e instanceof TableUnavailable && /no-such\.sqlite does not exist$/.test((e as Error).message));
  assert.equal(fs.existsSync(path.join(dbDir, 'no-such.sqlite')), false, 'a lookup never creates a database');
});

test('sqlite: a user added is accepted, delivered and can AUTH; deleted, refused with 550 5.1.1', async () => {
  inst.cli(['user', 'add', 'alice@example.test', '--password-stdin'], { input: 'correct horse\n' });
  assert.match(inst.cli(['user', 'list']).stdout, /^alice@example\.test$/m);
  assert.match(inst.cli(['map', 'query', `sqlite:${cf}`, 'alice@example.test']).stdout, /^maildir:~\/Maildir$/m);
  const r = run(requireTool('swaks'), ['--timeout', '20', '--server', '127.0.0.1', '--port', String(inst.ports.submission), '-tls',
    '--auth', 'PLAIN', '--auth-user', 'alice@example.test', '--auth-password', 'correct horse', '--from', 'alice@example.test', '--to', 'alice@example.test']);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /<~\s+235 /);
  await waitFor('delivered', () => inst.delivered('alice@example.test').length === 1 || undefined, 30000);
  inst.cli(['user', 'del', 'alice@example.test']);
  await waitFor('the deleted user is refused', async () => /^550 5\.1\.1 /.test(await rcpt('alice@example.test')) || undefined, 20000, 500);
});

test('sqlite: database gone: 451 4.3.0 at RCPT, queued mail stays queued; back: delivered, nothing lost', async () => {
  inst.cli(['user', 'add', 'carol@example.test', '--password-stdin'], { input: 'pw\n' });
  inst.cli(['user', 'add', 'dave@example.test', '--password-stdin'], { input: 'pw\n' });
  fs.renameSync(db, `${db}.away`);
  try {
    assert.equal(await rcpt('dave@example.test'), '451 4.3.0 <dave@example.test>: Temporary lookup failure');
    const s = run(process.execPath, [path.join(ROOT, 'bin', 'sendmail'), '-C', inst.etc, '-f', 'root@example.test', 'carol@example.test'],
      { input: 'Subject: queued\n\nwhile the database is away\n', cwd: '/' });
    assert.equal(s.code, 0, s.stderr);
    await inst.waitForLog('carol deferred', (e) => e.status === 'deferred' && /carol@example\.test/.test(String(e.to)), 30000);
    assert.equal(inst.queueEmpty(), false);
    assert.equal(inst.delivered('carol@example.test').length, 0);
  } finally {
    fs.renameSync(`${db}.away`, db);
  }
  await waitFor('the queued message delivered', () => inst.delivered('carol@example.test').length === 1 || undefined, 60000, 500);
  await waitFor('queue empty', () => inst.queueEmpty() || undefined, 30000, 500);
  assert.match(await rcpt('dave@example.test'), /^250 /);
});

test('sqlite: virtual_alias_maps = proxy:sqlite:... (Postfix\'s spelling) from the same database: smtpd accepts the alias, cleanup expands it', async () => {
  inst.cli(['user', 'add', 'gina@example.test', '--password-stdin'], { input: 'pw\n' });
  const r = run(requireTool('sqlite3'), [db, "INSERT INTO aliases VALUES ('sales@example.test', 'gina@example.test')"]);
  assert.equal(r.code, 0, r.stderr);
  const aliases = path.join(inst.etc, 'aliases.cf');
  fs.writeFileSync(aliases, `dbpath = ${db}\nquery = SELECT destination FROM aliases WHERE address = '%s'\n`);
  inst.cli(['config', 'set', `virtual_alias_maps=proxy:sqlite:${aliases}`]);
  inst.cli(['reload']);
  await waitFor('the alias accepted', async () => /^250 /.test(await rcpt('sales@example.test')) || undefined, 20000, 500);
  const s = run(requireTool('swaks'), ['--timeout', '20', '--server', '127.0.0.1', '--port', String(inst.ports.smtp),
    '--from', 'someone@remote.test', '--to', 'sales@example.test']);
  assert.equal(s.code, 0, s.stdout + s.stderr);
  await waitFor('delivered to the alias target', () => inst.delivered('gina@example.test').length === 1 || undefined, 30000);
});

test('postern check: a broken or world-readable sqlite:/pgsql: file is reported with file and line before start', () => {
  const bad = path.join(inst.etc, 'broken.cf');
  fs.writeFileSync(bad, `dbpath = ${db}\nselect_field = mail\n`, { mode: 0o644 });
  fs.chmodSync(bad, 0o644);
  inst.cli(['config', 'set', `virtual_alias_maps=sqlite:${bad}`]);
  try {
    const r = inst.tryCli(['check', '--json']);
    const complaints = r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l));
    assert.equal(r.code, 1, r.stdout);
    assert.ok(complaints.some((c) => c.level === 'error' && c.file === bad && c.line === 2 && /unknown parameter "select_field"/.test(c.problem)), r.stdout);
    assert.ok(complaints.some((c) => c.level === 'warning' && c.file === bad && /every user can read it/.test(c.problem)), r.stdout);
  } finally {
    inst.cli(['config', 'set', 'virtual_alias_maps=']);
  }
});

test('postern check: a database table with no proxymap in master.cf is an error at the parameter', () => {
  const mcf = path.join(inst.etc, 'master.cf');
  const before = fs.readFileSync(mcf, 'utf8');
  fs.writeFileSync(mcf, before.replace(/^proxymap\s.*\n/m, ''));
  try {
    const r = inst.tryCli(['check', '--json']);
    const complaints = r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l));
    assert.equal(r.code, 1, r.stdout);
    assert.ok(complaints.some((c) => c.level === 'error' && c.file === path.join(inst.etc, 'main.cf') && c.line > 0
      && /virtual_mailbox_maps: sqlite: tables are read through the proxymap service, which master\.cf does not run/.test(c.problem)), r.stdout);
  } finally {
    fs.writeFileSync(mcf, before);
  }
});

/** An sqlite: table file over the test's database with one query. */
function sqliteTable(name: string, query: string): string {
  const f = path.join(inst.etc, name);
  fs.writeFileSync(f, `dbpath = ${db}\nquery = ${query}\n`);
  return `sqlite:${f}`;
}

function sql(statement: string): void {
  const r = run(requireTool('sqlite3'), [db, statement]);
  assert.equal(r.code, 0, r.stderr);
}

const submit = (user: string, pw: string, from: string, extra: string[] = []) => {
  const r = run(requireTool('swaks'), ['--timeout', '20', '--server', '127.0.0.1', '--port', String(inst.ports.submission), '-tls',
    '--auth', 'PLAIN', '--auth-user', user, '--auth-password', pw, '--from', from, '--to', user, ...extra]);
  return { code: r.code, out: r.stdout + r.stderr };
};

test('sqlite: postern user passwd changes the SMTP AUTH password', async () => {
  inst.cli(['user', 'add', 'pat@example.test', '--password-stdin'], { input: 'old pw\n' });
  assert.match(inst.cli(['user', 'passwd', 'pat@example.test', '--password-stdin'], { input: 'new pw\n' }).stdout, /changed the password of pat@example\.test/);
  await waitFor('the new password works', () => /<~\s+235 /.test(submit('pat@example.test', 'new pw', 'pat@example.test', ['--quit-after', 'AUTH']).out) || undefined, 20000, 500);
  assert.match(submit('pat@example.test', 'old pw', 'pat@example.test', ['--quit-after', 'AUTH']).out, /<~\*\s+535 5\.7\.8 /);
});

test('sqlite: virtual_mailbox_domains, smtpd_sender_login_maps and transport_maps from the database; gone: 451 4.3.0 and deferral, back: delivered', async () => {
  const sink = await new SmtpSink('127.0.0.1', await freePort()).start();
  try {
    inst.cli(['user', 'add', 'bob@example.test', '--password-stdin'], { input: 'bob pw\n' });
    sql(`INSERT INTO transports VALUES ('routed.test', 'smtp:[127.0.0.1]:${sink.port}'), ('routed2.test', 'smtp:[127.0.0.1]:${sink.port}'); INSERT INTO sender_logins VALUES ('@sales.test', 'bob@example.test');`
      + ` INSERT INTO users (email, password, home) VALUES ('zoe@new.test', '{PLAIN}x', '${path.join(inst.dir, 'mail', 'new.test', 'zoe')}');`);
    // the test's client is an outsider (relaying refused; no reverse-DNS check: there is no DNS here)
    inst.cli(['config', 'set', 'mynetworks=127.0.0.99/32', 'smtpd_client_restrictions=',
      `virtual_mailbox_domains=example.test, ${sqliteTable('domains.cf', "SELECT domain FROM domains WHERE domain = '%s'")}`,
      `smtpd_sender_login_maps=${sqliteTable('senders.cf', "SELECT login FROM sender_logins WHERE address = '%s'")}`,
      `transport_maps=${sqliteTable('transport.cf', "SELECT transport FROM transports WHERE domain = '%s'")}`]);
    const { smtp, submission, submissions } = inst.ports;
    await reloadAndWait(inst, [...[smtp, submission, submissions].map((p) => `smtpd[127.0.0.1:${p}]`), 'cleanup', 'qmgr', 'smtp', 'proxymap']);
    assert.equal(await rcpt('zoe@new.test'), '554 5.7.1 <zoe@new.test>: Relay access denied');
    sql("INSERT INTO domains VALUES ('new.test')");
    await waitFor('new.test accepted from the table', async () => /^250 /.test(await rcpt('zoe@new.test')) || undefined, 20000, 500);
    const ok = submit('bob@example.test', 'bob pw', 'info@sales.test', ['--quit-after', 'MAIL']);
    assert.match(ok.out, /<~\s+250 /, ok.out);
    assert.match(submit('bob@example.test', 'bob pw', 'info@other.test', ['--quit-after', 'MAIL']).out,
      /<~\*\s+553 5\.7\.1 <info@other\.test>: Sender address rejected: not owned by user bob@example\.test/);
    const s = run(process.execPath, [path.join(ROOT, 'bin', 'sendmail'), '-C', inst.etc, '-f', 'root@example.test', 'someone@routed.test'],
      { input: 'Subject: routed by sqlite\n\nhello\n', cwd: '/' });
    assert.equal(s.code, 0, s.stderr);
    await waitFor('the sink got the routed message', () => sink.received().some((m) => /Subject: routed by sqlite/.test(m)) || undefined, 30000, 200);

    fs.renameSync(db, `${db}.away`);
    try {
      assert.equal(await rcpt('yan@later.test'), '451 4.3.0 <yan@later.test>: Temporary lookup failure');
      assert.match(submit('bob@example.test', 'bob pw', 'info@later.test', ['--quit-after', 'MAIL']).out, /<~\*\s+45\d 4\.\d\.\d /,
        'no 5xx while the database is gone (AUTH or MAIL answers 4xx)');
      const q = run(process.execPath, [path.join(ROOT, 'bin', 'sendmail'), '-C', inst.etc, '-f', 'root@example.test', 'someone@routed2.test'],
        { input: 'Subject: routed while gone\n\nhello\n', cwd: '/' });
      assert.equal(q.code, 0, q.stderr);
      await inst.waitForLog('deferred by the transport lookup', (e) => e.status === 'deferred' && e.dsn === '4.3.0' && /someone@routed2\.test/.test(String(e.to)), 30000);
      assert.equal(inst.queueEmpty(), false);
    } finally {
      fs.renameSync(`${db}.away`, db);
    }
    await waitFor('delivered when the database is back', () => sink.received().some((m) => /Subject: routed while gone/.test(m)) || undefined, 60000, 500);
    await waitFor('queue empty', () => inst.queueEmpty() || undefined, 30000, 500);
  } finally {
    await sink.stop();
  }
});
