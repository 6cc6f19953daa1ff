// Tests for packages/common password.ts and users.ts (run on the compiled output).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { sha512Crypt, sha256Crypt, hashPassword, verifyPassword } from '../../packages/common/dist/tables/password.js';
import {
  parsePasswdFile,
  formatPasswdLine,
  validateMailboxAddress,
  mailboxOf,
  addUser,
  deleteUser,
  UserTable,
  type UserEntry,
} from '../../packages/common/dist/tables/users.js';
import { waitFor, postern } from './harness.js';

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'postern-users-'));
}

// Drepper's SHA-crypt.txt test vectors: [setting, password, expected].
const SPEC_SHA512: [string, string, string][] = [
  ['$6$saltstring', 'Hello world!',
    '$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1'],
  ['$6$rounds=10000$saltstringsaltstring', 'Hello world!',
    '$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.'],
  ['$6$rounds=5000$toolongsaltstring', 'This is just a test',
    '$6$rounds=5000$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZxUhx1yxdYcz/e1JSbq3y6JMxxl8audkUEm0'],
  ['$6$rounds=1400$anotherlongsaltstring', 'a very much longer text to encrypt.  This one even stretches over morethan one line.',
    '$6$rounds=1400$anotherlongsalts$POfYwTEok97VWcjxIiSOjiykti.o/pQs.wPvMxQ6Fm7I6IoYN3CmLs66x9t0oSwbtEW7o7UmJEiDwGqd8p4ur1'],
  ['$6$rounds=77777$short', 'we have a short salt string but not a short password',
    '$6$rounds=77777$short$WuQyW2YR.hBNpjjRhpYD/ifIw05xdfeEyQoMxIXbkvr0gge1a1x3yRULJ5CCaUeOxFmtlcGZelFl5CxtgfiAc0'],
  ['$6$rounds=123456$asaltof16chars..', 'a short string',
    '$6$rounds=123456$asaltof16chars..$BtCwjqMJGx5hrJhZywWvt0RLE8uZ4oPwcelCjmw2kSYu.Ec6ycULevoBK25fs2xXgMNrCzIMVcgEJAstJeonj1'],
  ['$6$rounds=10$roundstoolow', 'the minimum number is still observed',
    '$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58jaTfF4ZEQpyUNGc0dqbpBYYBaHHrsX.'],
];

test('sha512Crypt matches the specification vectors', () => {
  for (const [setting, pw, expected] of SPEC_SHA512) assert.equal(sha512Crypt(pw, setting), expected, setting);
  // Bare salt + rounds arguments give the same results.
  assert.equal(sha512Crypt('Hello world!', 'saltstring'), SPEC_SHA512[0][2]);
  assert.equal(sha512Crypt('Hello world!', 'saltstringsaltstring', 10000), SPEC_SHA512[1][2]);
  // A complete stored hash works as the setting (that is how verification works).
  assert.equal(sha512Crypt('Hello world!', SPEC_SHA512[1][2]), SPEC_SHA512[1][2]);
});

test('sha256Crypt matches glibc', () => {
  assert.equal(sha256Crypt('Hello world!', '$5$saltstring'), '$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5');
});

test('sha512Crypt matches openssl passwd -6', () => {
  const cases: [string, string][] = [
    ['saltsalt', 'password'],
    ['x', 'p'],
    ['AbCdEfGh12345678', 'x'.repeat(200)], // password longer than the 64-byte digest
    ['./09AZaz', 'päßwörd ✓ with spaces'],
    ['rounds=10000$abc', 'secret'],
  ];
  for (const [salt, pw] of cases) {
    const expected = execFileSync('openssl', ['passwd', '-6', '-salt', salt, pw], { encoding: 'utf8' }).trim();
    assert.equal(sha512Crypt(pw, `$6$${salt}`), expected, `salt ${salt}`);
    if (!salt.startsWith('rounds=')) assert.equal(sha512Crypt(pw, salt), expected);
  }
  const expected5 = execFileSync('openssl', ['passwd', '-5', '-salt', 'saltsalt', 'password'], { encoding: 'utf8' }).trim();
  assert.equal(sha256Crypt('password', 'saltsalt'), expected5);
});

test('sha512Crypt defaults: random 16-char salt, 5000 rounds not written', () => {
  const h = sha512Crypt('pw');
  assert.match(h, /^\$6\$[./0-9A-Za-z]{16}\$[./0-9A-Za-z]{86}$/);
  assert.notEqual(sha512Crypt('pw'), h);
  assert.equal(sha512Crypt('pw', 'abc', 5000), sha512Crypt('pw', 'abc'));
  assert.match(sha512Crypt('pw', 'abc', 6000), /^\$6\$rounds=6000\$abc\$/);
  assert.throws(() => sha512Crypt('pw', 'a:b'));
});

test('hashPassword / verifyPassword', () => {
  const h = hashPassword('correct horse');
  assert.match(h, /^\{SHA512-CRYPT\}\$6\$/);
  assert.equal(verifyPassword('correct horse', h), true);
  assert.equal(verifyPassword('correct horsE', h), false);
  assert.equal(verifyPassword('', h), false);
  const crypt6 = sha512Crypt('pw', 'somesalt');
  assert.equal(verifyPassword('pw', `{CRYPT}${crypt6}`), true);
  assert.equal(verifyPassword('pw', crypt6), true); // no scheme = CRYPT, Dovecot's default
  assert.equal(verifyPassword('pw', `{sha512-crypt}${crypt6}`), true);
  assert.equal(verifyPassword('nope', `{CRYPT}${crypt6}`), false);
  assert.equal(verifyPassword('pw', `{CRYPT}!${crypt6}`), false); // locked
  assert.equal(verifyPassword('pw', `{SHA512-CRYPT}$6$somesalt$garbage`), false);
  assert.equal(verifyPassword('pw', `{SHA256-CRYPT}${crypt6}`), false);
  assert.equal(verifyPassword('Hello world!', `{SHA256-CRYPT}${sha256Crypt('Hello world!', 'saltstring')}`), true);
  assert.equal(verifyPassword('plain', '{PLAIN}plain'), true);
  assert.equal(verifyPassword('plain', '{PLAIN}plainx'), false);
  assert.equal(verifyPassword('plain', '{MD5}plain'), false);
  assert.equal(verifyPassword('plain', '{BLF-CRYPT}$2y$05$abc'), false);
});

const SAMPLE = [
  '# Postern users',
  '',
  'Alice@Example.ORG:{PLAIN}pw:5000:5001::/var/vmail/example.org/alice::userdb_mail=mbox:~/mail:INBOX=~/mbox quota',
  '  # indented comment',
  'bob@example.org:{PLAIN}x',
  'carol@example.org:{PLAIN}y:::gecos:/home/carol:/bin/false:',
  '',
].join('\n');

test('parsePasswdFile reads Dovecot passwd-file lines', () => {
  const es = parsePasswdFile(SAMPLE, 'users');
  assert.equal(es.length, 3);
  assert.deepEqual(es[0], {
    user: 'alice@example.org',
    password: '{PLAIN}pw',
    uid: 5000,
    gid: 5001,
    gecos: '',
    home: '/var/vmail/example.org/alice',
    shell: '',
    extra: { userdb_mail: 'mbox:~/mail:INBOX=~/mbox', quota: '' },
    line: 3,
  });
  assert.equal(es[1].uid, null);
  assert.equal(es[1].home, '');
  assert.deepEqual(es[2].extra, {});
  assert.equal(es[2].shell, '/bin/false');
  assert.equal(es[2].line, 6);
});

test('parse errors carry file:line', () => {
  const bad: [string, RegExp][] = [
    ['ok@d:{PLAIN}x\n\nnocolon', /^\/etc\/postern\/users:3: /],
    ['ok@d:{PLAIN}x:abc', /^\/etc\/postern\/users:1: uid "abc"/],
    ['ok@d:{PLAIN}x::-1', /^\/etc\/postern\/users:1: gid/],
    ['# c\n../x@d:{PLAIN}x', /^\/etc\/postern\/users:2: bad user name/],
    ['nodomain:{PLAIN}x', /^\/etc\/postern\/users:1: bad user name/],
    ['a@d:{PLAIN}x\nA@D:{PLAIN}y', /^\/etc\/postern\/users:2: duplicate user a@d \(first on line 1\)/],
    ['a@d:{PLAIN}x:1:1::relative/home::', /^\/etc\/postern\/users:1: home/],
    ['a@d:{PLAIN}x:1:1::/h::=v', /^\/etc\/postern\/users:1: extra field/],
  ];
  for (const [text, re] of bad) {
    assert.throws(() => parsePasswdFile(text, '/etc/postern/users'), (err: Error) => re.test(err.message), text);
  }
});

test('formatPasswdLine round-trips and refuses unreadable fields', () => {
  const e: Omit<UserEntry, 'line'> = {
    user: 'a@example.org',
    password: '{PLAIN}x',
    uid: 5000,
    gid: 5000,
    gecos: '',
    home: '/var/vmail/a',
    shell: '',
    extra: { userdb_mail: 'maildir:~/Maildir' },
  };
  const line = formatPasswdLine(e);
  assert.equal(line, 'a@example.org:{PLAIN}x:5000:5000::/var/vmail/a::userdb_mail=maildir:~/Maildir');
  assert.deepEqual(parsePasswdFile(line, 'f')[0], { ...e, line: 1 });
  assert.equal(formatPasswdLine({ ...e, uid: null, gid: null, extra: {} }), 'a@example.org:{PLAIN}x::::/var/vmail/a::');
  assert.throws(() => formatPasswdLine({ ...e, password: 'a:b' }));
  assert.throws(() => formatPasswdLine({ ...e, gecos: 'x\ny' }));
  assert.throws(() => formatPasswdLine({ ...e, extra: { k: 'a b' } }));
  assert.throws(() => formatPasswdLine({ ...e, uid: -1 }));
  assert.throws(() => formatPasswdLine({ ...e, user: '../a@d' }));
});

test('validateMailboxAddress rejects path escapes', () => {
  for (const ok of ['alice@example.org', 'a.b+tag@sub.example.org', 'a..b@d']) {
    assert.equal(validateMailboxAddress(ok), null, ok);
  }
  for (const bad of [
    '../x@d', 'a/b@d', 'a@d/..', 'a\0@d', '..@d', 'a@..', '.hidden@d', 'a@.d', '@d', 'a@', 'a',
    'a@b@c', 'a\n@d', 'a@d\x7f', `${'x'.repeat(256)}@d`,
  ]) {
    assert.equal(typeof validateMailboxAddress(bad), 'string', JSON.stringify(bad));
  }
});

test('mailboxOf interprets userdb_mail', () => {
  const base: UserEntry = {
    user: 'alice@example.org', password: '', uid: null, gid: null, gecos: '',
    home: '/var/vmail/example.org/alice', shell: '', extra: {}, line: 1,
  };
  assert.deepEqual(mailboxOf(base), { format: 'maildir', path: '/var/vmail/example.org/alice/Maildir' });
  assert.deepEqual(mailboxOf({ ...base, extra: { userdb_mail: 'mbox:~/mail:INBOX=~/mbox' } }),
    { format: 'mbox', path: '/var/vmail/example.org/alice/mbox' });
  assert.deepEqual(mailboxOf({ ...base, extra: { userdb_mail: 'maildir:/srv/mail/%d/%n/' } }),
    { format: 'maildir', path: '/srv/mail/example.org/alice/' });
  assert.deepEqual(mailboxOf({ ...base, extra: { userdb_mail: 'mbox:~/mail' } }),
    { format: 'mbox', path: '/var/vmail/example.org/alice/mail/inbox' });
  assert.throws(() => mailboxOf({ ...base, extra: { userdb_mail: 'sdbox:~/dbox' } }), /unsupported mail format/);
  assert.throws(() => mailboxOf({ ...base, extra: { userdb_mail: 'maildir:%{user}' } }), /unsupported variable/);
  assert.throws(() => mailboxOf({ ...base, home: '' }), /no home/);
});

test('addUser / deleteUser rewrite atomically and keep other lines', () => {
  const dir = tmpDir();
  const file = path.join(dir, 'users');
  addUser(file, 'Alice@Example.org', '{PLAIN}a', { uid: 5000, gid: 5000, home: '/var/vmail/example.org/alice' });
  assert.equal(fs.statSync(file).mode & 0o777, 0o640);
  assert.equal(fs.readFileSync(file, 'utf8'),
    'alice@example.org:{PLAIN}a:5000:5000::/var/vmail/example.org/alice::userdb_mail=maildir:~/Maildir\n');

  fs.writeFileSync(file, `# head comment\n${fs.readFileSync(file, 'utf8')}# tail comment`);
  fs.chmodSync(file, 0o600);
  addUser(file, 'bob@example.org', '{PLAIN}b', { uid: null, gid: null, home: '/home/bob', mailbox: 'mbox' });
  assert.equal(fs.statSync(file).mode & 0o777, 0o600); // existing mode kept
  assert.throws(() => addUser(file, 'BOB@example.org', '{PLAIN}c', { uid: 1, gid: 1, home: '/h' }), /already exists/);
  assert.throws(() => addUser(file, '../evil@example.org', '{PLAIN}c', { uid: 1, gid: 1, home: '/h' }), /bad address/);
  const bob = parsePasswdFile(fs.readFileSync(file, 'utf8'), file).find((e) => e.user === 'bob@example.org');
  assert.equal(bob?.extra.userdb_mail, 'mbox:~/mail:INBOX=~/mbox');
  assert.deepEqual(mailboxOf(bob!), { format: 'mbox', path: '/home/bob/mbox' });

  assert.equal(deleteUser(file, 'ALICE@example.org'), true);
  assert.equal(deleteUser(file, 'nobody@example.org'), false);
  assert.equal(fs.readFileSync(file, 'utf8'),
    '# head comment\n# tail comment\nbob@example.org:{PLAIN}b::::/home/bob::userdb_mail=mbox:~/mail:INBOX=~/mbox\n');
  assert.deepEqual(fs.readdirSync(dir), ['users']); // no temp files left behind
  fs.rmSync(dir, { recursive: true });
});

test('UserTable: missing file is empty, lookups are case-insensitive, reloads on change', async () => {
  const dir = tmpDir();
  const file = path.join(dir, 'users');
  const t = new UserTable(file);
  // checked at most once per interval: one whose interval is an hour never re-reads during this test
  const hourly = new UserTable(file, { minCheckIntervalMs: 3600 * 1000 });
  assert.deepEqual(t.list(), []);
  assert.equal(t.lookup('a@d'), undefined);
  assert.deepEqual(hourly.list(), []);

  fs.writeFileSync(file, 'a@d:{PLAIN}1\n');
  await waitFor('the table to notice the new file', () => t.lookup('A@D')?.password === '{PLAIN}1', 10000, 50);

  // An atomic replace (new inode) is noticed too.
  addUser(file, 'b@d', '{PLAIN}2', { uid: 1, gid: 1, home: '/h' });
  await waitFor('the table to notice the replaced file', () => t.lookup('b@d')?.password === '{PLAIN}2', 10000, 50);
  assert.equal(t.list().length, 2);
  assert.equal(hourly.lookup('a@d'), undefined, 'not re-read within its check interval');
  assert.deepEqual(hourly.list(), []);

  // A broken edit makes lookups fail (callers defer) until it is fixed.
  const fast = new UserTable(file, { minCheckIntervalMs: 0 });
  fs.appendFileSync(file, 'broken line\n');
  assert.throws(() => fast.lookup('a@d'), new RegExp(`^Error: ${file}:3: `));
  fs.writeFileSync(file, 'c@d:{PLAIN}3\n');
  assert.equal(fast.lookup('a@d'), undefined);
  assert.equal(fast.lookup('c@d')?.password, '{PLAIN}3');
  fs.rmSync(file);
  assert.deepEqual(fast.list(), []);
  fs.rmSync(dir, { recursive: true });
});

test('postern user passwd (passwd-file): replaces only the hash, keeps the line and the others; unknown user is an error', () => {
  const dir = tmpDir();
  try {
    const init = postern(['init', dir, '--hostname', 'mx.example.test', '--domain', 'example.test', '--unprivileged']);
    assert.equal(init.code, 0, init.stderr);
    const etc = path.join(dir, 'etc');
    for (const [u, pw] of [['ann@example.test', 'first'], ['ben@example.test', 'other']]) {
      const r = postern(['-c', etc, 'user', 'add', u, '--password-stdin', '--mailbox', 'mbox'], { input: `${pw}\n` });
      assert.equal(r.code, 0, r.stderr);
    }
    const file = path.join(etc, 'users');
    const before = parsePasswdFile(fs.readFileSync(file, 'utf8'), file);
    const r = postern(['-c', etc, 'user', 'passwd', 'Ann@Example.test', '--password-stdin'], { input: 'second\n' });
    assert.equal(r.code, 0, r.stderr);
    const after = parsePasswdFile(fs.readFileSync(file, 'utf8'), file);
    const ann = after.find((e) => e.user === 'ann@example.test')!;
    assert.ok(verifyPassword('second', ann.password), 'the new password');
    assert.ok(!verifyPassword('first', ann.password), 'not the old one');
    const { password: _p, ...rest } = ann;
    const { password: _q, ...was } = before.find((e) => e.user === 'ann@example.test')!;
    assert.deepEqual(rest, was, 'uid, gid, home and mailbox unchanged');
    assert.deepEqual(after.find((e) => e.user === 'ben@example.test'), before.find((e) => e.user === 'ben@example.test'));
    const none = postern(['-c', etc, 'user', 'passwd', 'cat@example.test', '--password-stdin'], { input: 'x\n' });
    assert.equal(none.code, 1);
    assert.match(none.stderr, /cat@example\.test: no such user/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
