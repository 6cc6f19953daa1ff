/**
 * Delivery over LMTP to Dovecot (issue 11, item 2), configured exactly as
 * docs/dovecot.md says (the test reads its blocks from the doc): Postern under
 * its real accounts hands mail to Dovecot's LMTP socket; the message is in
 * Dovecot's store and read over IMAP; a Sieve fileinto rule files a tagged
 * message; an over-quota recipient is deferred (452 4.2.2) while the other
 * recipient of the same message is delivered; a 5xx for one recipient bounces
 * that one only; connections are reused and capped by
 * lmtp_destination_concurrency_limit; lmtp:inet:HOST:PORT works.
 */
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Instance, IS_ROOT, freePort, requireTool, run, waitFor } from './harness.js';
import { Dovecot, configFromDoc, docBlock, mainCfSettings, reloadAndWait, substitute } from './dovecot.js';
import { ImapClient } from './imap.js';

const PASS = 'imap password';
const ALICE = 'alice@example.test';
const BOB = 'bob@example.test'; // 1 KiB quota
const CAROL = 'carol@example.test';
const DAVE = 'dave@example.test';

/** Plain SMTP from loopback (mynetworks) to port 25; returns the queue id. */
function send(inst: Instance, to: string[], subject: string, body = 'hello'): string {
  const r = run(requireTool('swaks'), ['--timeout', '30', '--server', `127.0.0.1:${inst.ports.smtp}`, '--from', 'sender@remote.test',
    '--to', to.join(','), '--header', `Subject: ${subject}`, '--body', body]);
  const m = /250 2\.0\.0 Ok: queued as ([0-9A-F]{20})/.exec(r.stdout);
  assert.ok(m, r.stdout + r.stderr);
  return m[1];
}

/** The smtp/lmtp client's result line for one recipient of one message. */
function result(inst: Instance, id: string, to: string): any {
  return inst.logs().find((e) => e.queue_id === id && e.to === `<${to}>` && e.status);
}

async function waitResult(inst: Instance, id: string, to: string): Promise<any> {
  return waitFor(`a delivery result for ${to} of ${id}`, () => result(inst, id, to), 30000);
}

/** Messages in a user's folder, over IMAP: the subjects (SELECT, then FETCH each header). */
async function subjects(port: number, user: string, folder: string): Promise<string[]> {
  const imap = await ImapClient.connect(port);
  try {
    await imap.login(user, PASS);
    const n = await imap.select(folder);
    const out: string[] = [];
    for (let i = 1; i <= n; i++) {
      const { body } = await imap.fetchMessage(i);
      out.push(/^Subject: (.*)$/m.exec(body.toString('utf8'))?.[1].trim() ?? '');
    }
    return out;
  } finally {
    await imap.logout();
  }
}

/** Give a user's passwd-file line an extra userdb field (docs/dovecot.md: "A user's quota"). */
function addUserdbField(inst: Instance, address: string, field: string): void {
  const file = path.join(inst.etc, 'users');
  const st = fs.statSync(file);
  const text = fs.readFileSync(file, 'utf8').split('\n').map((l) => (l.startsWith(`${address}:`) ? `${l} ${field}` : l)).join('\n');
  fs.writeFileSync(file, text);
  fs.chownSync(file, st.uid, st.gid);
}

describe('delivery over LMTP to Dovecot (docs/dovecot.md)', () => {
  let inst: Instance;
  let dovecot: Dovecot;
  let lmtpTcpPort = 0;
  const dovecotLog = () => dovecot.log();

  before(async () => {
    assert.ok(IS_ROOT, 'this test runs Postern under its real accounts and Dovecot as root, as docs/dovecot.md sets them up: run it as root (CI does)');
    inst = await Instance.create({ unprivileged: false,
      users: [ALICE, BOB, CAROL, DAVE].map((address) => ({ address, password: PASS })) });
    inst.cli(['config', 'set', ...mainCfSettings(docBlock('main.cf'))]);
    addUserdbField(inst, BOB, 'userdb_quota_rule=*:storage=1K');
    await inst.start();
    lmtpTcpPort = await freePort();
    await startDovecot();
  });
  /** Dovecot with the doc's dovecot.conf and its TCP listeners (dovecot-tcp.conf). */
  async function startDovecot(): Promise<void> {
    dovecot = await Dovecot.start({
      config: async (dir, imapPort) => configFromDoc({ etc: inst.etc, spool: inst.spool, dir, imapPort, imapsPort: await freePort(),
        extra: substitute(docBlock('dovecot-tcp.conf'), [['port = 24', `port = ${lmtpTcpPort}`], ['port = 12345', `port = ${await freePort()}`]], 'dovecot-tcp.conf') }),
    });
  }
  after(async () => {
    await dovecot?.stop();
    await inst?.destroy();
  });

  it('mail to a user arrives through Postern\'s LMTP client in Dovecot\'s store and is read over IMAP', async () => {
    const id = send(inst, [ALICE], 'to dovecot via lmtp');
    const r = await waitResult(inst, id, ALICE);
    assert.equal(r.status, 'sent', JSON.stringify(r));
    assert.match(r.relay, /dovecot-lmtp\[.*\/private\/dovecot-lmtp\]/);
    assert.match(dovecotLog(), /lmtp\(alice@example\.test\).*saved mail to INBOX/, dovecotLog());
    assert.deepEqual(await subjects(dovecot.port, ALICE, 'INBOX'), ['to dovecot via lmtp']);
  });

  it('a Sieve fileinto rule (the doc\'s example) puts a tagged message into its folder', async () => {
    const home = path.join(inst.dir, 'mail', 'example.test', 'alice');
    const vmail = fs.statSync(home); // created by the first delivery, owned by the user's uid (vmail)
    const script = path.join(home, '.dovecot.sieve');
    fs.writeFileSync(script, docBlock('example.sieve'));
    fs.chownSync(script, vmail.uid, vmail.gid);
    const id = send(inst, [ALICE], '[list] weekly digest');
    assert.equal((await waitResult(inst, id, ALICE)).status, 'sent');
    assert.deepEqual(await subjects(dovecot.port, ALICE, 'Lists'), ['[list] weekly digest'], dovecotLog());
    assert.deepEqual(await subjects(dovecot.port, ALICE, 'INBOX'), ['to dovecot via lmtp'], 'the tagged message is not in INBOX');
  });

  it('over quota: that recipient is deferred (452 4.2.2), the other recipient of the same message is delivered', async () => {
    const id = send(inst, [BOB, CAROL], 'too big for bob', 'x'.repeat(70).concat('\n').repeat(60));
    const carol = await waitResult(inst, id, CAROL);
    const bob = await waitResult(inst, id, BOB);
    assert.equal(carol.status, 'sent', JSON.stringify(carol));
    assert.equal(bob.status, 'deferred', JSON.stringify(bob));
    assert.equal(bob.dsn, '4.2.2');
    assert.match(bob.msg, /Quota exceeded/);
    assert.deepEqual(await subjects(dovecot.port, CAROL, 'INBOX'), ['too big for bob']);
    assert.ok(inst.queued('deferred').some((f) => path.basename(f) === id), 'the message waits in deferred/ for bob');
    assert.ok(!inst.logs().some((e) => e.queue_id === id && e.to === `<${BOB}>` && e.status === 'bounced'), 'bob is not bounced');
  });

  it('connections are reused and capped by lmtp_destination_concurrency_limit', async () => {
    inst.cli(['config', 'set', 'lmtp_destination_concurrency_limit=1']);
    await reloadAndWait(inst, ['qmgr', 'lmtp']);
    // five messages wait in deferred/ while Dovecot is down; a fresh Dovecot then gets them all at once on a flush,
    // and its log shows every connection (none from the earlier tests is open)
    await dovecot.stop();
    const ids = [1, 2, 3, 4, 5].map((n) => send(inst, [CAROL], `burst ${n}`));
    for (const id of ids) assert.equal((await waitResult(inst, id, CAROL)).status, 'deferred');
    await startDovecot();
    inst.cli(['queue', 'flush']);
    for (const id of ids) {
      await waitFor(`${id} delivered`, () => inst.logs().some((e) => e.queue_id === id && e.to === `<${CAROL}>` && e.status === 'sent'), 30000);
    }
    // Dovecot logs each LMTP connection: "lmtp(PID): Connect from local" ... "Disconnect from local"
    let open = 0;
    let most = 0;
    let connects = 0;
    for (const line of dovecotLog().split('\n')) {
      if (/lmtp\(\d+\): Info: Connect from/.test(line)) { open++; connects++; most = Math.max(most, open); }
      if (/lmtp\(\d+\): Info: Disconnect from/.test(line)) open--;
    }
    assert.ok(connects >= 1, dovecotLog());
    assert.equal(most, 1, `never more than one LMTP connection open at once\n${dovecotLog()}`);
    assert.ok(connects < ids.length, `${ids.length} messages over ${connects} connection(s): kept connections are reused`);
  });

  it('a 5xx for one recipient bounces that one only; Dovecot unreachable defers (lmtp:inet:HOST:PORT)', async () => {
    const tcp = mainCfSettings(substitute(docBlock('main-tcp.cf'), [['127.0.0.1:24', `127.0.0.1:${lmtpTcpPort}`]], 'main-tcp.cf'))
      .filter((s) => /_transport=/.test(s));
    assert.deepEqual(tcp, [`mailbox_transport=lmtp:inet:127.0.0.1:${lmtpTcpPort}`, `virtual_transport=lmtp:inet:127.0.0.1:${lmtpTcpPort}`]);
    inst.cli(['config', 'set', 'lmtp_destination_concurrency_limit=20', ...tcp]);
    await reloadAndWait(inst, ['qmgr', 'lmtp']);
    const id = send(inst, [CAROL, DAVE], 'dave leaves');
    const first = await waitResult(inst, id, CAROL);
    assert.equal(first.status, 'sent', JSON.stringify(first));
    assert.match(first.relay, new RegExp(`127\\.0\\.0\\.1\\]:${lmtpTcpPort}$`));
    assert.equal((await waitResult(inst, id, DAVE)).status, 'sent');

    // dave is removed after Postern accepted mail for him: Dovecot's LMTP answers 550 for him alone
    await dovecot.stop();
    const id2 = send(inst, [CAROL, DAVE], 'after dave left');
    const down = await waitResult(inst, id2, CAROL);
    assert.equal(down.status, 'deferred', `Dovecot stopped: ${JSON.stringify(down)}`);
    assert.equal((await waitResult(inst, id2, DAVE)).status, 'deferred');
    inst.cli(['user', 'del', DAVE]);
    await startDovecot();
    inst.cli(['queue', 'flush']);
    const bounced = await waitFor('dave bounced', () => inst.logs().find((e) => e.queue_id === id2 && e.to === `<${DAVE}>` && e.status === 'bounced'), 30000);
    assert.match(bounced.dsn, /^5\./);
    await waitFor('carol delivered', () => inst.logs().find((e) => e.queue_id === id2 && e.to === `<${CAROL}>` && e.status === 'sent'), 30000);
    assert.ok((await subjects(dovecot.port, CAROL, 'INBOX')).includes('after dave left'));
  });
});

describe('a wrong transport or SASL path is refused with its main.cf line', () => {
  let inst: Instance;
  before(async () => { inst = await Instance.create(); });
  after(async () => { await inst?.destroy(); });

  it('postern check names the line and the problem; config set refuses the value', () => {
    const mainCf = path.join(inst.etc, 'main.cf');
    const first = fs.readFileSync(mainCf, 'utf8').split('\n').length;
    fs.appendFileSync(mainCf, 'virtual_transport = lmtp:tcp:127.0.0.1:24\nmailbox_transport = dovecot\nsmtpd_sasl_path = inet:127.0.0.1\n');
    const r = inst.tryCli(['check']);
    assert.equal(r.code, 1, r.stdout + r.stderr);
    const at = (n: number) => `${mainCf}:${first + n - 1}: error: `;
    assert.ok(r.stderr.includes(`${at(1)}virtual_transport: "lmtp:tcp:127.0.0.1:24" is not lmtp:unix:PATH or lmtp:inet:HOST:PORT`), r.stderr);
    assert.ok(r.stderr.includes(`${at(2)}mailbox_transport: "dovecot" is not local, lmtp:unix:PATH or lmtp:inet:HOST:PORT`), r.stderr);
    assert.ok(r.stderr.includes(`${at(3)}smtpd_sasl_path: "inet:127.0.0.1" is not inet:HOST:PORT`), r.stderr);
    const set = inst.tryCli(['config', 'set', 'virtual_transport=lmtp:inet:host']);
    assert.notEqual(set.code, 0);
    assert.match(set.stderr, /virtual_transport: "lmtp:inet:host" is not lmtp:unix:PATH or lmtp:inet:HOST:PORT/);
  });
});
