// The one lookup interface (packages/common/src/tables): the registry of table types,
// texthash and passwd-file behind it, the user database and its writer, and
// virtual_mailbox_maps = passwd-file:... read through the generic path by a running instance.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  openTable, openUserDb, openUserDbWriter, tableTypes, TableError, TableUnavailable, type Table, type UserDb,
} from '../../packages/common/dist/index.js';
import { Instance, RawSmtp, tempDir, waitFor } from './harness.js';

const fails = (re: RegExp, cls: Function = TableError) => (e: unknown) => {
  assert.ok(e instanceof cls, `${String(e)} is a ${cls.name}`);
  assert.match((e as Error).message, re);
  return true;
};

test('registry: an unknown type or a spec without one is an error naming the parameter and the type', () => {
  assert.deepEqual(tableTypes().sort(), ['passwd-file', 'pgsql', 'proxy', 'sqlite', 'texthash']);
  assert.throws(() => openTable('cdb:/etc/postern/virtual', 'virtual_alias_maps'),
    fails(/^virtual_alias_maps: cdb:\/etc\/postern\/virtual: unsupported table type "cdb" \(texthash, passwd-file, pgsql, sqlite, proxy\)$/));
  assert.throws(() => openUserDb('ldap:/etc/postern/users.cf'),
    fails(/^virtual_mailbox_maps: ldap:\/etc\/postern\/users.cf: unsupported table type "ldap"/));
  assert.throws(() => openTable('/etc/postern/aliases', 'alias_maps'),
    fails(/^alias_maps: "\/etc\/postern\/aliases" is not a lookup table \(type:source\)$/));
  assert.throws(() => openUserDb('texthash:/etc/postern/virtual'),
    fails(/^virtual_mailbox_maps: texthash:\/etc\/postern\/virtual: a texthash table cannot hold users \(passwd-file, pgsql, sqlite, proxy\)$/));
  assert.throws(() => openUserDbWriter('texthash:/etc/postern/virtual'), fails(/cannot add or remove users in a texthash table/));
  assert.equal(openTable(''), null, 'an empty parameter names no table');
});

test('texthash and passwd-file answer through the same Table interface', async () => {
  const dir = tempDir('tables');
  fs.writeFileSync(path.join(dir, 'virtual'), '# aliases\nSales@Example.test  alice@example.test,\n  bob@example.test\n');
  fs.writeFileSync(path.join(dir, 'users'),
    'alice@example.test:{PLAIN}secret:5000:5000::/var/vmail/example.test/alice::userdb_mail=mbox:~/mail:INBOX=~/mbox\n');
  const tables: Table[] = [openTable(`texthash:${dir}/virtual`)!, openTable(`passwd-file:${dir}/users`)!];
  assert.equal(openTable(`texthash:${dir}/virtual`), tables[0], 'opened once per spec and process');
  const answers = await Promise.all(tables.map((t) => t.lookup(t === tables[0] ? 'sales@example.test' : 'ALICE@example.test')));
  assert.deepEqual(answers, ['alice@example.test, bob@example.test', 'mbox:/var/vmail/example.test/alice/mbox']);
  assert.deepEqual(await Promise.all(tables.map((t) => t.lookup('nobody@example.test'))), [undefined, undefined]);
  assert.deepEqual(await tables[1].keys!(), ['alice@example.test']);
  fs.rmSync(dir, { recursive: true, force: true });
});

test('the user database: credentials and user info are separate lookups', async () => {
  const dir = tempDir('tables');
  fs.writeFileSync(path.join(dir, 'users'), 'alice@example.test:{PLAIN}secret:5000:5001::/var/vmail/example.test/alice::userdb_mail=maildir:~/Maildir\n');
  const db: UserDb = openUserDb(`passwd-file:${dir}/users`);
  assert.equal(db.file, path.join(dir, 'users'));
  assert.equal(await db.exists('Alice@Example.test'), true);
  assert.equal(await db.exists('bob@example.test'), false);
  assert.deepEqual(await db.credentials('alice@example.test'), { user: 'alice@example.test', password: '{PLAIN}secret' });
  const info = await db.userInfo('alice@example.test');
  assert.deepEqual(info, { user: 'alice@example.test', uid: 5000, gid: 5001, home: '/var/vmail/example.test/alice', extra: { userdb_mail: 'maildir:~/Maildir' } });
  assert.ok(!('password' in info!), 'user info carries no password');
  assert.equal(await db.credentials('bob@example.test'), undefined);
  fs.rmSync(dir, { recursive: true, force: true });
});

test('a table that cannot answer now rejects with TableUnavailable; opening it does not throw', async () => {
  const dir = tempDir('tables');
  const missing = openTable(`texthash:${dir}/none`)!;
  await assert.rejects(missing.lookup('x'), fails(/^texthash:.*\/none: cannot read: ENOENT/, TableUnavailable));
  fs.writeFileSync(path.join(dir, 'broken'), 'key-without-value\n');
  await assert.rejects(openTable(`texthash:${dir}/broken`)!.lookup('x'), fails(/^broken:1: expected "key value"/, TableUnavailable));
  fs.writeFileSync(path.join(dir, 'users'), 'no colon here\n');
  const db = openUserDb(`passwd-file:${dir}/users`);
  await assert.rejects(db.exists('a@example.test'), fails(new RegExp(`^${dir}/users:1: `), TableUnavailable));
  await assert.rejects(db.userInfo('a@example.test'), TableUnavailable, 'still failing until the file is fixed');
  assert.equal(await openUserDb(`passwd-file:${dir}/absent`).exists('a@example.test'), false, 'a missing users file is empty');
  fs.rmSync(dir, { recursive: true, force: true });
});

test('the writer adds and removes users; the database then finds them', async () => {
  const dir = tempDir('tables');
  const spec = `passwd-file:${dir}/users`;
  const w = openUserDbWriter(spec);
  await w.addUser('Carol@Example.test', '{PLAIN}pw', { uid: 7, gid: 8, home: '/var/vmail/example.test/carol', mailbox: 'mbox' });
  await assert.rejects(w.addUser('carol@example.test', '{PLAIN}pw', { uid: 7, gid: 8, home: '/h' }), /already exists/);
  const db = openUserDb(spec);
  assert.deepEqual(await db.userInfo('carol@example.test'),
    { user: 'carol@example.test', uid: 7, gid: 8, home: '/var/vmail/example.test/carol', extra: { userdb_mail: 'mbox:~/mail:INBOX=~/mbox' } });
  assert.equal(await w.deleteUser('CAROL@example.test'), true);
  assert.equal(await w.deleteUser('carol@example.test'), false);
  assert.equal(fs.readFileSync(path.join(dir, 'users'), 'utf8'), '');
  fs.rmSync(dir, { recursive: true, force: true });
});

test('virtual_mailbox_maps = passwd-file:FILE elsewhere: user add, user list, map query and RCPT all go through it', async (t) => {
  const a = await Instance.create({});
  t.after(() => a.destroy());
  const file = path.join(a.etc, 'people');
  a.cli(['config', 'set', `virtual_mailbox_maps=passwd-file:${file}`]);
  a.cli(['user', 'add', 'dana@example.test', '--password-stdin'], { input: 'pw-dana\n' });
  assert.match(fs.readFileSync(file, 'utf8'), /^dana@example\.test:\{SHA512-CRYPT\}/);
  assert.equal(a.cli(['map', 'query', 'virtual_mailbox_maps', 'Dana@example.test']).stdout,
    `maildir:${a.cli(['config', 'get', 'virtual_mailbox_base']).stdout.split(' = ')[1].trim()}/example.test/dana/Maildir\n`);
  const miss = a.tryCli(['map', 'query', 'virtual_mailbox_maps', 'nobody@example.test']);
  assert.equal(miss.code, 1);
  assert.equal(miss.stderr, 'postern: nobody@example.test: not found in virtual_mailbox_maps\n');
  assert.deepEqual(a.cli(['user', 'list']).stdout, 'dana@example.test\n');
  await a.start();
  const c = await RawSmtp.connect(a.ports.smtp);
  try {
    assert.match(await c.command('EHLO client.example.test'), /^250/);
    assert.match(await c.command('MAIL FROM:<someone@remote.test>'), /^250 /);
    assert.match(await c.command('RCPT TO:<dana@example.test>'), /^250 /);
    assert.match(await c.command('RCPT TO:<erin@example.test>'), /^550 5\.1\.1 /);
  } finally {
    c.close();
  }
});

test('a users file already malformed when smtpd starts: smtpd runs and answers RCPT with 451 4.3.0 until it is fixed', async (t) => {
  const a = await Instance.create({ users: [{ address: 'alice@example.test' }] });
  t.after(() => a.destroy());
  const users = path.join(a.etc, 'users');
  const good = fs.readFileSync(users, 'utf8');
  fs.appendFileSync(users, 'broken line\n');
  await a.start();
  const c = await RawSmtp.connect(a.ports.smtp);
  try {
    assert.match(await c.command('EHLO client.example.test'), /^250/);
    assert.match(await c.command('MAIL FROM:<someone@remote.test>'), /^250 /);
    assert.equal(await c.command('RCPT TO:<alice@example.test>'), '451 4.3.0 <alice@example.test>: Temporary lookup failure');
    fs.writeFileSync(users, good);
    await waitFor('RCPT accepted once the users file is fixed',
      async () => /^250 /.test(await c.command('RCPT TO:<alice@example.test>')) || null, 10000, 500);
  } finally {
    c.close();
  }
  await a.waitForLog('user table unavailable', (e) => e.msg === 'user table unavailable' && /users:\d+: /.test(e.err));
});
