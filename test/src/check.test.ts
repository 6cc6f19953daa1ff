// `postern check` finds each kind of mistake it claims to, names the file and line,
// and exits 1 on an error (0 with warnings only); `config get|set|show` behave like postconf.
import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { generateKeyPairSync } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { Instance } from './harness.js';

interface Complaint { level: 'error' | 'warning'; file: string; line: number; problem: string }

let inst: Instance;
/** The instance's configuration as `postern init` wrote it, restored before each test. */
const pristine = new Map<string, string>();

before(async () => {
  inst = await Instance.create({ domain: 'example.test', users: [{ address: 'alice@example.test' }] });
  inst.cli(['setup']); // the spool and mail root, as master makes them at start
  for (const f of ['main.cf', 'master.cf', 'users']) pristine.set(f, fs.readFileSync(path.join(inst.etc, f), 'utf8'));
});

after(async () => { await inst?.destroy(); });

beforeEach(() => {
  for (const [f, text] of pristine) fs.writeFileSync(path.join(inst.etc, f), text);
  fs.chmodSync(path.join(inst.spool, 'incoming'), 0o2750);
});

function check(): { code: number; complaints: Complaint[]; stderr: string } {
  const json = inst.tryCli(['check', '--json']);
  const text = inst.tryCli(['check']);
  assert.equal(json.code, text.code, 'the same exit status with and without --json');
  const complaints = json.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Complaint);
  return { code: json.code, complaints, stderr: text.stderr };
}

/** Append lines to a file of the instance; returns the line number of the first one. */
function append(file: string, ...lines: string[]): number {
  const p = path.isAbsolute(file) ? file : path.join(inst.etc, file);
  const old = fs.existsSync(p) ? fs.readFileSync(p, 'utf8') : '';
  const text = old === '' || old.endsWith('\n') ? old : `${old}\n`;
  fs.writeFileSync(p, text + lines.map((l) => `${l}\n`).join(''));
  return text.split('\n').length; // lines before + 1
}

function find(complaints: Complaint[], level: Complaint['level'], file: string, pattern: RegExp): Complaint {
  const hit = complaints.find((c) => c.level === level && c.file === file && pattern.test(c.problem));
  assert.ok(hit, `expected ${level} in ${file} matching ${pattern}; got ${JSON.stringify(complaints, null, 1)}`);
  return hit;
}

test('a fresh instance has nothing to complain about', () => {
  const r = check();
  assert.deepEqual(r.complaints, []);
  assert.equal(r.code, 0);
  assert.equal(r.stderr, '');
});

test('a bad value is an error at its main.cf line; every one is reported, not just the first', () => {
  const line = append('main.cf', 'message_size_limit = 10M', 'smtpd_tls_wrappermode = maybe');
  const r = check();
  assert.equal(r.code, 1);
  const mainCf = path.join(inst.etc, 'main.cf');
  assert.equal(find(r.complaints, 'error', mainCf, /message_size_limit: "10M" is not a whole number/).line, line);
  assert.equal(find(r.complaints, 'error', mainCf, /smtpd_tls_wrappermode: "maybe" is not yes or no/).line, line + 1);
  assert.match(r.stderr, new RegExp(`^${mainCf.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:${line}: error: message_size_limit`, 'm'));
  assert.match(r.stderr, /postern check: 2 error\(s\), 0 warning\(s\)/);
});

test('an unknown parameter is a warning, and warnings alone exit 0', () => {
  const line = append('main.cf', 'mesage_size_limit = 1000', 'myorigin = $mydomian');
  const r = check();
  const mainCf = path.join(inst.etc, 'main.cf');
  assert.equal(find(r.complaints, 'warning', mainCf, /unknown parameter mesage_size_limit/).line, line);
  assert.equal(find(r.complaints, 'warning', mainCf, /\$mydomian is not a parameter/).line, line + 1);
  assert.ok(r.complaints.every((c) => c.level === 'warning'));
  assert.equal(r.code, 0);
});

test('a $name loop is an error on a line of the loop', () => {
  const line = append('main.cf', 'myorigin = $mydomain', 'mydomain = $myorigin');
  const r = check();
  assert.equal(r.code, 1);
  const hit = find(r.complaints, 'error', path.join(inst.etc, 'main.cf'), /nests too deep \(a loop\?\)/);
  assert.ok(hit.line === line || hit.line === line + 1, `line ${hit.line}`);
});

test('master.cf: an unknown command, a bad -o value and a missing qmgr are each reported', () => {
  const masterCf = path.join(inst.etc, 'master.cf');
  const lines = pristine.get('master.cf')!.split('\n');
  const qmgr = lines.findIndex((l) => /^qmgr\s/.test(l));
  lines.splice(qmgr, 1); // no qmgr
  fs.writeFileSync(masterCf, lines.join('\n'));
  const line = append('master.cf', 'filter   unix  -  1  nosuchd', '127.0.0.1:2599  inet  -  1  smtpd  -o smtpd_timeout=forever');
  const r = check();
  assert.equal(r.code, 1);
  assert.equal(find(r.complaints, 'error', masterCf, /unknown service command "nosuchd"/).line, line);
  assert.equal(find(r.complaints, 'error', masterCf, /smtpd_timeout: "forever" is not a time/).line, line + 1);
  assert.equal(find(r.complaints, 'error', masterCf, /no qmgr service defined/).line, 0);
});

test('a malformed texthash line is an error at that line of the table', () => {
  const table = path.join(inst.etc, 'sasl_passwd');
  fs.writeFileSync(table, '# relay credentials\n[relay.example.test]:587 user:secret\nkey-without-value\n', { mode: 0o600 });
  const line = append('main.cf', `smtp_sasl_password_maps = texthash:${table}`);
  try {
    const r = check();
    assert.equal(r.code, 1);
    assert.equal(find(r.complaints, 'error', table, /expected "key value", found "key-without-value"/).line, 3);
    // a table that does not exist is reported where the parameter names it
    fs.rmSync(table);
    const r2 = check();
    assert.equal(find(r2.complaints, 'error', path.join(inst.etc, 'main.cf'), /sasl_passwd does not exist/).line, line);
    assert.equal(r2.code, 1);
  } finally { fs.rmSync(table, { force: true }); }
});

test('a malformed users line is an error at its line of the users file', () => {
  const users = path.join(inst.etc, 'users');
  const line = append('users', 'bob-without-a-domain:{PLAIN}secret:1000:1000::/home/bob::');
  const r = check();
  assert.equal(r.code, 1);
  assert.equal(find(r.complaints, 'error', users, /bad user name: .* must contain exactly one "@"/).line, line);
});

test('a key that does not match the certificate, and a missing key, are errors at the smtpd_tls_key_file line', () => {
  const other = path.join(inst.etc, 'tls', 'other-key.pem');
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  fs.writeFileSync(other, privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
  const mainCf = path.join(inst.etc, 'main.cf');
  try {
    const line = append('main.cf', `smtpd_tls_key_file = ${other}`);
    const r = check();
    assert.equal(r.code, 1);
    assert.equal(find(r.complaints, 'error', mainCf, /other-key\.pem does not match the certificate/).line, line);

    fs.writeFileSync(mainCf, pristine.get('main.cf')!);
    const line2 = append('main.cf', 'smtpd_tls_key_file = $config_directory/tls/missing-key.pem');
    const r2 = check();
    assert.equal(r2.code, 1);
    assert.equal(find(r2.complaints, 'error', mainCf, /missing-key\.pem does not exist/).line, line2);
  } finally { fs.rmSync(other, { force: true }); }
});

test('a DKIM signing table row whose key file is missing is an error at that row', () => {
  const dir = path.join(inst.etc, 'dkim');
  fs.mkdirSync(dir, { recursive: true });
  const table = path.join(dir, 'signing.table');
  fs.writeFileSync(table, '# domain selector keyfile\nexample.test sel1 /nonexistent/example.test.sel1.key\n');
  try {
    const r = check();
    assert.equal(r.code, 1);
    assert.equal(find(r.complaints, 'error', table, /key file \/nonexistent\/example\.test\.sel1\.key does not exist/).line, 2);
  } finally { fs.rmSync(dir, { recursive: true, force: true }); }
});

test('a spool directory with the wrong mode is an error naming the directory', () => {
  const incoming = path.join(inst.spool, 'incoming');
  fs.chmodSync(incoming, 0o777);
  const r = check();
  assert.equal(r.code, 1);
  const hit = find(r.complaints, 'error', incoming, /mode 0777, expected 02750/);
  assert.equal(hit.line, 0);
  assert.match(r.stderr, new RegExp(`^${incoming.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: error: mode 0777`, 'm'));
  // check only reports: the mode is still wrong
  assert.equal(fs.statSync(incoming).mode & 0o7777, 0o777);
});

test('config set refuses a wrong value, even one wrong only once expanded, and leaves main.cf as it was (postconf -e)', () => {
  const mainCf = path.join(inst.etc, 'main.cf');
  const before = fs.readFileSync(mainCf, 'utf8');
  const bad = inst.tryCli(['config', 'set', 'message_size_limit=lots']);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /message_size_limit: "lots" is not a whole number/);
  const expanded = inst.tryCli(['config', 'set', 'message_size_limit=$myhostname']);
  assert.equal(expanded.code, 1);
  assert.match(expanded.stderr, /message_size_limit: "mx\.example\.test" is not a whole number/);
  assert.equal(inst.tryCli(['config', 'set', 'no_such_parameter=1']).code, 1);
  assert.equal(fs.readFileSync(mainCf, 'utf8'), before);

  inst.cli(['config', 'set', 'message_size_limit=20480000', 'myorigin=$myhostname']);
  const after = fs.readFileSync(mainCf, 'utf8');
  assert.match(after, /^message_size_limit = 20480000$/m);
  assert.ok(after.startsWith(before.split('\n')[0]), 'comments and order kept');
  assert.equal(inst.cli(['config', 'get', 'myorigin']).stdout, 'myorigin = mx.example.test\n', 'get expands (postconf -x)');
});

test('config show lists main.cf settings sorted (postconf -n); --defaults every parameter (postconf -d)', () => {
  const shown = inst.cli(['config', 'show']).stdout.trim().split('\n');
  const names = shown.map((l) => l.split(' = ')[0]);
  assert.deepEqual(names, [...names].sort());
  assert.ok(names.includes('myhostname') && names.includes('unprivileged'));
  assert.ok(!names.includes('smtpd_timeout'), 'a parameter left at its default is not shown');
  assert.ok(shown.includes('mydestination = $myhostname, localhost.$mydomain, localhost, $mydomain'), 'shown as written, unexpanded');
  const defaults = inst.cli(['config', 'show', '--defaults']).stdout;
  assert.match(defaults, /^smtpd_timeout = 300s$/m);
  assert.match(defaults, /^queue_directory = \/var\/spool\/postern$/m);
  assert.equal(inst.tryCli(['config', 'get', 'no_such_parameter']).code, 1);
});

test('newaliases rebuilds nothing (texthash) but reports a malformed alias line with its file and line', () => {
  const aliases = path.join(inst.etc, 'aliases');
  fs.writeFileSync(aliases, '# aliases\npostmaster alice@example.test\nbroken-line\n');
  try {
    const newaliases = path.join(__dirname, '..', '..', 'bin', 'newaliases');
    const ok = spawnSync(process.execPath, [newaliases, '-C', inst.etc], { encoding: 'utf8' });
    assert.equal(ok.status, 0, `no alias tables configured: ${ok.stderr}`);
    inst.cli(['config', 'set', `alias_maps=texthash:${aliases}`]);
    const bad = spawnSync(process.execPath, [newaliases, '-C', inst.etc], { encoding: 'utf8' });
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, new RegExp(`^newaliases: ${aliases.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:3: error: expected "key value"`, 'm'));
    const r = check(); // postern check reads the same table
    assert.equal(find(r.complaints, 'error', aliases, /expected "key value"/).line, 3);
  } finally { fs.rmSync(aliases, { force: true }); }
});
