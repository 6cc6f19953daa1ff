/**
 * What cleanup takes from its clients (issue 8, items 2, 3, 8 and 9), on a
 * real sandbox instance:
 * - frames sent straight to private/cleanup, as a compromised smtpd would:
 *   fields it may not set, CR/LF, over-long values, wrong types, __proto__,
 *   notes that would rewrite the envelope; each refused, nothing queued;
 * - the header section: incoming X-Spam-*, X-Postern-Quarantine: and forged
 *   Authentication-Results: go whatever the size (header_size_limit);
 * - hopcount_limit: 50 Received: fields is a loop (554 5.4.6), 49 is not;
 * - From: ownership before DKIM signing (smtpd_reject_header_from_mismatch),
 *   for AUTH submissions and for sendmail.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { randomUUID } from 'node:crypto';
import { Instance, RawSmtp, ROOT, IS_ROOT, run, runAsync, requireTool, tempDir, waitFor, RunResult, headerFields } from './harness.js';
import { TestDnsServer } from './dns-server.js';
import { validate, SchemaError, Schema } from '../../packages/common/dist/ipc/schema.js';

const HOST = 'mx.example.test';
const ALICE = 'alice@example.test';
const BOB = 'bob@example.test';
const CAROL = 'carol@example.test';
const BOSS = 'boss@second.example';
/** The local user nobody's address (sendmail's sender as nobody): a mailbox, so the DSN it gets can be read. */
const NOBODY = 'nobody@example.test';
const PASSWORD = 'correct horse battery staple';

// ------------------------------------------------------------------ helpers

/** One frame: type byte, uint32 length, payload (written raw so a frame can say anything, __proto__ included). */
function frame(type: string, payload: Buffer | string = Buffer.alloc(0)): Buffer {
  const body = Buffer.isBuffer(payload) ? payload : Buffer.from(payload);
  const head = Buffer.alloc(5);
  head.write(type, 0, 'latin1');
  head.writeUInt32BE(body.length, 1);
  return Buffer.concat([head, body]);
}

/** Sends a whole conversation to a cleanup socket; the JSON reply. */
async function converse(socket: string, frames: Buffer[]): Promise<any> {
  const s = net.createConnection(socket);
  await new Promise<void>((res, rej) => { s.once('connect', res); s.once('error', rej); });
  const chunks: Buffer[] = [];
  const done = new Promise<void>((res) => { s.on('data', (d) => chunks.push(d)); s.on('close', () => res()); s.on('error', () => res()); });
  s.write(Buffer.concat(frames));
  const timer = setTimeout(() => s.destroy(), 15000);
  await done;
  clearTimeout(timer);
  const buf = Buffer.concat(chunks);
  assert.ok(buf.length >= 5 && buf[0] === 0x4a, `a JSON reply from cleanup (got ${buf.length} bytes)`);
  return JSON.parse(buf.subarray(5, 5 + buf.readUInt32BE(1)).toString('utf8'));
}

/** A message request with raw JSON text for the envelope, the message, the end. */
function conversation(envelopeJson: string, message: string, extra: Buffer[] = []): Buffer[] {
  return [frame('J', `{"type":"message","envelope":${envelopeJson}}`), frame('D', message.replace(/\r?\n/g, '\r\n')), ...extra, frame('E')];
}

const all = (text: string, name: string) => headerFields(text).filter((h) => h.name === name).map((h) => h.value);

/** Every delivered copy in any of these mailboxes that contains the marker. */
function copiesWith(inst: Instance, marker: string, mailboxes = [ALICE, BOB, CAROL]): string[] {
  return mailboxes.flatMap((m) => inst.delivered(m)).map((f) => fs.readFileSync(f, 'utf8')).filter((t) => t.includes(marker));
}

/** One message over SMTP; the reply to the end of DATA. */
async function smtpSend(inst: Instance, o: { from: string; to: string; message: string }): Promise<string> {
  const c = await waitFor('smtpd to accept connections', () => RawSmtp.connect(inst.ports.smtp));
  try {
    for (const [line, code] of [['EHLO client.example.net', '250'], [`MAIL FROM:<${o.from}>`, '250'], [`RCPT TO:<${o.to}>`, '250'], ['DATA', '354']]) {
      const reply = await c.command(line);
      assert.ok(reply.startsWith(code), `${line}: ${reply}`);
    }
    const reply = await c.command(`${o.message.replace(/\r?\n/g, '\r\n').replace(/^\./gm, '..')}\r\n.`);
    await c.command('QUIT');
    return reply;
  } finally {
    c.close();
  }
}

/** swaks (STARTTLS + AUTH on the submission port), without blocking the test DNS server's event loop. */
async function swaks(inst: Instance, o: { from: string; to: string; message: string; user: string }): Promise<RunResult> {
  const dir = tempDir('swaks');
  try {
    const file = path.join(dir, 'message');
    fs.writeFileSync(file, o.message.replace(/\r\n/g, '\n').replace(/\n$/, ''));
    return await runAsync(requireTool('swaks'), ['--server', '127.0.0.1', '--port', String(inst.ports.submission),
      '--helo', 'client.example.test', '--from', o.from, '--to', o.to, '--data', `@${file}`, '--suppress-data', '--timeout', '20',
      '--tls', '--auth', 'PLAIN', '--auth-user', o.user, '--auth-password', PASSWORD], Buffer.alloc(0));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function reload(inst: Instance, settings: string[]): Promise<void> {
  const before = inst.logs().filter((e) => e.msg === 'configuration reloaded' && /^cleanup/.test(e.service)).length;
  inst.cli(['config', 'set', ...settings]);
  inst.cli(['reload']);
  await waitFor('cleanup to reload', () => inst.logs().filter((e) => e.msg === 'configuration reloaded' && /^cleanup/.test(e.service)).length > before);
}

// ------------------------------------------------------------------ the instance

let inst: Instance;
let dns: TestDnsServer;

before(async () => {
  // 127.0.0.1 is a client from outside (mynetworks elsewhere), so smtpd's own
  // Authentication-Results: is added; the test DNS server answers its lookups
  dns = await new TestDnsServer({ records: [
    { name: '127.0.0.1', type: 'PTR', value: 'client.example.net' },
    { name: 'client.example.net', type: 'A', value: '127.0.0.1' },
    { name: 'client.example.net', type: 'TXT', value: 'v=spf1 ip4:127.0.0.1 -all' },
    { name: 'outside.test', type: 'TXT', value: 'v=spf1 ip4:127.0.0.1 -all' },
  ] }).start();
  inst = await Instance.create({
    users: [{ address: ALICE, password: PASSWORD }, { address: BOB }, { address: CAROL }, { address: BOSS }, { address: NOBODY }],
    main: { mynetworks: '192.0.2.0/24', dns_servers: dns.address },
  });
  inst.cli(['dkim', 'keygen', 'example.test', '--selector', 's1']);
  inst.cli(['dkim', 'keygen', 'second.example', '--selector', 's2']);
  await inst.start();
});

after(async () => {
  await inst?.destroy();
  await dns?.close();
});

// ------------------------------------------------------------------ item 2

describe('cleanup checks what its clients send (private/cleanup, as smtpd)', () => {
  const sock = () => path.join(inst.spool, 'private', 'cleanup');
  const client = '{"address":"127.0.0.1","name":"client.example.net","helo":"client.example.net"}';
  const good = (extra = '', rcpts = `[{"address":"${BOB}"}]`, c = client) =>
    `{"sender":"someone@outside.test","recipients":${rcpts},"client":${c},"protocol":"ESMTP","tls":null${extra}}`;
  const msg = (marker: string) => `From: someone@outside.test\nTo: ${BOB}\nSubject: ${marker}\n\nbody ${marker}\n`;

  it('a frame as smtpd sends it is queued and delivered (the baseline)', async () => {
    const marker = `baseline-${randomUUID()}`;
    const reply = await converse(sock(), conversation(good(), msg(marker)));
    assert.equal(reply.ok, true, JSON.stringify(reply));
    await waitFor('the baseline delivery', () => copiesWith(inst, marker).length === 1);
  });

  it('fields only cleanup or the socket decide, CR/LF, over-long values and wrong types are refused; nothing is queued', async () => {
    const cases: [string, string, RegExp][] = [
      ['origin from the frame', good(',"origin":"pickup"'), /envelope\.origin: field not allowed/],
      ['uid from the frame', good(',"uid":0,"user":"root"'), /envelope\.uid: field not allowed/],
      ['an envelope id and arrival', good(',"id":"00000000000000000001","arrival":1'), /envelope\.id: field not allowed/],
      // a client's DSN ORCPT is type;address (RFC 3461): a bare address, as alias expansion writes it, is not one
      ['a recipient already expanded (ORCPT)', good('', `[{"address":"${BOB}","orcpt":"${CAROL}"}]`), /recipients\[0\]\.orcpt: not in the expected form/],
      ['REQUIRETLS that is not a flag', good(',"requireTls":"yes"'), /envelope\.requireTls: expected true or false/],
      ['__proto__ in the envelope', good(',"__proto__":{"sasl":"alice@example.test"}'), /envelope\.__proto__: field not allowed/],
      ['CR LF in the HELO name', good('', undefined, '{"address":"127.0.0.1","name":"client.example.net","helo":"x\\r\\nX-Injected: helo"}'), /client\.helo: contains a control character/],
      ['CR LF in the client name', good('', undefined, '{"address":"127.0.0.1","name":"a\\r\\nX-Injected: name","helo":"h"}'), /client\.name: contains a control character/],
      ['a client address that is no address', good('', undefined, '{"address":"1.2.3.4] (\\r\\nX-Injected: addr","name":"n","helo":"h"}'), /client\.address: /],
      ['CR LF in the protocol', good().replace('"ESMTP"', '"E\\r\\nX-Injected"'), /envelope\.protocol: contains a control character/],
      ['CR LF in the authenticated login', good(',"sasl":"alice@example.test\\r\\nX-Injected: sasl"'), /envelope\.sasl: contains a control character/],
      ['an over-long HELO name', good('', undefined, `{"address":"127.0.0.1","name":"n","helo":"${'h'.repeat(300)}"}`), /client\.helo: longer than 255/],
      ['an over-long sender', good().replace('someone@outside.test', `${'s'.repeat(600)}@outside.test`), /envelope\.sender: longer than 512/],
      ['recipients that are not a list', good('', `"${BOB}"`), /envelope\.recipients: expected an array/],
      ['a sender that is not a string', good().replace('"someone@outside.test"', '42'), /envelope\.sender: expected a string/],
      ['more recipients than smtpd_recipient_limit', good('', JSON.stringify(Array.from({ length: 1001 }, () => ({ address: BOB })))), /envelope\.recipients: more than 1000/],
    ];
    for (const [what, envelope, error] of cases) {
      const marker = `refused-${randomUUID()}`;
      const reply = await converse(sock(), conversation(envelope, msg(marker)));
      assert.equal(reply.ok, false, `${what}: refused (${JSON.stringify(reply)})`);
      assert.match(String(reply.error), /^invalid request: /, what);
      assert.match(String(reply.error), error, what);
    }
    // give qmgr time to deliver anything wrongly queued: one control message goes through behind them
    const control = `control-${randomUUID()}`;
    assert.equal((await converse(sock(), conversation(good(), msg(control)))).ok, true);
    await waitFor('the control delivery', () => copiesWith(inst, control).length === 1);
    assert.deepEqual(copiesWith(inst, 'refused-'), [], 'nothing of a refused request was delivered');
    assert.ok(!inst.logs().some((e) => e.service === 'cleanup' && e.msg === 'queued' && e.nrcpt === 1001), 'nothing queued');
    const text = copiesWith(inst, 'X-Injected');
    assert.deepEqual(text, [], 'no injected header anywhere');
  });

  it('after-body notes and headers: only smtpd\'s own verdicts, never envelope fields', async () => {
    const cases: [string, object, RegExp][] = [
      ['notes that add recipients', { type: 'after-body', notes: { recipients: [{ address: CAROL }] } }, /after-body\.notes\.recipients: field not allowed/],
      ['notes that change the origin and sender', { type: 'after-body', notes: { origin: 'bounce', sender: '' } }, /after-body\.notes\.origin: field not allowed/],
      ['a DKIM-Signature among the headers', { type: 'after-body', headers: 'DKIM-Signature: v=1; d=example.test; b=x\r\n' }, /after-body\.headers: not in the expected form/],
      ['an empty line among the headers', { type: 'after-body', headers: 'X-Spam-Status: No\r\n\r\nFrom: x\r\n' }, /after-body\.headers: not in the expected form/],
      ['notes of the wrong type', { type: 'after-body', notes: { auth: { spf: 1 } } }, /after-body\.notes\.auth\.spf: expected a string/],
    ];
    for (const [what, after, error] of cases) {
      const marker = `notes-${randomUUID()}`;
      const reply = await converse(sock(), conversation(good(), msg(marker), [frame('J', JSON.stringify(after))]));
      assert.equal(reply.ok, false, `${what}: refused (${JSON.stringify(reply)})`);
      assert.match(String(reply.error), error, what);
    }
    const proto = `proto-${randomUUID()}`;
    const reply = await converse(sock(), conversation(good(), msg(proto), [frame('J', '{"type":"after-body","notes":{"__proto__":{"recipients":[]}}}')]));
    assert.equal(reply.ok, false, JSON.stringify(reply));
    assert.match(String(reply.error), /after-body\.notes\.__proto__: field not allowed/);

    const control = `notes-control-${randomUUID()}`;
    const ok = await converse(sock(), conversation(good(), msg(control),
      [frame('J', JSON.stringify({ type: 'after-body', headers: 'X-Spam-Flag: NO\r\n', notes: { auth: { spf: 'pass', dkimAligned: false, dmarc: 'none' } } }))]));
    assert.equal(ok.ok, true, JSON.stringify(ok));
    const [text] = await waitFor('the control delivery', () => { const c = copiesWith(inst, control); return c.length ? c : null; });
    assert.deepEqual(all(text, 'x-spam-flag'), ['NO'], 'smtpd\'s own verdict is kept');
    assert.deepEqual(copiesWith(inst, 'notes-', [CAROL]), [], 'carol got nothing: no recipient was added');
  });

  it('a maildrop file whose request cleanup refuses goes to corrupt/ at once instead of being retried forever', async () => {
    const maildrop = path.join(inst.spool, 'maildrop');
    const name = '006B00000000000000F1';
    // maildrop takes any number of NOTIFY words, cleanup's schema at most 8
    fs.writeFileSync(path.join(maildrop, `.${name}`),
      `{"maildrop":1,"sender":null,"recipients":["carol"],"notify":${JSON.stringify(Array(9).fill('FAILURE'))}}\nSubject: nine-notify\r\n\r\nbody\r\n`, { mode: 0o644 });
    fs.renameSync(path.join(maildrop, `.${name}`), path.join(maildrop, name));
    // pickup logs after the rename, so wait for the log line, not only the file
    const line = await waitFor('pickup\'s corrupt line', () =>
      inst.logs().find((e) => e.service === 'pickup' && e.maildrop_file === name && e.corrupt_file === name));
    assert.ok(fs.existsSync(path.join(inst.spool, 'corrupt', name)), 'the file is in corrupt/');
    assert.match(String(line?.problem), /^cleanup: invalid request: request\.envelope\.recipients\[0\]\.notify: more than 8 entries$/);
    assert.ok(!inst.logs().some((e) => e.service === 'pickup' && e.maildrop_file === name && /will retry/.test(e.msg)), 'not retried');
    assert.deepEqual(copiesWith(inst, 'nine-notify'), []);
  });

  it('the queue owner\'s socket private/cleanup.local (0600): pickup\'s uid is taken there, and origin is refused on smtpd\'s', async () => {
    const local = path.join(inst.spool, 'private', 'cleanup.local');
    assert.equal(fs.statSync(local).mode & 0o777, 0o600, 'only the queue owner (and root) can connect');
    assert.equal(fs.statSync(sock()).mode & 0o777, 0o660);
    const marker = `local-${randomUUID()}`;
    const reply = await converse(local, conversation(`{"sender":"${ALICE}","recipients":[{"address":"${BOB}"}],"origin":"pickup","protocol":"LOCAL","uid":4242,"user":"alice"}`,
      `From: ${ALICE}\nSubject: ${marker}\n\nx\n`));
    assert.equal(reply.ok, true, JSON.stringify(reply));
    const [text] = await waitFor('the local delivery', () => { const c = copiesWith(inst, marker); return c.length ? c : null; });
    assert.match(all(text, 'received')[0], /^by mx\.example\.test \(Postern, from userid 4242\)/);
    // the smtpd socket takes neither a client-less request nor a uid
    const refused = await converse(sock(), conversation(`{"sender":"${ALICE}","recipients":[{"address":"${BOB}"}],"origin":"pickup","uid":0}`, 'Subject: x\n\nx\n'));
    assert.equal(refused.ok, false);
    assert.match(String(refused.error), /^invalid request: request\.envelope\.(origin|uid): field not allowed here$/);
    // REQUIRETLS and a client's ORCPT are smtpd's alone: the queue owner's socket refuses them
    for (const [extra, rcpt, field] of [[',"requireTls":true', '', 'requireTls'], ['', `,"orcpt":"rfc822;${CAROL}"`, 'recipients\\[0\\]\\.orcpt']]) {
      const r = await converse(local, conversation(`{"sender":"${ALICE}","recipients":[{"address":"${BOB}"${rcpt}}],"origin":"pickup"${extra}}`, 'Subject: x\n\nx\n'));
      assert.equal(r.ok, false);
      assert.match(String(r.error), new RegExp(`^invalid request: request\\.envelope\\.${field}: field not allowed here$`));
    }
  });
});

// ------------------------------------------------------------------ item 9

describe('header fields only this system may set are removed, whatever the header size', () => {
  const forged = [
    `Authentication-Results: ${HOST}; dkim=pass header.d=example.test; dmarc=pass`,
    'X-Spam-Status: No, score=-100.0',
    'X-Spam-Flag: NO',
    'X-Postern-Quarantine: none',
  ];

  it('an ordinary header section: incoming X-Spam-*, X-Postern-Quarantine: and our forged Authentication-Results: go; ours is there', async () => {
    const marker = `small-${randomUUID()}`;
    const reply = await smtpSend(inst, { from: 'someone@outside.test', to: BOB,
      message: [...forged, 'From: someone@outside.test', `To: ${BOB}`, `Subject: ${marker}`, '', 'body', ''].join('\r\n') });
    assert.match(reply, /^250 /);
    const [text] = await waitFor('the delivery', () => { const c = copiesWith(inst, marker); return c.length ? c : null; });
    assert.deepEqual(all(text, 'x-spam-status'), []);
    assert.deepEqual(all(text, 'x-spam-flag'), []);
    assert.deepEqual(all(text, 'x-postern-quarantine'), []);
    const results = all(text, 'authentication-results');
    assert.equal(results.length, 1, results.join('\n'));
    assert.match(results[0], /^mx\.example\.test; spf=pass/, 'ours, from smtpd\'s verdict');
  });

  it('a 1.5 MiB header section: cut at header_size_limit, the forged fields at its end are not headers in the delivered copy', async () => {
    const marker = `huge-${randomUUID()}`;
    const filler = Array.from({ length: 1.5 * 1024 * 1024 / 64 }, (_, i) => `X-Filler-${String(i).padStart(6, '0')}: ${'f'.repeat(44)}`);
    const reply = await smtpSend(inst, { from: 'someone@outside.test', to: BOB,
      message: ['From: someone@outside.test', `To: ${BOB}`, `Subject: ${marker}`, ...filler, ...forged, '', 'body', ''].join('\r\n') });
    assert.match(reply, /^250 /);
    const [text] = await waitFor('the delivery', () => { const c = copiesWith(inst, marker); return c.length ? c : null; }, 30000);
    const head = text.split(/\r?\n\r?\n/)[0];
    assert.ok(head.length < 110 * 1024, `the header section was cut near 100 KiB (${head.length} bytes)`);
    assert.deepEqual(all(text, 'x-spam-status'), []);
    assert.deepEqual(all(text, 'x-postern-quarantine'), []);
    const results = all(text, 'authentication-results');
    assert.equal(results.length, 1, results.join('\n'));
    assert.match(results[0], /^mx\.example\.test; spf=pass/);
    await inst.waitForLog('the cut', (e) => e.service === 'cleanup' && /longer than header_size_limit/.test(e.msg));
  });
});

// ------------------------------------------------------------------ item 8

describe('hopcount_limit', () => {
  const received = (n: number) => Array.from({ length: n }, (_, i) => `Received: from hop${i}.example.net by relay${i}.example.net; Thu, 3 Dec 2026 12:00:00 +0000`);

  it('50 Received: fields is a mail loop: 554 5.4.6 and nothing queued; 49 is delivered', async () => {
    const looped = `hops50-${randomUUID()}`;
    const reply = await smtpSend(inst, { from: 'someone@outside.test', to: BOB,
      message: [...received(50), 'From: someone@outside.test', `Subject: ${looped}`, '', 'x', ''].join('\r\n') });
    assert.equal(reply, '554 5.4.6 Error: too many hops');
    const fine = `hops49-${randomUUID()}`;
    assert.match(await smtpSend(inst, { from: 'someone@outside.test', to: BOB,
      message: [...received(49), 'From: someone@outside.test', `Subject: ${fine}`, '', 'x', ''].join('\r\n') }), /^250 /);
    const [text] = await waitFor('the 49-hop delivery', () => { const c = copiesWith(inst, fine); return c.length ? c : null; });
    assert.equal(all(text, 'received').length, 50, 'its 49 and ours');
    assert.deepEqual(copiesWith(inst, looped), []);
    await inst.waitForLog('the refusal', (e) => e.service === 'cleanup' && e.dsn === '5.4.6' && e.status === 'reject');
  });

  it('from sendmail, 50 Received: fields: not delivered, the sender gets a 5.4.6 DSN', async () => {
    const looped = `sendmail-hops-${randomUUID()}`;
    const r = run(process.execPath, [path.join(ROOT, 'bin', 'sendmail'), '-C', inst.etc, '-f', ALICE, BOB],
      { input: [...received(50), `From: ${ALICE}`, `Subject: ${looped}`, '', 'x', ''].join('\n') });
    assert.equal(r.code, 0, r.stderr);
    const dsn = await waitFor('the DSN to alice', () => copiesWith(inst, looped, [ALICE]).find((t) => /^Subject: Undelivered Mail Returned to Sender$/m.test(t)));
    assert.match(dsn, /^Status: 5\.4\.6$/m);
    assert.match(dsn, /too many hops/);
    assert.deepEqual(copiesWith(inst, looped, [BOB]), [], 'bob got nothing');
  });
});

// ------------------------------------------------------------------ item 3

describe('DKIM signing only for a From: the submitter owns (smtpd_reject_header_from_mismatch)', () => {
  const sigDomains = (text: string) => all(text, 'dkim-signature').map((s) => /(?:^|;)\s*d=([^;\s]*)/.exec(s)?.[1]);

  it('alice (AUTH) with From: boss@second.example: 550 5.7.1, nothing queued; her own From: is signed', async () => {
    const marker = `boss-${randomUUID()}`;
    const r = await swaks(inst, { from: ALICE, to: BOB, user: ALICE, message: `From: The Boss <${BOSS}>\nTo: ${BOB}\nSubject: ${marker}\n\npay this invoice\n` });
    assert.notEqual(r.code, 0);
    assert.match(r.stdout, /<~\* 550 5\.7\.1 <boss@second\.example>: From: address rejected: not owned by user alice@example\.test/, r.stdout);
    const own = `own-${randomUUID()}`;
    const ok = await swaks(inst, { from: ALICE, to: BOB, user: ALICE, message: `From: Alice <${ALICE}>\nTo: ${BOB}\nSubject: ${own}\n\nmine\n` });
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    const [text] = await waitFor('alice\'s own message', () => { const c = copiesWith(inst, own); return c.length ? c : null; });
    assert.deepEqual(sigDomains(text), ['example.test']);
    assert.deepEqual(copiesWith(inst, marker), [], 'the refused one was never queued');
  });

  it('with smtpd_reject_header_from_mismatch = no it is delivered, without a signature for second.example', async () => {
    await reload(inst, ['smtpd_reject_header_from_mismatch=no']);
    try {
      const marker = `boss-no-${randomUUID()}`;
      const r = await swaks(inst, { from: ALICE, to: BOB, user: ALICE, message: `From: The Boss <${BOSS}>\nTo: ${BOB}\nSubject: ${marker}\n\npay this invoice\n` });
      assert.equal(r.code, 0, r.stdout + r.stderr);
      const [text] = await waitFor('the unsigned delivery', () => { const c = copiesWith(inst, marker); return c.length ? c : null; });
      assert.deepEqual(all(text, 'dkim-signature'), []);
      await inst.waitForLog('the decision', (e) => e.service === 'cleanup' && /not owned by user alice@example\.test; not DKIM signing/.test(e.msg));
    } finally {
      await reload(inst, ['smtpd_reject_header_from_mismatch=yes']);
    }
  });

  it('sendmail as nobody: a From: that is not nobody\'s is refused (bounced 5.7.1), or with "no" delivered unsigned; nobody\'s own is signed', async () => {
    assert.ok(IS_ROOT, 'this test submits mail as the user nobody: run the tests as root (make test does)');
    const send = (input: string) => run(requireTool('setpriv'), ['--reuid=nobody', '--regid=nogroup', '--clear-groups', process.execPath,
      path.join(ROOT, 'bin', 'sendmail'), '-C', inst.etc, BOB], { input, cwd: '/' });
    const forged = `nobody-boss-${randomUUID()}`;
    assert.equal(send(`From: ${BOSS}\nSubject: ${forged}\n\nx\n`).code, 0);
    const own = `nobody-own-${randomUUID()}`;
    assert.equal(send(`From: nobody@example.test\nSubject: ${own}\n\nx\n`).code, 0);
    // a bare login is nobody@$myorigin (Postfix's append_at_myorigin): nobody's own
    const bare = `nobody-bare-${randomUUID()}`;
    assert.equal(send(`From: nobody (Cron Daemon)\nSubject: ${bare}\n\nx\n`).code, 0);
    const refused = await inst.waitForLog('cleanup bouncing the forged From:', (e) => e.service === 'cleanup' && e.status === 'bounced' &&
      /message bounced: From: <boss@second\.example> not owned by local user nobody/.test(e.msg));
    assert.equal(refused.dsn, '5.7.1');
    const dsn = await waitFor('the DSN to nobody', () => copiesWith(inst, forged, [NOBODY]).find((t) => /^Subject: Undelivered Mail Returned to Sender$/m.test(t)));
    assert.match(dsn, /^Status: 5\.7\.1$/m);
    assert.match(dsn.replace(/\s+/g, ' '), /550 5\.7\.1 <boss@second\.example>: From: address rejected: not owned by local user nobody/, 'the reason, unfolded');
    const [o] = await waitFor('nobody\'s own', () => { const c = copiesWith(inst, own); return c.length ? c : null; });
    assert.deepEqual(sigDomains(o), ['example.test']);
    await waitFor('the bare From:', () => copiesWith(inst, bare).length === 1);
    assert.deepEqual(copiesWith(inst, forged, [BOB]), [], 'bob never got the forged one');

    await reload(inst, ['smtpd_reject_header_from_mismatch=no']);
    try {
      const unsigned = `nobody-boss-no-${randomUUID()}`;
      assert.equal(send(`From: ${BOSS}\nSubject: ${unsigned}\n\nx\n`).code, 0);
      const [f] = await waitFor('the unsigned one', () => { const c = copiesWith(inst, unsigned); return c.length ? c : null; });
      assert.deepEqual(all(f, 'dkim-signature'), [], 'never signed for second.example on nobody\'s word');
    } finally {
      await reload(inst, ['smtpd_reject_header_from_mismatch=yes']);
    }
  });
});

// ------------------------------------------------------------------ the validator itself

describe('ipc-schema: validate', () => {
  const schema: Schema = { type: 'object', fields: {
    name: { type: 'string', max: 8 },
    n: { type: 'integer', min: 0, max: 9, optional: true },
    tags: { type: 'array', max: 2, items: { type: 'string', max: 3, values: ['a', 'b'] }, optional: true },
    either: { type: 'either', of: [{ type: 'null' }, { type: 'boolean' }], optional: true },
    tls: { type: 'either', of: [{ type: 'null' }, { type: 'string', max: 3 }], optional: true },
  } };
  const problem = (v: unknown) => { try { validate(schema, v); return 'accepted'; } catch (e) { assert.ok(e instanceof SchemaError); return (e as Error).message; } };

  it('returns a new object holding only the allowed fields; names the first problem with its path', () => {
    const input = JSON.parse('{"name":"x","n":3,"tags":["a"],"either":null}');
    const out = validate(schema, input);
    assert.deepEqual(out, { name: 'x', n: 3, tags: ['a'], either: null });
    assert.notEqual(out, input);
    assert.equal(problem(JSON.parse('{"name":"x","__proto__":{"n":1}}')), 'request.__proto__: field not allowed here');
    assert.equal(problem({ name: 'x', constructor: 1 }), 'request.constructor: field not allowed here');
    assert.equal(problem({}), 'request.name: missing');
    assert.equal(problem({ name: 'a\nb' }), 'request.name: contains a control character (CR, LF, NUL, ...)');
    assert.equal(problem({ name: '123456789' }), 'request.name: longer than 8 characters');
    assert.equal(problem({ name: 'x', n: 1.5 }), 'request.n: expected an integer, got number');
    assert.equal(problem({ name: 'x', n: 10 }), 'request.n: outside 0..9');
    assert.equal(problem({ name: 'x', tags: ['a', 'c'] }), 'request.tags[1]: not one of a, b');
    assert.equal(problem({ name: 'x', tags: ['a', 'a', 'a'] }), 'request.tags: more than 2 entries');
    assert.equal(problem({ name: 'x', either: 'yes' }), 'request.either: expected null, got string');
    // a value of one alternative's kind is checked against that one: its problem is the one named
    assert.equal(problem({ name: 'x', tls: 'TLSv1.3' }), 'request.tls: longer than 3 characters');
    assert.deepEqual(validate(schema, { name: 'x', tls: 'v1' }), { name: 'x', tls: 'v1' });
    assert.deepEqual(validate(schema, { name: 'x', tls: null }), { name: 'x', tls: null });
    assert.equal(problem([]), 'request: expected an object, got an array');
  });
});
