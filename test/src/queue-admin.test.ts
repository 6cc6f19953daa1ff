/**
 * The queue toolset (issue 5, item 1) and service control (item 3) on a live
 * sandbox instance whose spool holds active, deferred and held messages:
 * - deferred: mail for dead.test and other.test, whose MX hosts (served by a
 *   DNS server on loopback) refuse connections, and for flaky.test while the
 *   remote MTA answers 450 at RCPT;
 * - active: mail for slow.test, whose MTA holds the DATA reply until the test
 *   lets it go;
 * - held: `postern queue hold`.
 * Every command is run; the files on disk, the remote MTA and the sender's
 * mailbox show what moved, what was delivered and what was deleted, and the
 * services keep running (same pids) throughout.
 */
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { SMTPServer } from 'smtp-server';
import { Instance, freePort, waitFor, run, ROOT, POSTERN, submitAs } from './harness.js';
import { TestDnsServer } from './dns-server.js';

const SENDER = 'alice@a.test';
const PASS = 'alice-secret';
const QUEUES = ['incoming', 'active', 'deferred', 'hold', 'corrupt'];

/** The remote MTA: refuses flaky.test at RCPT while told to, holds DATA replies while told to. */
class RemoteMta {
  server!: SMTPServer;
  accepted: { to: string[]; data: string }[] = [];
  flaky = true;
  stall = true;
  private waiting: { cb: (err?: Error | null) => void; to: string[]; data: string }[] = [];
  constructor(readonly host: string, readonly port: number) {}

  async start(): Promise<this> {
    this.server = new SMTPServer({
      disabledCommands: ['STARTTLS', 'AUTH'], logger: false,
      onRcptTo: (addr, _s, cb) => {
        if (this.flaky && addr.address.endsWith('@flaky.test')) return cb(Object.assign(new Error('4.2.0 mailbox busy, try later'), { responseCode: 450 }));
        cb();
      },
      onData: (stream, s, cb) => {
        const chunks: Buffer[] = [];
        stream.on('data', (d: Buffer) => chunks.push(d));
        stream.on('end', () => {
          const item = { cb, to: s.envelope.rcptTo.map((r) => r.address), data: Buffer.concat(chunks).toString('utf8') };
          if (this.stall) this.waiting.push(item);
          else { this.accepted.push(item); cb(); }
        });
      },
    });
    this.server.on('error', () => undefined);
    await new Promise<void>((r) => this.server.listen(this.port, this.host, r));
    return this;
  }

  get stalled(): number { return this.waiting.length; }

  /** Answer every held DATA: 250 (accept) or 451. */
  finish(how: 'accept' | 'tempfail'): void {
    for (const w of this.waiting.splice(0)) {
      if (how === 'accept') { this.accepted.push(w); w.cb(); }
      else w.cb(Object.assign(new Error('4.3.0 try again later'), { responseCode: 451 }));
    }
  }

  got(subject: string): number {
    return this.accepted.filter((m) => m.data.includes(`Subject: ${subject}\r\n`)).length;
  }

  close(): Promise<void> {
    this.finish('tempfail');
    return new Promise((r) => this.server.close(() => r()));
  }
}

describe('postern queue: the queue toolset on a live spool', () => {
  let dns: TestDnsServer;
  let remote: RemoteMta;
  let a: Instance;
  let statusBefore: any;
  const id: Record<string, string> = {};

  /** The queue directory holding a message, from the files on disk. */
  const where = (qid: string): string | null => {
    for (const q of QUEUES) {
      const p = q === 'deferred' ? path.join(a.spool, q, qid.slice(-1), qid) : path.join(a.spool, q, qid);
      if (fs.existsSync(p)) return q;
    }
    return null;
  };
  const onDisk = (): Map<string, string> => {
    const m = new Map<string, string>();
    for (const q of ['incoming', 'active', 'deferred', 'hold']) {
      for (const f of a.queued(q)) if (!path.basename(f).startsWith('.')) m.set(path.basename(f), q);
    }
    return m;
  };
  const listJson = (): any[] => a.cli(['queue', 'list', '--json']).stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l));
  const showJson = (qid: string): any => JSON.parse(a.cli(['queue', 'show', qid, '--json', '--envelope']).stdout);

  const submit = (to: string, subject: string) => submitAs(a, SENDER, PASS, to, subject);

  function assertListMatchesDisk(): void {
    const listed = new Map(listJson().map((e) => [e.queue_id, e.queue_name]));
    assert.deepEqual([...listed.entries()].sort(), [...onDisk().entries()].sort());
  }

  function assertServicesUnchanged(): void {
    const now = a.status();
    assert.equal(now.running, true);
    assert.equal(now.master.pid, statusBefore.master.pid);
    assert.ok(now.services.length > 0);
    for (const s of now.services) assert.equal(s.running, true, `${s.command} (${s.service}) not running`);
    assert.deepEqual(now.services.map((s: any) => s.pid), statusBefore.services.map((s: any) => s.pid));
  }

  before(async () => {
    const port = await freePort('127.0.0.7');
    dns = await new TestDnsServer({ records: [
      { name: 'slow.test', type: 'MX', value: { priority: 10, exchange: 'mx.slow.test' } },
      { name: 'mx.slow.test', type: 'A', value: '127.0.0.7' },
      { name: 'flaky.test', type: 'MX', value: { priority: 10, exchange: 'mx.flaky.test' } },
      { name: 'mx.flaky.test', type: 'A', value: '127.0.0.7' },
      { name: 'dead.test', type: 'MX', value: { priority: 10, exchange: 'mx.dead.test' } },
      { name: 'mx.dead.test', type: 'A', value: '127.0.0.8' },
      { name: 'other.test', type: 'MX', value: { priority: 10, exchange: 'mx.other.test' } },
      { name: 'mx.other.test', type: 'A', value: '127.0.0.9' },
    ] }).start();
    remote = await new RemoteMta('127.0.0.7', port).start();
    // retries only when the administrator asks: nothing moves behind the test's back
    a = await Instance.create({ domain: 'a.test', users: [{ address: SENDER, password: PASS }],
      main: { dns_servers: dns.address, smtp_port: String(port), minimal_backoff_time: '1h', maximal_backoff_time: '1h', queue_run_delay: '1h' } });
    await a.start();
    statusBefore = a.status();

    for (const [k, to] of [['d1', 'x1@dead.test'], ['d2', 'x2@dead.test'], ['d3', 'x3@dead.test'], ['o1', 'y@other.test'],
      ['f1', 'r1@flaky.test'], ['f2', 'r2@flaky.test'], ['s1', 'w@slow.test']]) {
      id[k] = await submit(to, `${k} message`);
    }
    for (const k of ['d1', 'd2', 'd3', 'o1', 'f1', 'f2']) await waitFor(`${k} deferred`, () => where(id[k]) === 'deferred', 30000);
    await waitFor('s1 at the remote MTA, waiting for its DATA reply', () => remote.stalled === 1 && where(id.s1) === 'active', 30000);
  });

  after(async () => {
    await a?.destroy();
    await remote?.close();
    await dns?.close();
  });

  it('hold moves a deferred message to hold/', () => {
    const r = a.cli(['queue', 'hold', id.d3]);
    assert.match(r.stdout, new RegExp(`${id.d3}: held \\(was in deferred/\\)`));
    assert.match(r.stdout, /Placed on hold: 1 message/);
    assert.equal(where(id.d3), 'hold');
  });

  it('list (and mailq) agrees with the files on disk, with * for active and ! for held', () => {
    assertListMatchesDisk();
    const listed = listJson();
    assert.equal(listed.find((e) => e.queue_id === id.s1).queue_name, 'active');
    assert.equal(listed.find((e) => e.queue_id === id.d3).queue_name, 'hold');
    const d1 = listed.find((e) => e.queue_id === id.d1);
    assert.equal(d1.recipients[0].address, 'x1@dead.test');
    assert.match(d1.recipients[0].delay_reason, /\S/);
    const text = a.cli(['queue', 'list']).stdout;
    assert.match(text, new RegExp(`^${id.s1}\\*`, 'm'));
    assert.match(text, new RegExp(`^${id.d3}!`, 'm'));
    assert.match(text, new RegExp(`^${id.d1} `, 'm'));
    assert.match(text, /-- \d+ Kbytes in 7 Requests\./);
    // bin/mailq: the same listing, configuration from $POSTERN_CONFIG or -C
    const mailq = path.join(ROOT, 'bin', 'mailq');
    const viaEnv = run(process.execPath, [mailq], { env: { ...process.env, POSTERN_CONFIG: a.etc } });
    assert.equal(viaEnv.code, 0, viaEnv.stderr);
    assert.equal(viaEnv.stdout, text);
    const viaOpt = run(process.execPath, [mailq, '-C', a.etc, '-j']);
    assert.equal(viaOpt.code, 0, viaOpt.stderr);
    assert.deepEqual(viaOpt.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l).queue_id).sort(), [...onDisk().keys()].sort());
  });

  it('refuses malformed ids and names outside the spool, touching nothing', () => {
    const canary = path.join(a.dir, 'canary');
    fs.writeFileSync(canary, 'still here\n');
    const before = onDisk();
    const bad = ['xyz', '../../canary', '../../../etc/passwd', id.d1.toLowerCase(), `${id.d1}/`, ''];
    for (const cmd of ['delete', 'hold', 'release', 'requeue', 'expire', 'deliver', 'show']) {
      for (const b of bad) {
        const r = a.tryCli(['queue', cmd, b]);
        assert.equal(r.code, 1, `queue ${cmd} ${JSON.stringify(b)} exited ${r.code}`);
        assert.match(r.stderr, new RegExp(`^postern: bad queue id "${b.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}"`, 'm'), `queue ${cmd} ${b}: ${r.stderr}`);
      }
    }
    // one bad id among good ones: nothing at all is done
    const mixed = a.tryCli(['queue', 'delete', id.d1, '../../canary']);
    assert.equal(mixed.code, 1);
    assert.match(mixed.stderr, /bad queue id "\.\.\/\.\.\/canary"/);
    const stdin = a.tryCli(['queue', 'delete', '-'], { input: `${id.d1}\n../../canary\n` });
    assert.equal(stdin.code, 1);
    assert.match(stdin.stderr, /bad queue id "\.\.\/\.\.\/canary"/);
    const log = a.tryCli(['log', '--queue-id', '../x']);
    assert.equal(log.code, 1);
    assert.match(log.stderr, /bad queue id "\.\.\/x"/);
    assert.equal(fs.readFileSync(canary, 'utf8'), 'still here\n');
    assert.deepEqual([...onDisk().entries()].sort(), [...before.entries()].sort());
    // a well-formed id that is not queued
    const missing = a.tryCli(['queue', 'delete', '0000000000000000000A']);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /0000000000000000000A: not in the queue/);
  });

  it('show prints the envelope, each recipient\'s status and the message', () => {
    const all = a.cli(['queue', 'show', id.d1]).stdout;
    assert.match(all, new RegExp(`^\\*\\*\\* ENVELOPE RECORDS deferred/${id.d1} \\*\\*\\*$`, 'm'));
    assert.match(all, /^sender: alice@a\.test$/m);
    assert.match(all, /^recipient: x1@dead\.test status=deferred dsn=4\.\S+ \(.+\)$/m);
    assert.match(all, /^attempts: 1$/m);
    assert.match(all, /^\*\*\* MESSAGE CONTENTS /m);
    assert.match(all, /^Subject: d1 message$/m);
    assert.match(all, /^body of d1 message$/m);
    assert.match(all, /^\*\*\* MESSAGE FILE END /m);
    const env = a.cli(['queue', 'show', id.d1, '--envelope']).stdout;
    assert.match(env, /^sender: alice@a\.test$/m);
    assert.doesNotMatch(env, /Subject:|\*\*\*/);
    const headers = a.cli(['queue', 'show', id.d1, '--headers']).stdout;
    assert.match(headers, /^Subject: d1 message$/m);
    assert.match(headers, /^Received: /m);
    assert.doesNotMatch(headers, /body of d1|^sender: /m);
    const body = a.cli(['queue', 'show', id.d1, '--body']).stdout;
    assert.equal(body.trim(), 'body of d1 message');
    const j = JSON.parse(a.cli(['queue', 'show', id.d1, '--json']).stdout);
    assert.equal(j.queue_id, id.d1);
    assert.equal(j.queue_name, 'deferred');
    assert.equal(j.sender, SENDER);
    assert.equal(j.recipients[0].address, 'x1@dead.test');
    assert.equal(j.recipients[0].status, 'deferred');
    assert.match(j.headers, /Subject: d1 message\r\n/);
    assert.equal(j.body.trim(), 'body of d1 message');
  });

  it('an operation on a message being delivered waits for that attempt: nothing lost, nothing twice', async () => {
    assert.equal(where(id.s1), 'active');
    const r = a.cli(['queue', 'hold', id.s1]);
    assert.match(r.stdout, new RegExp(`${id.s1}: being delivered; hold applies when that attempt ends`));
    assert.equal(where(id.s1), 'active');
    remote.finish('tempfail');
    await waitFor('s1 held after its attempt', () => where(id.s1) === 'hold', 20000);
    assert.equal(remote.got('s1 message'), 0);
    assertListMatchesDisk();
    // release: due now, delivered once
    remote.stall = false;
    const rel = a.cli(['queue', 'release', id.s1]);
    assert.match(rel.stdout, /Released from hold: 1 message/);
    await waitFor('s1 delivered', () => remote.got('s1 message') === 1 && where(id.s1) === null, 20000);
    assert.equal(remote.got('s1 message'), 1);
  });

  it('deliver delivers one deferred message now, and refuses a held one', async () => {
    remote.flaky = false;
    const r = a.cli(['queue', 'deliver', id.f1]);
    assert.match(r.stdout, new RegExp(`${id.f1}: scheduled`));
    await waitFor('f1 delivered', () => remote.got('f1 message') === 1 && where(id.f1) === null, 20000);
    assert.equal(where(id.f2), 'deferred');
    assert.equal(remote.got('f2 message'), 0);
    const held = a.tryCli(['queue', 'deliver', id.d3]);
    assert.equal(held.code, 1);
    assert.match(held.stderr, /is on hold \(release it first\)/);
    assert.equal(where(id.d3), 'hold');
  });

  it('flush --site retries only mail for that domain', async () => {
    const mtime = (qid: string) => fs.statSync(path.join(a.spool, 'deferred', qid.slice(-1), qid)).mtimeMs;
    const before = { d1: mtime(id.d1), d2: mtime(id.d2), o1: mtime(id.o1) };
    const r = a.cli(['queue', 'flush', '--site', 'flaky.test']);
    assert.match(r.stdout, new RegExp(`${id.f2}: scheduled`));
    assert.match(r.stdout, /1 message for flaky\.test scheduled/);
    await waitFor('f2 delivered', () => remote.got('f2 message') === 1 && where(id.f2) === null, 20000);
    assert.deepEqual({ d1: mtime(id.d1), d2: mtime(id.d2), o1: mtime(id.o1) }, before);
    assert.equal(showJson(id.d1).attempts, 1);
  });

  it('flush retries every deferred message now', async () => {
    const r = a.cli(['queue', 'flush']);
    assert.match(r.stdout, /flush requested/);
    for (const k of ['d1', 'd2', 'o1']) {
      await waitFor(`${k} tried again`, () => where(id[k]) === 'deferred' && showJson(id[k]).attempts === 2, 20000);
    }
    assert.equal(where(id.d3), 'hold'); // held mail is not flushed
    assertListMatchesDisk();
  });

  it('requeue sends a held message through the queue again', async () => {
    const r = a.cli(['queue', 'requeue', id.d3]);
    assert.match(r.stdout, new RegExp(`${id.d3}: requeued \\(was in hold/\\)`));
    await waitFor('d3 tried again', () => where(id.d3) === 'deferred' && showJson(id.d3).attempts === 2, 20000);
    await a.waitForLog('requeue logged', (e) => e.queue_id === id.d3 && e.status === 'requeued');
  });

  it('expire returns a message to its sender at once', async () => {
    const r = a.cli(['queue', 'expire', id.o1]);
    assert.match(r.stdout, new RegExp(`${id.o1}: expired`));
    await waitFor('o1 gone', () => where(id.o1) === null, 20000);
    await a.waitForLog('expiry logged', (e) => e.queue_id === id.o1 && e.status === 'expired' && e.to === '<y@other.test>');
    const dsn = await waitFor('DSN in the sender\'s Maildir', () => a.delivered(SENDER).find((f) => {
      const t = fs.readFileSync(f, 'utf8');
      return t.includes('multipart/report') && t.includes('y@other.test');
    }), 20000);
    assert.match(fs.readFileSync(dsn, 'utf8'), /Action: failed/);
  });

  it('delete: by id, ALL in one queue, and ids from standard input', async () => {
    a.cli(['queue', 'hold', id.d2]);
    assert.equal(where(id.d2), 'hold');
    const one = a.cli(['queue', 'delete', id.d1]);
    assert.match(one.stdout, /Deleted: 1 message/);
    assert.equal(where(id.d1), null);
    const held = a.cli(['queue', 'delete', 'ALL', '--queue', 'hold']);
    assert.match(held.stdout, /Deleted: 1 message/);
    assert.equal(where(id.d2), null);
    assert.equal(where(id.d3), 'deferred');
    // mailq's marks may come along from a pipe
    const stdin = a.cli(['queue', 'delete', '-'], { input: `${id.d3}*\n` });
    assert.match(stdin.stdout, /Deleted: 1 message/);
    assert.equal(where(id.d3), null);
    // (the expired message's DSN may still be leaving the queue)
    await waitFor('queue empty', () => a.cli(['queue', 'list']).stdout === 'Mail queue is empty\n', 10000);
    assertListMatchesDisk();
    assert.equal(remote.got('d1 message') + remote.got('d2 message') + remote.got('d3 message'), 0);
  });

  it('check repairs the spool: modes, stale temporary files, misplaced and corrupt files', async () => {
    const h1 = await submit('z1@dead.test', 'h1 message');
    const h2 = await submit('z2@dead.test', 'h2 message');
    for (const h of [h1, h2]) await waitFor('deferred', () => where(h) === 'deferred', 20000);
    a.cli(['queue', 'hold', h1, h2]);
    const spool = a.spool;
    // h1 misplaced: in a deferred/ hash directory its id does not name (qmgr never finds it there)
    const wrongHash = h1.slice(-1) === '0' ? '1' : '0';
    fs.mkdirSync(path.join(spool, 'deferred', wrongHash), { recursive: true });
    fs.renameSync(path.join(spool, 'hold', h1), path.join(spool, 'deferred', wrongHash, h1));
    fs.chmodSync(path.join(spool, 'hold', h2), 0o600);
    fs.chmodSync(path.join(spool, 'hold'), 0o755);
    const staleId = '0000000001000000000A';
    const freshId = '0000000001000000000B';
    fs.writeFileSync(path.join(spool, 'incoming', `.${staleId}`), 'half written');
    const old = new Date(Date.now() - 2 * 3600 * 1000);
    fs.utimesSync(path.join(spool, 'incoming', `.${staleId}`), old, old);
    fs.writeFileSync(path.join(spool, 'incoming', `.${freshId}`), 'being written');
    const corruptId = '0000000001000000000C';
    fs.writeFileSync(path.join(spool, 'hold', corruptId), 'POSTERN-QUEUE 1\nE 9999\n{"truncated');
    fs.writeFileSync(path.join(spool, 'hold', 'not-a-queue-file'), 'junk');

    const out = a.cli(['queue', 'check']).stdout;
    assert.match(out, /fixed mode of .*hold$/m);
    assert.match(out, new RegExp(`fixed mode of hold/${h2} \\(was 0600\\)`));
    assert.match(out, new RegExp(`removed incoming/\\.${staleId}: a temporary file abandoned`));
    assert.match(out, new RegExp(`moved deferred/${wrongHash}/${h1} to deferred/${h1.slice(-1)}/${h1}`));
    assert.match(out, new RegExp(`moved hold/${corruptId} to corrupt/${corruptId}: corrupt queue file`));
    assert.match(out, /moved hold\/not-a-queue-file to corrupt\/not-a-queue-file: not a queue file name/);
    assert.equal(fs.statSync(path.join(spool, 'hold')).mode & 0o7777, 0o700);
    assert.equal(fs.statSync(path.join(spool, 'hold', h2)).mode & 0o7777, 0o640);
    assert.equal(fs.existsSync(path.join(spool, 'incoming', `.${staleId}`)), false);
    assert.equal(fs.existsSync(path.join(spool, 'incoming', `.${freshId}`)), true);
    assert.equal(where(corruptId), 'corrupt');
    assert.ok(fs.existsSync(path.join(spool, 'corrupt', 'not-a-queue-file')));
    assert.ok(['deferred', 'active'].includes(where(h1)!), `h1 is in ${where(h1)}`);
    // nothing left to repair
    fs.rmSync(path.join(spool, 'incoming', `.${freshId}`));
    assert.match(a.cli(['queue', 'check']).stdout, /spool check: nothing to repair/);
    a.cli(['queue', 'delete', h1, h2]);
  });

  it('log prints Postfix-style lines, filters by queue id, follows new lines', async () => {
    const lines = a.cli(['log', '--queue-id', id.f1]).stdout.split('\n').filter(Boolean);
    assert.ok(lines.length >= 3, lines.join('\n'));
    for (const l of lines) assert.match(l, new RegExp(`^[A-Z][a-z]{2} [ \\d]\\d \\d\\d:\\d\\d:\\d\\d postern/[a-z0-9/]+\\[\\d+\\]: (warning: )?${id.f1}: `));
    assert.ok(lines.some((l) => new RegExp(`postern/qmgr\\[\\d+\\]: ${id.f1}: from=<alice@a\\.test>, size=\\d+, nrcpt=1 \\(queue active\\)$`).test(l)), lines.join('\n'));
    assert.ok(lines.some((l) => /to=<r1@flaky\.test>, relay=mx\.flaky\.test\[127\.0\.0\.7\]\S*, delay=[\d.]+, dsn=4\.\S+, status=deferred \(/.test(l)), lines.join('\n'));
    assert.ok(lines.some((l) => /to=<r1@flaky\.test>, relay=.*status=sent \(/.test(l)), lines.join('\n'));
    assert.ok(lines.some((l) => /scheduled for delivery by the administrator/.test(l)), lines.join('\n'));
    const json = a.cli(['log', '--json', '--queue-id', id.f1]).stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l));
    assert.equal(json.length, lines.length);
    for (const e of json) assert.ok(Object.values(e).includes(id.f1));

    const follower = spawn(process.execPath, [POSTERN, '-c', a.etc, 'log', '--follow', '--lines', '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let seen = '';
    follower.stdout!.on('data', (d) => { seen += d; });
    try {
      // a marker line appended until the follower prints one: then it is following
      const marker = () => fs.appendFileSync(a.logFile, JSON.stringify({ level: 'info', time: new Date().toISOString(), service: 'test', pid: process.pid, msg: 'follow marker' }) + '\n');
      await waitFor('the follower following', () => { if (seen.includes('follow marker')) return true; marker(); return false; }, 20000, 250);
      const qid = await submit(SENDER, 'followed');
      await waitFor('the follower prints the delivery', () => new RegExp(`${qid}: to=<alice@a\\.test>, .*status=sent`).test(seen), 20000);
      assert.doesNotMatch(seen, new RegExp(id.f1)); // --lines 0: no old lines
    } finally {
      follower.kill('SIGTERM');
    }
  });

  it('the services kept running throughout, with the same pids', () => {
    assertServicesUnchanged();
    const s = a.status();
    assert.equal(s.config, a.etc);
    assert.equal(s.queue_directory, a.spool);
    assert.equal(typeof s.master.user, 'string');
    for (const x of s.services) {
      assert.equal(typeof x.pid, 'number');
      assert.equal(typeof x.user, 'string');
      assert.ok(x.service && x.type && x.command);
    }
  });

  it('with the mail system down the commands work on the spool directly', async () => {
    const qid = await submit('q@dead.test', 'offline');
    await waitFor('deferred', () => where(qid) === 'deferred', 20000);
    await a.stop();
    assert.equal(a.status().running, false);
    assert.match(a.cli(['queue', 'hold', qid]).stdout, /Placed on hold: 1 message/);
    assert.equal(where(qid), 'hold');
    assert.match(a.cli(['queue', 'release', qid]).stdout, /Released from hold: 1 message/);
    assert.equal(where(qid), 'deferred');
    const flush = a.tryCli(['queue', 'flush']);
    assert.equal(flush.code, 1);
    assert.match(flush.stderr, /the mail system is down/);
    const deliver = a.tryCli(['queue', 'deliver', qid]);
    assert.equal(deliver.code, 1);
    assert.match(deliver.stderr, /the mail system is down/);
    a.cli(['queue', 'expire', qid]);
    assert.equal(showJson(qid).forced_expire, true);
    a.cli(['queue', 'requeue', qid]);
    assert.equal(where(qid), 'incoming');
    assertListMatchesDisk();
    a.cli(['queue', 'delete', qid]);
    assert.equal(where(qid), null);
    assert.ok(a.logs().some((e) => e.queue_id === qid && e.status === 'deleted'));
    await a.start();
    assert.equal(a.status().running, true);
  });
});

describe('postern abort', () => {
  let a: Instance;
  before(async () => { a = await Instance.create({ domain: 'b.test' }); await a.start(); });
  after(async () => { await a?.destroy(); });

  it('kills master and every service at once; start works afterwards', async () => {
    const s = a.status();
    const pids: number[] = [s.master.pid, ...s.services.map((x: any) => x.pid)];
    assert.ok(pids.length > 3);
    const r = a.cli(['abort']);
    assert.match(r.stdout, new RegExp(`killed master pid ${s.master.pid} and ${s.services.length} service processes`));
    const alive = (p: number) => { try { process.kill(p, 0); return true; } catch { return false; } };
    assert.deepEqual(pids.filter(alive), []);
    assert.equal(a.status().running, false);
    await a.start();
    const again = a.status();
    assert.equal(again.running, true);
    assert.ok(again.services.every((x: any) => x.running));
  });
});
