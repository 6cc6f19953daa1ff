/**
 * Message fix-up and DKIM signing of submitted mail, end to end: keys made by
 * `postern dkim keygen`, published in a real DNS server on loopback, messages
 * submitted with swaks, and the delivered Maildir copy checked by independent
 * verifiers — dkimpy (RSA and Ed25519) and Perl's Mail::DKIM (RSA) — both
 * fetching the public keys over DNS. Plus the header fix-up itself, chunk by
 * chunk, and what keygen refuses.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomUUID, generateKeyPairSync } from 'node:crypto';
import { Instance, IS_ROOT, run, runAsync, requireTool, tempDir, waitFor, RunResult, headerFields } from './harness.js';
import { TestDnsServer } from './dns-server.js';
import { dkimpyVerify, mailDkimVerify, python3 } from './verifiers.js';
import { HeaderSection, HEADER_SCAN_LIMIT } from '../../packages/cleanup/dist/header-section.js';
import { missingHeaders } from '../../packages/cleanup/dist/header-fixup.js';
import { DkimKeyStore } from '../../packages/cleanup/dist/dkim.js';
import type { Logger } from '../../packages/common/dist/index.js';

const PASSWORD = 'correct horse battery staple';
const OUTSIDER = '127.0.0.2'; // a loopback address outside this instance's mynetworks: "another server"

// ---------------------------------------------------------------------------
// Clients and verifiers

/**
 * Runs a verifier without blocking the event loop: the test DNS server it
 * queries lives in this process. Bounded by a timeout.
 */

/** dkimpy needs Debian's python3 (a pyenv shim earlier in PATH lacks the module). */

interface Submission { from: string; to: string; message: string; port?: number; local?: string; extra?: string[] }

/** swaks, run without blocking the event loop: smtpd asks the test DNS server in this process. */
async function swaks(inst: Instance, s: Submission): Promise<RunResult> {
  const dir = tempDir('swaks');
  try {
    const file = path.join(dir, 'message');
    fs.writeFileSync(file, s.message.replace(/\r\n/g, '\n').replace(/\n$/, '')); // swaks adds CRLF.CRLF
    return await runAsync(requireTool('swaks'), ['--server', '127.0.0.1', '--port', String(s.port ?? inst.ports.smtp),
      '--helo', 'client.example.test', '--from', s.from, '--to', s.to, '--data', `@${file}`, '--suppress-data', '--timeout', '20',
      ...(s.local ? ['--local-interface', s.local] : []), ...(s.extra ?? [])], Buffer.alloc(0));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function queueIdOf(r: RunResult): string {
  const m = /250 2\.0\.0 Ok: queued as ([0-9A-F]{20})/.exec(r.stdout);
  assert.ok(m, `no "queued as" in:\n${r.stdout}${r.stderr}`);
  return m[1];
}

/** Sends, waits for the one delivery, returns the Maildir copy and its queue id. */
async function deliver(inst: Instance, s: Submission): Promise<{ id: string; file: string; text: string }> {
  const r = await swaks(inst, s);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  const id = queueIdOf(r);
  await waitFor(`delivery of ${id}`, () => inst.logs().some((e) => e.queue_id === id && e.msg === 'removed'));
  const files = inst.delivered(s.to).filter((f) => fs.readFileSync(f, 'latin1').includes(` id ${id}\n`));
  assert.equal(files.length, 1, `${id} once in ${s.to}'s Maildir`);
  return { id, file: files[0], text: fs.readFileSync(files[0], 'utf8') };
}

const all = (text: string, name: string) => headerFields(text).filter((h) => h.name === name).map((h) => h.value);
const tag = (sig: string, t: string) => new RegExp(`(?:^|;)\\s*${t}=([^;]*)`).exec(sig)?.[1].replace(/\s+/g, '');


/** Publishes every key of the instance's signing table in the test DNS server. */
function publishKeys(inst: Instance, dns: TestDnsServer): void {
  for (const line of inst.cli(['dkim', 'list', '--json']).stdout.trim().split('\n')) {
    const row = JSON.parse(line);
    if (!row.txt) continue;
    dns.remove(row.dns_name, 'TXT');
    dns.add({ name: row.dns_name, type: 'TXT', value: row.txt });
  }
}

function message(lines: string[], body = 'Hello,\r\nthis is a DKIM test.\r\n'): string {
  return lines.join('\r\n') + '\r\n\r\n' + body;
}

// ---------------------------------------------------------------------------

describe('header fix-up: what the message has, learnt while it streams', () => {
  const arrival = new Date(Date.UTC(2026, 10, 24, 18, 22, 48));
  const add = (s: any) => missingHeaders(s, 'ABCDEF0123456789ABCD', arrival, 'mx.example.test', 'Tue, 24 Nov 2026 18:22:48 +0000');

  function fix(input: string | Buffer, chunkSize: number): { out: string; fixup: HeaderSection } {
    const buf = Buffer.isBuffer(input) ? input : Buffer.from(input);
    const fixup = new HeaderSection([{ add }]);
    const parts: Buffer[] = [];
    for (let i = 0; i < buf.length; i += chunkSize) parts.push(...fixup.push(buf.subarray(i, i + chunkSize)));
    parts.push(...fixup.end());
    return { out: Buffer.concat(parts).toString('latin1'), fixup };
  }

  it('adds Message-ID: and Date: at the end of the header section, for any chunking', () => {
    const input = 'From: a@example.test\r\nSubject: folded\r\n over two lines\r\n\r\nbody\r\nX-Not: a header\r\n';
    const expected = 'From: a@example.test\r\nSubject: folded\r\n over two lines\r\n'
      + 'Message-ID: <20261124182248.ABCDEF0123456789ABCD@mx.example.test>\r\nDate: Tue, 24 Nov 2026 18:22:48 +0000\r\n'
      + '\r\nbody\r\nX-Not: a header\r\n';
    for (const size of [1, 2, 3, 7, 1000]) {
      const { out, fixup } = fix(input, size);
      assert.equal(out, expected, `chunks of ${size}`);
      assert.deepEqual(fixup.summary?.from, ['a@example.test']);
    }
  });

  it('finds fields that are folded, oddly cased or split across chunks', () => {
    const input = 'message-id:\r\n <x@example.test>\r\nDATE : Tue, 24 Nov 2026 18:22:48 +0000\r\nFrom: "A, B" <a@example.test>\r\n\r\nbody\r\n';
    for (const size of [1, 5, 1000]) {
      const { out, fixup } = fix(input, size);
      assert.equal(out, input, `nothing added (chunks of ${size})`);
      assert.equal(fixup.summary?.messageId, '<x@example.test>');
    }
  });

  it('Resent- fields: Resent-Message-ID: and Resent-Date: are the ones that must be there', () => {
    const { out } = fix('Resent-From: r@example.test\r\nMessage-ID: <m@x>\r\nDate: x\r\n\r\nb\r\n', 4);
    assert.match(out, /\r\nResent-Message-ID: <20261124182248\.ABCDEF0123456789ABCD@mx\.example\.test>\r\nResent-Date: Tue, 24 Nov 2026 18:22:48 \+0000\r\n\r\nb\r\n$/);
  });

  it('a header-only message, one without a final line end, and a body that starts without an empty line', () => {
    assert.equal(fix('Subject: only\r\n', 3).out,
      'Subject: only\r\nMessage-ID: <20261124182248.ABCDEF0123456789ABCD@mx.example.test>\r\nDate: Tue, 24 Nov 2026 18:22:48 +0000\r\n');
    assert.equal(fix('Subject: only', 3).out,
      'Subject: only\r\nMessage-ID: <20261124182248.ABCDEF0123456789ABCD@mx.example.test>\r\nDate: Tue, 24 Nov 2026 18:22:48 +0000\r\n');
    // the stray line would otherwise read as part of our Date: header
    assert.equal(fix('Subject: s\r\nHello there\r\n', 2).out,
      'Subject: s\r\nMessage-ID: <20261124182248.ABCDEF0123456789ABCD@mx.example.test>\r\nDate: Tue, 24 Nov 2026 18:22:48 +0000\r\n\r\nHello there\r\n');
    // LF-only input gets LF-only additions
    assert.equal(fix('Subject: s\nDate: d\n\nb\n', 1).out, 'Subject: s\nDate: d\nMessage-ID: <20261124182248.ABCDEF0123456789ABCD@mx.example.test>\n\nb\n');
  });

  it('a header section over header_size_limit is cut at the last whole line within it; the rest is body', () => {
    const line = (i: number) => `X-Line-${String(i).padStart(6, '0')}: ${'a'.repeat(40)}\r\n`; // 56 bytes
    const lines = Array.from({ length: Math.ceil((2 * HEADER_SCAN_LIMIT) / 56) }, (_, i) => line(i));
    const huge = 'From: a@example.test\r\n' + lines.join('') + 'X-Late: after the limit\r\n\r\nbody\r\n';
    for (const size of [4096, 64 * 1024]) {
      const { out, fixup } = fix(huge, size);
      const [head, ...rest] = out.split('\r\n\r\n');
      assert.ok(head.length <= HEADER_SCAN_LIMIT + 200, `cut near the limit (${head.length})`);
      assert.match(head, /\r\nMessage-ID: <[^>]+>\r\nDate: [^\r]+$/, 'examined and fixed up: the fields go at the end of the kept part');
      assert.match(rest.join('\r\n\r\n'), /X-Late: after the limit\r\n\r\nbody\r\n$/, 'the rest is kept, as body');
      assert.equal(out.replace(/Message-ID: [^\r]+\r\nDate: [^\r]+\r\n\r\n/, ''), huge, 'nothing else changed');
      assert.equal(fixup.summary?.truncated, true);
      assert.deepEqual(fixup.summary?.from, ['a@example.test']);
    }
  });
});

describe('DKIM signing and fix-up of submitted mail', () => {
  const alice = 'alice@example.test';
  const bob = 'bob@example.test';
  let inst: Instance;
  let dns: TestDnsServer;

  before(async () => {
    // 127.0.0.1 is trusted; 127.0.0.2 plays another server on the Internet, with a proper reverse name
    dns = await new TestDnsServer({ records: [
      { name: '127.0.0.2', type: 'PTR', value: 'client.example.test' },
      { name: 'client.example.test', type: 'A', value: '127.0.0.2' },
    ] }).start();
    inst = await Instance.create({
      users: [{ address: alice, password: PASSWORD }, { address: bob }],
      main: { mynetworks: '127.0.0.1/32, [::1]/128', dns_servers: dns.address },
    });
  });
  after(async () => {
    await inst?.destroy();
    await dns?.close();
  });

  it('postern dkim keygen: RSA and Ed25519 keys, the signing table, the DNS record to publish', async () => {
    const r = inst.cli(['dkim', 'keygen', 'example.test', '--selector', 's1']);
    const keyFile = path.join(inst.etc, 'dkim', 'example.test.s1.key');
    assert.match(r.stdout, new RegExp(`wrote ${keyFile.replace(/[.]/g, '\\.')} \\(rsa, 2048 bits\\)`));
    const record = /^s1\._domainkey\.example\.test\. IN TXT ((?:"[^"]*" ?)+)$/m.exec(r.stdout);
    assert.ok(record, `a zone-file TXT record in:\n${r.stdout}`);
    const strings = [...record[1].matchAll(/"([^"]*)"/g)].map((m) => m[1]);
    assert.ok(strings.every((s) => s.length <= 255), 'each character-string fits in 255 bytes');
    assert.match(strings.join(''), /^v=DKIM1; k=rsa; p=[A-Za-z0-9+/]{300,}={0,2}$/);

    const e = inst.cli(['dkim', 'keygen', 'example.test', '--selector', 'e1', '--algorithm', 'ed25519']);
    assert.match(e.stdout, /^e1\._domainkey\.example\.test\. IN TXT "v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}="$/m,
      'Ed25519: the raw 32-byte public key (RFC 8463)');

    const me = process.getuid!();
    for (const f of [keyFile, path.join(inst.etc, 'dkim', 'example.test.e1.key')]) {
      const st = fs.statSync(f);
      assert.equal(st.mode & 0o777, 0o600, `${f} is readable by its owner only`);
      assert.equal(st.uid, me, 'a sandbox key belongs to the user the services run as');
    }
    assert.equal(fs.statSync(path.join(inst.etc, 'dkim')).mode & 0o777, 0o700);
    const table = fs.readFileSync(path.join(inst.etc, 'dkim', 'signing.table'), 'utf8').split('\n').filter((l) => l && !l.startsWith('#'));
    assert.deepEqual(table, [
      `example.test s1 ${keyFile} rsa-sha256`,
      `example.test e1 ${path.join(inst.etc, 'dkim', 'example.test.e1.key')} ed25519-sha256`,
    ], 'RSA first, then Ed25519: the order of the signatures');
    const listed = inst.cli(['dkim', 'list', '--json']).stdout.trim().split('\n').map((l) => JSON.parse(l));
    assert.equal(listed[0].txt, strings.join(''), 'dkim list shows the same record');
    assert.deepEqual(listed.map((x) => x.status), ['ok', 'ok']);

    // a key for a domain whose key file then goes missing
    inst.cli(['dkim', 'keygen', 'lost.test', '--selector', 'k1']);
    fs.rmSync(path.join(inst.etc, 'dkim', 'lost.test.k1.key'));
    assert.match(inst.cli(['dkim', 'list']).stdout, /lost\.test\s+k1\s+rsa-sha256\s+\S+\s+\(key file missing\)/);

    publishKeys(inst, dns);
    await inst.start();
  });

  it('mail from mynetworks without Message-ID: and Date: gets both, and RSA + Ed25519 signatures that verify', async () => {
    const subject = `signed ${randomUUID()}`;
    const { id, file, text } = await deliver(inst, {
      from: alice, to: bob,
      message: message([`From: Alice <${alice}>`, `To: <${bob}>`, `Subject: ${subject}`, 'MIME-Version: 1.0', 'Content-Type: text/plain']),
    });
    const msgId = all(text, 'message-id');
    assert.equal(msgId.length, 1);
    assert.match(msgId[0], new RegExp(`^<\\d{14}\\.${id}@mx\\.example\\.test>$`), 'Postfix form: <YYYYMMDDhhmmss.QUEUEID@myhostname>');
    const date = all(text, 'date');
    assert.equal(date.length, 1);
    assert.match(date[0], /^\w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}$/);
    const log = await inst.waitForLog('the added headers logged', (e) => e.queue_id === id && e.msg === 'added missing headers');
    assert.equal(log?.added, 'Message-ID,Date');

    const sigs = all(text, 'dkim-signature');
    assert.equal(sigs.length, 2, text);
    assert.deepEqual(sigs.map((s) => [tag(s, 'a'), tag(s, 's'), tag(s, 'd'), tag(s, 'c')]), [
      ['rsa-sha256', 's1', 'example.test', 'relaxed/relaxed'],
      ['ed25519-sha256', 'e1', 'example.test', 'relaxed/relaxed'],
    ]);
    const signed = tag(sigs[0], 'h')!.toLowerCase().split(':');
    for (const h of ['from', 'to', 'subject', 'date', 'message-id', 'mime-version', 'content-type']) {
      assert.ok(signed.includes(h), `h= covers ${h} (${signed.join(':')})`);
    }
    assert.deepEqual(await dkimpyVerify(file, dns), [true, true], 'dkimpy accepts both signatures');
    assert.deepEqual(await mailDkimVerify(file, dns), ['s1 pass', 'e1 invalid'], 'Mail::DKIM accepts the RSA signature (it has no Ed25519)');

    // the signature covers the added headers: changing one breaks it
    const tampered = path.join(tempDir('dkim'), 'tampered');
    fs.writeFileSync(tampered, fs.readFileSync(file, 'utf8').replace(/^Date: .*$/m, 'Date: Mon, 1 Jan 2001 00:00:00 +0000'));
    assert.deepEqual(await dkimpyVerify(tampered, dns), [false, false]);
    fs.rmSync(path.dirname(tampered), { recursive: true, force: true });
  });

  it('existing Message-ID: and Date: are kept, a larger message signs and verifies', async () => {
    const body = Array.from({ length: 20000 }, (_, i) => `line ${i} of a body long enough to span many chunks`).join('\r\n') + '\r\n';
    const { id, file, text } = await deliver(inst, {
      from: alice, to: bob,
      message: message([`From: ${alice}`, `To: ${bob}`, 'Subject: big', 'Date: Tue, 24 Nov 2026 18:22:48 +0000', 'Message-ID: <mine@example.test>'], body),
    });
    assert.deepEqual(all(text, 'message-id'), ['<mine@example.test>']);
    assert.deepEqual(all(text, 'date'), ['Tue, 24 Nov 2026 18:22:48 +0000']);
    assert.ok(!inst.logs().some((e) => e.queue_id === id && e.msg === 'added missing headers'));
    assert.equal((await inst.waitForLog('cleanup\'s queued line', (e) => e.queue_id === id && e.msg === 'queued' && e.service === 'cleanup')).message_id, '<mine@example.test>');
    assert.deepEqual(await dkimpyVerify(file, dns), [true, true]);
  });

  it('authenticated submission (587, STARTTLS + AUTH) from outside mynetworks: with ESMTPSA, fixed up and signed', async () => {
    const { file, text } = await deliver(inst, {
      from: alice, to: bob, port: inst.ports.submission, local: OUTSIDER,
      extra: ['--tls', '--auth', 'PLAIN', '--auth-user', alice, '--auth-password', PASSWORD],
      message: message([`From: ${alice}`, `To: ${bob}`, 'Subject: submitted']),
    });
    const received = all(text, 'received')[0];
    assert.match(received, /\(Authenticated sender: alice@example\.test\)/);
    assert.match(received, /with ESMTPSA id /, received);
    assert.equal(all(text, 'message-id').length, 1);
    assert.equal(all(text, 'date').length, 1);
    assert.deepEqual(await dkimpyVerify(file, dns), [true, true]);
  });

  it('sendmail (pickup): fixed up and signed like any submission', async () => {
    const subject = `sendmail ${randomUUID()}`;
    const r = run(process.execPath, [path.join(__dirname, '..', '..', 'bin', 'sendmail'), '-t', '-f', alice], {
      input: `From: ${alice}\nTo: ${bob}\nSubject: ${subject}\n\nsent with sendmail\n`,
      env: { ...process.env, POSTERN_CONFIG: inst.etc },
    });
    assert.equal(r.code, 0, r.stderr);
    const file = await waitFor(`delivery of "${subject}"`, () => inst.delivered(bob).find((f) => fs.readFileSync(f, 'utf8').includes(subject)));
    const text = fs.readFileSync(file, 'utf8');
    assert.match(all(text, 'received')[0], /^by mx\.example\.test \(Postern, from userid \d+\)/);
    assert.equal(all(text, 'message-id').length, 1);
    assert.equal(all(text, 'date').length, 1);
    assert.deepEqual(await dkimpyVerify(file, dns), [true, true]);
  });

  it('mail from another server is not changed: no Message-ID:, no Date:, no signature', async () => {
    const { id, text } = await deliver(inst, {
      from: alice, to: bob, local: OUTSIDER,
      message: message([`From: ${alice}`, `To: ${bob}`, 'Subject: from outside']),
    });
    assert.match(all(text, 'received')[0], /\[127\.0\.0\.2\]/);
    assert.deepEqual(all(text, 'message-id'), []);
    assert.deepEqual(all(text, 'date'), []);
    assert.deepEqual(all(text, 'dkim-signature'), []);
    assert.ok(!inst.logs().some((e) => e.queue_id === id && (e.msg === 'added missing headers' || e.msg === 'DKIM-Signature added')));
  });

  it('the From: domain decides; a domain without a key is not signed; no From: falls back to the envelope sender', async () => {
    const other = await deliver(inst, {
      from: alice, to: bob, message: message(['From: Carol <carol@other.test>', `To: ${bob}`, 'Subject: other domain']),
    });
    assert.deepEqual(all(other.text, 'dkim-signature'), [], 'no key for other.test');
    assert.equal(all(other.text, 'message-id').length, 1, 'still fixed up: it was submitted');

    const noFrom = await deliver(inst, { from: alice, to: bob, message: message([`To: ${bob}`, 'Subject: no From']) });
    assert.deepEqual(all(noFrom.text, 'dkim-signature').map((s) => tag(s, 'd')), ['example.test', 'example.test']);
    assert.deepEqual(await dkimpyVerify(noFrom.file, dns), [true, true]);
  });

  it('a key file that is missing: logged, and the message is delivered unsigned', async () => {
    const { id, text } = await deliver(inst, {
      from: alice, to: bob, message: message(['From: someone@lost.test', `To: ${bob}`, 'Subject: lost key']),
    });
    assert.deepEqual(all(text, 'dkim-signature'), []);
    const warn = await inst.waitForLog('the unusable key logged', (e) => e.queue_id === id && e.msg === 'DKIM key unusable; not signing with it');
    assert.ok(warn, 'a log line names the queue id');
    assert.equal(warn.key_file, path.join(inst.etc, 'dkim', 'lost.test.k1.key'));
    assert.equal(warn.dkim_domain, 'lost.test');
    assert.match(warn.err, /ENOENT/);
  });

  it('a key replaced on disk is picked up without a restart', async () => {
    inst.cli(['dkim', 'keygen', 'example.test', '--selector', 's1', '--force']);
    publishKeys(inst, dns);
    const { file } = await deliver(inst, { from: alice, to: bob, message: message([`From: ${alice}`, `To: ${bob}`, 'Subject: new key']) });
    assert.deepEqual(await dkimpyVerify(file, dns), [true, true], 'signed with the new s1 key');
  });
});

describe('the signing table is checked at most once per interval, not per message', () => {
  // cleanup's own DkimKeyStore over real files; the log lines it writes are collected
  const lines: { level: string; obj: any; msg: string }[] = [];
  const at = (level: string) => (obj: any, msg: string) => { lines.push({ level, obj, msg }); };
  const log = { warn: at('warn'), info: at('info'), error: at('error') } as unknown as Logger;
  let dir: string;
  before(() => {
    dir = tempDir('dkim-store');
    const { privateKey } = generateKeyPairSync('ed25519');
    fs.writeFileSync(path.join(dir, 'a.key'), privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  });
  after(() => { fs.rmSync(dir, { recursive: true, force: true }); });
  const selectors = async (store: DkimKeyStore, table: string) =>
    (await store.keysFor(table, 'example.test', 'Q1')).map((k) => `${k.selector}(${k.algorithm})`);

  it('within the interval the table file is not looked at again; after it, a new table is used', async () => {
    const table = path.join(dir, 'signing.table');
    const slow = new DkimKeyStore(log, 3_600_000); // an hour: no second check during this test
    assert.deepEqual(await selectors(slow, table), [], 'no table yet: nothing to sign with');
    fs.writeFileSync(table, 'example.test s1 a.key\n');
    assert.deepEqual(await selectors(slow, table), [], 'the absent table is remembered until the next check, not stat()ed per message');

    const store = new DkimKeyStore(log); // the default, one second
    assert.deepEqual(await selectors(store, table), ['s1(ed25519-sha256)']);
    fs.writeFileSync(table, 'example.test s1 a.key\nexample.test s2 a.key\nbad line\n');
    const seen = await waitFor('the rewritten table in use', async () => {
      const s = await selectors(store, table);
      return s.length === 2 ? s : undefined;
    }, 10000, 200);
    assert.deepEqual(seen, ['s1(ed25519-sha256)', 's2(ed25519-sha256)']);
    assert.equal(lines.filter((l) => l.msg === 'DKIM signing table: line ignored').length, 1, 'a bad line is logged once per version of the table');
    fs.rmSync(table);
    await waitFor('the removed table no longer used', async () => (await selectors(store, table)).length === 0, 10000, 200);
  });
});

describe('postern dkim keygen refuses what it cannot do', () => {
  let inst: Instance;
  before(async () => { inst = await Instance.create({}); });
  after(async () => { await inst?.destroy(); });

  const refuse = (args: string[], why: RegExp) => {
    const r = inst.tryCli(['dkim', 'keygen', ...args]);
    assert.equal(r.code, 1, `${args.join(' ')}: ${r.stdout}`);
    assert.match(r.stderr, why);
  };

  it('bad domain, selector, size; an existing key without --force', () => {
    refuse(['not_a_domain'], /"not_a_domain" is not a domain name/);
    refuse(['example.test', '--selector', 'bad selector!'], /--selector: .* is not a DKIM selector/);
    refuse(['example.test', '--bits', '512'], /--bits: "512" is not a key size from 1024 to 4096/);
    refuse(['example.test', '--algorithm', 'ed25519', '--bits', '2048'], /--bits applies to RSA keys only/);
    refuse(['example.test', '--algorithm', 'dsa'], /argument 'dsa' is invalid/);
    inst.cli(['dkim', 'keygen', 'example.test', '--selector', 'x1', '--bits', '1024']);
    refuse(['example.test', '--selector', 'x1'], /example\.test\.x1\.key exists: .*--force/);
  });

  it('default selector: the key type and the month', () => {
    const now = new Date();
    const month = `${now.getFullYear()}${String(now.getMonth() + 1).padStart(2, '0')}`;
    const r = JSON.parse(inst.cli(['dkim', 'keygen', 'example.test', '--algorithm', 'ed25519', '--json']).stdout);
    assert.equal(r.selector, `ed25519-${month}`);
    assert.equal(r.dns_name, `ed25519-${month}._domainkey.example.test`);
  });

  it('the key is readable only by the queue owner, and cleanup running as that user signs with it', async () => {
    // as root: a real privileged instance (cleanup runs as postern); otherwise a sandbox (everything runs as us)
    const dns = await new TestDnsServer().start();
    const own = await Instance.create({ unprivileged: !IS_ROOT, domain: 'owner.test', users: [{ address: 'bob@owner.test' }],
      main: { dns_servers: dns.address } });
    try {
      const r = JSON.parse(own.cli(['dkim', 'keygen', 'owner.test', '--selector', 'o1', '--json']).stdout);
      const passwd = fs.readFileSync('/etc/passwd', 'utf8').split('\n').map((l) => l.split(':'));
      const owner = IS_ROOT ? passwd.find((f) => f[0] === 'postern')! : passwd.find((f) => Number(f[2]) === process.getuid!())!;
      const [uid, gid] = [Number(owner[2]), Number(owner[3])];
      const key = fs.statSync(r.key_file);
      assert.deepEqual([key.uid, key.gid, key.mode & 0o777], [uid, gid, 0o600], 'the key: the queue owner\'s, mode 0600');
      const dir = fs.statSync(path.dirname(r.key_file));
      assert.deepEqual([dir.uid, dir.mode & 0o777], [uid, 0o700], 'the key directory: the queue owner\'s, mode 0700');
      const table = fs.statSync(r.table);
      assert.deepEqual([table.gid, table.mode & 0o777], [gid, 0o640], 'the table: readable by the queue owner\'s group');
      if (IS_ROOT) assert.equal(table.uid, 0, 'the table is root\'s to change');
      publishKeys(own, dns);
      await own.start();
      const { file } = await deliver(own, { from: 'alice@owner.test', to: 'bob@owner.test',
        message: message(['From: alice@owner.test', 'To: bob@owner.test', 'Subject: owner']) });
      assert.deepEqual(await dkimpyVerify(file, dns), [true]);
    } finally {
      await own.destroy();
      await dns.close();
    }
  });
});
