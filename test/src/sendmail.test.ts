// sendmail and pickup: local submission through maildrop/, on a real sandbox instance.
// The "ordinary user" tests switch to nobody with setpriv (util-linux), so they need root.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Instance, ROOT, IS_ROOT, run, RunResult, requireTool, waitFor } from './harness.js';

const SENDMAIL = path.join(ROOT, 'bin', 'sendmail');
const NOBODY_UID = 65534;
let inst: Instance;

before(async () => {
  inst = await Instance.create({
    users: [{ address: 'alice@example.test' }, { address: 'bob@example.test' }, { address: 'carol@example.test' }],
    // mail for other domains waits in the queue: nothing listens on the discard port
    main: { relayhost: '[127.0.0.1]:9' },
  });
  await inst.start();
});

after(async () => { await inst?.destroy(); });

/** bin/sendmail -C ETC ARGS with INPUT on stdin, as the test's user or as nobody. */
function sendmail(args: string[], input: string, asNobody = false): RunResult {
  const argv = [SENDMAIL, '-C', inst.etc, ...args];
  if (!asNobody) return run(process.execPath, argv, { input });
  assert.ok(IS_ROOT, 'this test submits mail as the user nobody: run the tests as root (make test does)');
  return run(requireTool('setpriv'), ['--reuid=nobody', '--regid=nogroup', '--clear-groups', process.execPath, ...argv],
    { input, cwd: '/' });
}

function submitted(r: RunResult): void {
  assert.equal(r.code, 0, `sendmail failed: ${r.stderr}`);
}

/** The delivered copy (Maildir new/) whose content contains MARKER. */
async function deliveredWith(address: string, marker: string): Promise<string> {
  return waitFor(`a message with "${marker}" in ${address}'s Maildir`, () => {
    for (const f of inst.delivered(address)) {
      const text = fs.readFileSync(f, 'utf8');
      if (text.includes(marker)) return text;
    }
    return null;
  });
}

function headerOf(message: string): string {
  return message.split(/\r?\n\r?\n/)[0];
}

function me(): string {
  return os.userInfo().username;
}

test('sendmail -t delivers to To:, Cc: and Bcc: recipients and removes Bcc:', async () => {
  submitted(sendmail(['-t'], [
    'To: Alice <alice@example.test>',
    'Cc: bob@example.test',
    'Bcc: carol@example.test',
    'Subject: extract-t',
    '',
    'Hello from -t.',
    '',
  ].join('\n')));
  for (const rcpt of ['alice@example.test', 'bob@example.test', 'carol@example.test']) {
    const msg = await deliveredWith(rcpt, 'Subject: extract-t');
    const head = headerOf(msg);
    assert.doesNotMatch(head, /^Bcc:/mi, `${rcpt}'s copy shows Bcc:`);
    assert.match(head, /^To: Alice <alice@example\.test>$/m);
    assert.match(head, /^Cc: bob@example\.test$/m);
    // submitted by the test's own user: the identity comes from the maildrop file's owner
    assert.match(head, new RegExp(`^Received: by mx\\.example\\.test \\(Postern, from userid ${process.getuid!()}\\)$`, 'm'));
    assert.match(head, new RegExp(`^Return-Path: <${me()}@example\\.test>$`, 'm'));
    assert.match(head, new RegExp(`^From: ${me()}@example\\.test$`, 'm'), 'a From: header is added when there is none');
    assert.doesNotMatch(head, /^X-Authentication-Warning:/m);
    assert.match(msg, /\n\nHello from -t\.\n/);
  }
});

test('an ordinary user: the sender and Received: come from the file owner, unqualified names get @myorigin', async () => {
  submitted(sendmail(['alice'], 'Subject: nobody-plain\n\nsent by nobody\n', true));
  const head = headerOf(await deliveredWith('alice@example.test', 'Subject: nobody-plain'));
  assert.match(head, new RegExp(`^Received: by mx\\.example\\.test \\(Postern, from userid ${NOBODY_UID}\\)$`, 'm'));
  assert.match(head, /^Return-Path: <nobody@example\.test>$/m);
  assert.match(head, /^From: nobody@example\.test$/m);
  assert.doesNotMatch(head, /^X-Authentication-Warning:/m, 'no warning without -f');
});

test('an ordinary user setting another sender with -f gets X-Authentication-Warning:', async () => {
  submitted(sendmail(['-f', 'other@example.test', 'alice@example.test'],
    'From: nobody@example.test\nSubject: nobody-forged\n\nwho am I\n', true));
  const head = headerOf(await deliveredWith('alice@example.test', 'Subject: nobody-forged'));
  assert.match(head, /^X-Authentication-Warning: mx\.example\.test: nobody set sender to other@example\.test using -f$/m);
  assert.match(head, /^Return-Path: <other@example\.test>$/m, 'the envelope sender is the one given');
  assert.match(head, /^From: nobody@example\.test$/m);
  assert.match(head, new RegExp(`from userid ${NOBODY_UID}\\)`));

  // the From: that -f and -F make is not nobody's: refused (bounced 5.7.1, smtpd_reject_header_from_mismatch)
  submitted(sendmail(['-f', 'other@example.test', '-F', 'Other Person', 'alice@example.test'],
    'Subject: nobody-other-from\n\nwho am I\n', true));
  const refused = await inst.waitForLog('the refusal', (e) => e.service === 'cleanup' && e.status === 'bounced' &&
    /From: <other@example\.test> not owned by local user nobody/.test(e.msg));
  assert.equal(refused.dsn, '5.7.1');
  assert.ok(!inst.delivered('alice@example.test').some((f) => fs.readFileSync(f, 'utf8').includes('nobody-other-from')), 'not delivered');

  // -f with one's own address is no forgery
  submitted(sendmail(['-f', 'nobody@example.test', 'alice@example.test'], 'Subject: nobody-own-f\n\nme\n', true));
  const own = headerOf(await deliveredWith('alice@example.test', 'Subject: nobody-own-f'));
  assert.doesNotMatch(own, /^X-Authentication-Warning:/m);
  assert.match(own, /^Return-Path: <nobody@example\.test>$/m);
});

test('the instance user (trusted) may set any sender without a warning', async () => {
  submitted(sendmail(['-f', 'someone@elsewhere.test', 'bob@example.test'], 'From: Someone <someone@elsewhere.test>\nSubject: trusted-f\n\nx\n'));
  const head = headerOf(await deliveredWith('bob@example.test', 'Subject: trusted-f'));
  assert.match(head, /^Return-Path: <someone@elsewhere\.test>$/m);
  assert.match(head, /^From: Someone <someone@elsewhere\.test>$/m, 'an existing From: is kept as it is');
  assert.equal((head.match(/^From:/gm) ?? []).length, 1);
  assert.doesNotMatch(head, /^X-Authentication-Warning:/m);
});

test('without -i a line with a single "." ends the message; with -i or -oi it is text', async () => {
  const body = (tag: string) => `Subject: dots-${tag}\n\nbefore the dot\n..two dots stay\n.\nafter the dot ${tag}\n`;
  submitted(sendmail(['carol@example.test'], body('plain')));
  submitted(sendmail(['-i', 'carol@example.test'], body('i')));
  submitted(sendmail(['-oi', 'carol@example.test'], body('oi')));

  const plain = await deliveredWith('carol@example.test', 'Subject: dots-plain');
  assert.match(plain, /\nbefore the dot\n\.\.two dots stay\n$/, 'the message ends before the lone dot');
  assert.doesNotMatch(plain, /after the dot/);
  for (const tag of ['i', 'oi']) {
    const msg = await deliveredWith('carol@example.test', `Subject: dots-${tag}`);
    assert.match(msg, new RegExp(`\\nbefore the dot\\n\\.\\.two dots stay\\n\\.\\nafter the dot ${tag}\\n$`), `-${tag} keeps everything`);
  }
});

test('bad usage gets a clear error and sysexits code; unknown options only warn', async () => {
  const none = sendmail([], 'Subject: x\n\nx\n');
  assert.equal(none.code, 64);
  assert.match(none.stderr, /^sendmail: fatal: no recipients specified$/m);

  const noHeaders = sendmail(['-t'], 'Subject: no recipients\n\nx\n');
  assert.equal(noHeaders.code, 64);
  assert.match(noHeaders.stderr, /no recipient addresses found in the message header/);

  const bs = sendmail(['-bs'], '');
  assert.equal(bs.code, 64);
  assert.match(bs.stderr, /-bs .*not supported/);

  const badRcpt = sendmail(['@example.test'], 'x\n');
  assert.equal(badRcpt.code, 64);
  assert.match(badRcpt.stderr, /bad recipient address/);

  // compatibility flags that mean nothing here are accepted; an unknown letter warns
  const compat = sendmail(['-odi', '-oem', '-v', '-Z', 'bob@example.test'], 'Subject: compat-flags\n\nx\n');
  assert.equal(compat.code, 0, compat.stderr);
  assert.equal(compat.stderr, 'sendmail: warning: -Z: unknown option, ignored\n');
  await deliveredWith('bob@example.test', 'Subject: compat-flags');
});

test('pickup takes a hand-written maildrop file; unusable entries go to corrupt/ or are removed', async () => {
  const maildrop = path.join(inst.spool, 'maildrop');
  // the format sendmail writes (docs/sendmail.md): a JSON line, then the message with CRLF
  const good = '006B0000000000000001';
  fs.writeFileSync(path.join(maildrop, `.${good}`),
    '{"maildrop":1,"sender":null,"recipients":["carol"]}\nSubject: hand-written\r\n\r\nbody\r\n', { mode: 0o644 });
  fs.renameSync(path.join(maildrop, `.${good}`), path.join(maildrop, good));
  const bad = '006B0000000000000002';
  fs.writeFileSync(path.join(maildrop, `.${bad}`), 'not a maildrop file\n', { mode: 0o644 });
  fs.renameSync(path.join(maildrop, `.${bad}`), path.join(maildrop, bad));
  const link = '006B0000000000000003';
  const target = path.join(inst.dir, 'secret');
  fs.writeFileSync(target, 'not for pickup\n', { mode: 0o600 });
  fs.symlinkSync(target, path.join(maildrop, link));

  const msg = await deliveredWith('carol@example.test', 'Subject: hand-written');
  assert.match(msg, new RegExp(`^Return-Path: <${me()}@example\\.test>$`, 'm'));
  const corrupt = path.join(inst.spool, 'corrupt', bad);
  await waitFor('the malformed file in corrupt/', () => fs.existsSync(corrupt));
  assert.equal(fs.readFileSync(corrupt, 'utf8'), 'not a maildrop file\n', 'kept as it was');
  await waitFor('maildrop/ to be empty', () => fs.readdirSync(maildrop).length === 0);
  assert.equal(fs.existsSync(path.join(inst.spool, 'corrupt', link)), false, 'a symbolic link is removed, not kept');
  assert.equal(fs.readFileSync(target, 'utf8'), 'not for pickup\n');
  // master relays log lines in batches: the line can come after the file has moved
  await inst.waitForLog('pickup\'s line for the malformed file', (e) => e.service === 'pickup' && e.maildrop_file === bad && /header line is not JSON/.test(e.problem));
  assert.equal(inst.delivered('carol@example.test').some((f) => fs.readFileSync(f, 'utf8').includes('not for pickup')), false);
});

test('sendmail -bp prints what postern queue list prints', async () => {
  submitted(sendmail(['-f', 'alice@example.test', 'someone@remote.test'], 'Subject: waits\n\nx\n'));
  await waitFor('the message to wait in deferred/', () => inst.queued('deferred').length > 0, 20000);
  // a stopped instance's queue holds still, so the two listings see the same thing
  await inst.stop();
  const bp = sendmail(['-bp'], '');
  const list = inst.cli(['queue', 'list']);
  assert.equal(bp.code, 0, bp.stderr);
  assert.match(bp.stdout, /someone@remote\.test/);
  assert.match(bp.stdout, /^-- \d+ Kbytes in 1 Request\.$/m);
  assert.equal(bp.stdout, list.stdout);
});
