/**
 * Durability and supervision: a stream of mail keeps flowing while services,
 * and then the master itself, are killed; every message that got a 250 must
 * be delivered (at most twice: the one delivery in flight at a kill), and the
 * queue must drain. Also SIGTERM's graceful stop, restart backoff and the pid
 * file. Runs on a sandbox instance (no root needed).
 */
import { test, TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { Instance, POSTERN, RawSmtp, ROOT, RunResult, run, runAsync, waitFor } from './harness.js';

const RCPT = 'stream@example.test';
const MASTER_PROGRAM = path.join(ROOT, 'packages', 'master', 'dist', 'main.js');

// ---------------------------------------------------------------------------
// One SMTP session per message, with every way it can end told apart.

type OutcomeKind =
  | 'accepted' // 250 to the final dot
  | 'rejected' // an SMTP error reply at some stage (421, 451, ...)
  | 'refused' // the TCP connect failed
  | 'closed' // the server closed the connection without a reply
  | 'timeout'; // no reply within the step's time limit

interface Outcome { token: string; kind: OutcomeKind; stage: string; reply?: string; began?: number; ended?: number }

class SmtpSession {
  private buf = '';
  private closed = false;
  private wake: (() => void) | null = null;
  constructor(private sock: net.Socket) {
    sock.on('data', (d) => { this.buf += d.toString('latin1'); this.wake?.(); });
    sock.on('close', () => { this.closed = true; this.wake?.(); });
    sock.on('error', () => undefined);
  }

  /** The next complete reply, or null if the connection closed or the time ran out first. */
  async reply(timeoutMs: number): Promise<string | null | 'timeout'> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = /^(?:\d{3}-[^\n]*\n)*\d{3}(?: [^\n]*)?\r?\n/.exec(this.buf);
      if (m) { this.buf = this.buf.slice(m[0].length); return m[0].trimEnd(); }
      if (this.closed) return null;
      const left = deadline - Date.now();
      if (left <= 0) return 'timeout';
      await new Promise<void>((r) => { const t = setTimeout(r, left); this.wake = () => { clearTimeout(t); r(); }; });
      this.wake = null;
    }
  }

  write(s: string): void { if (!this.closed) this.sock.write(s); }
  destroy(): void { this.sock.destroy(); }
}

function messageFor(token: string): string {
  return [
    'From: Stream Sender <sender@example.org>',
    `To: <${RCPT}>`,
    `Subject: durability ${token}`,
    `Message-ID: <${token}@example.org>`,
    `Date: ${new Date().toUTCString()}`,
    '',
    `This is message ${token}.`,
    'It must arrive once (or, if it was in flight at a kill, at most twice).',
    '',
  ].join('\r\n');
}

/** dotDelayMs holds the session inside DATA (body sent, final dot not yet) for that long. */
async function sendOne(port: number, token: string, o: { stepTimeoutMs?: number; dotDelayMs?: number } = {}): Promise<Outcome> {
  const stepTimeoutMs = o.stepTimeoutMs ?? 20000;
  const sock = net.createConnection({ host: '127.0.0.1', port });
  try {
    await new Promise<void>((resolve, reject) => { sock.once('connect', resolve); sock.once('error', reject); });
  } catch (e) {
    return { token, kind: 'refused', stage: 'connect', reply: (e as Error).message };
  }
  const s = new SmtpSession(sock);
  const steps: [string, string | null, RegExp][] = [
    ['greeting', null, /^220/],
    ['ehlo', 'EHLO client.example.org\r\n', /^250/],
    ['mail', 'MAIL FROM:<sender@example.org>\r\n', /^250/],
    ['rcpt', `RCPT TO:<${RCPT}>\r\n`, /^250/],
    ['data', 'DATA\r\n', /^354/],
    ['dot', '.\r\n', /^250/],
  ];
  try {
    for (const [stage, line, want] of steps) {
      if (stage === 'dot') {
        s.write(messageFor(token));
        if (o.dotDelayMs) await new Promise((r) => setTimeout(r, o.dotDelayMs));
      }
      if (line) s.write(line);
      const r = await s.reply(stepTimeoutMs);
      if (r === null) return { token, kind: 'closed', stage };
      if (r === 'timeout') return { token, kind: 'timeout', stage };
      if (!want.test(r)) return { token, kind: 'rejected', stage, reply: r };
      if (stage === 'dot') {
        s.write('QUIT\r\n');
        return { token, kind: 'accepted', stage, reply: r };
      }
    }
    throw new Error('not reached');
  } finally {
    setTimeout(() => s.destroy(), 200).unref();
  }
}

/**
 * Senders running side by side until told to stop (or out of count or time),
 * each message with a unique token in its Subject and Message-ID.
 */
class Stream {
  readonly outcomes: Outcome[] = [];
  private stopped = false;
  private seq = 0;
  private done: Promise<void>;

  constructor(private port: number, private tag: string, o: { senders: number; maxMessages: number; maxMs: number; pauseMs: number; dotDelayMs?: number }) {
    const deadline = Date.now() + o.maxMs;
    const loop = async (n: number) => {
      while (!this.stopped && this.seq < o.maxMessages && Date.now() < deadline) {
        const token = `${this.tag}-${String(++this.seq).padStart(4, '0')}-s${n}`;
        const began = Date.now();
        const outcome = await sendOne(this.port, token, { dotDelayMs: o.dotDelayMs });
        this.outcomes.push({ ...outcome, began, ended: Date.now() });
        // a server that is down is retried gently, as a real client would
        await new Promise((r) => setTimeout(r, outcome.kind === 'accepted' ? o.pauseMs : Math.max(o.pauseMs, 250)));
      }
    };
    this.done = Promise.all(Array.from({ length: o.senders }, (_, i) => loop(i))).then(() => undefined);
  }

  accepted(): Set<string> { return new Set(this.outcomes.filter((o) => o.kind === 'accepted').map((o) => o.token)); }
  acceptedCount(): number { return this.outcomes.filter((o) => o.kind === 'accepted').length; }

  async stop(): Promise<void> { this.stopped = true; await this.done; }
  async finished(): Promise<void> { await this.done; }

  summary(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const o of this.outcomes) {
      const k = o.kind === 'accepted' ? 'accepted' : `${o.kind}@${o.stage}${o.reply && o.kind === 'rejected' ? `:${o.reply.slice(0, 3)}` : ''}`;
      out[k] = (out[k] ?? 0) + 1;
    }
    return out;
  }
}

/** Tokens found in the user's Maildir (new/ and cur/), with how many copies of each. */
function deliveredTokens(inst: Instance, tag: string): Map<string, number> {
  const counts = new Map<string, number>();
  const re = new RegExp(`^Subject: durability (${tag}-\\S+)\\r?$`, 'm');
  for (const sub of ['new', 'cur']) {
    const dir = path.join(inst.maildir(RCPT), sub);
    if (!fs.existsSync(dir)) continue;
    for (const f of fs.readdirSync(dir)) {
      const m = re.exec(fs.readFileSync(path.join(dir, f), 'latin1'));
      if (m) counts.set(m[1], (counts.get(m[1]) ?? 0) + 1);
    }
  }
  return counts;
}

// ---------------------------------------------------------------------------
// Processes

interface ServiceStatus { service: string; type: string; command: string; pid: number | null; running: boolean }

/**
 * `postern -c ETC ARGS` without blocking this process: the senders must keep
 * sending while the test stops, starts and inspects the instance.
 */
function posternAsync(inst: Instance, args: string[], timeoutMs = 120000): Promise<RunResult> {
  return runAsync(process.execPath, [POSTERN, '-c', inst.etc, ...args], '', timeoutMs);
}

async function startAsync(inst: Instance): Promise<void> {
  const r = await posternAsync(inst, ['start']);
  assert.equal(r.code, 0, `postern start: ${r.stderr}${r.stdout}`);
}

async function services(inst: Instance): Promise<ServiceStatus[]> {
  const r = await posternAsync(inst, ['status', '--json']);
  return JSON.parse(r.stdout || '{}').services ?? [];
}

async function pidOf(inst: Instance, command: string): Promise<number> {
  const all = await services(inst);
  const s = all.find((x) => x.command === command && x.running && x.pid);
  assert.ok(s, `${command} is running (status: ${JSON.stringify(all)})`);
  return s.pid!;
}

function alive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch { return false; }
}

/** A kill or stop, from the signal until the service was seen back (or the stop had ended). */
interface Outage { what: string; from: number; to: number }

/** kill -9 one service and wait until master has started a new one. */
async function killService(t: TestContext, inst: Instance, command: string): Promise<Outage> {
  const old = await pidOf(inst, command);
  const from = Date.now();
  process.kill(old, 'SIGKILL');
  const fresh = await waitFor(`master to restart ${command} (old pid ${old})`, async () => {
    const s = (await services(inst)).find((x) => x.command === command && x.running && x.pid && x.pid !== old);
    return s?.pid;
  }, 30000);
  t.diagnostic(`killed ${command} pid ${old}; restarted as pid ${fresh}`);
  return { what: `kill -9 ${command}`, from, to: Date.now() };
}

/**
 * One delivery to the mailbox at a time: then a kill catches at most one delivery
 * in flight, and "at most one duplicate per kill" is the exact promise to check.
 */
function makeInstance(): Promise<Instance> {
  return Instance.create({ users: [{ address: RCPT }], main: { local_destination_concurrency_limit: '1' } });
}

/** Every queue entry delivered; cleanup's temporary files are accounted for by clearAbandoned(). */
async function waitForDrain(inst: Instance): Promise<void> {
  const entries = () => ['incoming', 'active', 'deferred'].flatMap((q) => inst.queued(q)).filter((f) => !path.basename(f).startsWith('.'));
  await waitFor('the queue to drain (incoming/, active/, deferred/)', () => entries().length === 0, 60000, 250);
}

/** Temporary files of messages that a killed cleanup never finished (not queue entries, but litter). */
function abandonedTempFiles(inst: Instance): string[] {
  return inst.queued('incoming').filter((f) => path.basename(f).startsWith('.'));
}

/** The durability token in a queue or temporary file, if the file got as far as its Subject. */
function tokenIn(file: string): string | null {
  try { return /^Subject: durability (\S+)\r?$/m.exec(fs.readFileSync(file, 'latin1'))?.[1] ?? null; } catch { return null; }
}

/**
 * Temporary files a killed cleanup left in incoming/: each must belong to a
 * message that got no 250 (the 250 comes only after the rename into place), and
 * qmgr's clean-up must remove it once it is an hour old: the test ages the files
 * and restarts qmgr, which sweeps at start. Afterwards incoming/ holds none.
 */
async function clearAbandoned(t: TestContext, inst: Instance, accepted: Set<string>): Promise<void> {
  const litter = abandonedTempFiles(inst);
  t.diagnostic(`abandoned cleanup temp files in incoming/: ${litter.map((f) => `${path.basename(f)} (${tokenIn(f) ?? 'no subject yet'})`).join(' ') || 'none'}`);
  for (const f of litter) {
    const token = tokenIn(f);
    assert.ok(token === null || !accepted.has(token), `${path.basename(f)} is a temporary file of ${token}, which got a 250`);
  }
  if (litter.length) {
    const hoursAgo = new Date(Date.now() - 2 * 3600 * 1000);
    for (const f of litter) fs.utimesSync(f, hoursAgo, hoursAgo);
    const mark = inst.logs().length;
    await killService(t, inst, 'qmgr');
    for (const f of litter) {
      const id = path.basename(f).slice(1);
      const line = await waitFor(`qmgr's clean-up to remove ${path.basename(f)}`, () => inst.logs().slice(mark)
        .find((e) => e.msg === 'removed abandoned temporary queue file' && path.basename(String(e.file)) === path.basename(f)), 30000);
      assert.equal(line.queue_id, id, `the clean-up log line names the queue id: ${JSON.stringify(line)}`);
      assert.ok(!fs.existsSync(f), `${path.basename(f)} removed`);
    }
  }
  assert.deepEqual(abandonedTempFiles(inst), [], 'no temporary file remains in incoming/');
}

/**
 * A message delivered without a 250 is allowed only where the promise allows it:
 * the client had sent the whole message (its session ended at the final dot, with
 * a 4xx, a close or no reply, never a 5xx), and that session overlapped an outage
 * that can lose the reply of a durable message (cleanup or master killed, or the stop).
 */
function checkUnacknowledged(stream: Stream, tokens: string[], outages: Outage[]): void {
  for (const token of tokens) {
    const o = stream.outcomes.find((x) => x.token === token);
    assert.ok(o, `${token} was delivered but never sent`);
    const what = `${token}, delivered without a 250: ${JSON.stringify(o)}`;
    assert.equal(o.stage, 'dot', `${what}: the whole message had been sent`);
    assert.ok(o.kind !== 'rejected' || /^4\d\d/.test(o.reply ?? ''), `${what}: the client was told to retry, not refused`);
    const during = outages.find((w) => o.began! <= w.to && o.ended! >= w.from);
    assert.ok(during, `${what}: its session overlapped none of ${JSON.stringify(outages)}`);
  }
}

async function checkDelivery(t: TestContext, inst: Instance, stream: Stream, tag: string, maxDuplicates: number, outages: Outage[]): Promise<void> {
  const accepted = stream.accepted();
  const delivered = deliveredTokens(inst, tag);
  const missing = [...accepted].filter((tok) => !delivered.has(tok));
  const duplicated = [...delivered].filter(([, n]) => n > 1);
  const unacknowledged = [...delivered.keys()].filter((tok) => !accepted.has(tok));
  t.diagnostic(`sent ${stream.outcomes.length}, got 250: ${accepted.size}, delivered: ${delivered.size} distinct ` +
    `(${[...delivered.values()].reduce((a, b) => a + b, 0)} files), duplicates: ${duplicated.length}, ` +
    `delivered without a 250: ${unacknowledged.length}`);
  t.diagnostic(`outcomes: ${JSON.stringify(stream.summary())}`);
  // cleanup killed after its queue file was durable but before its reply reached smtpd gives a
  // 451 for a message that is then delivered (the client's retry makes the classic SMTP
  // duplicate; Postfix has the same window): allowed only in that window
  for (const tok of unacknowledged) t.diagnostic(`delivered without a 250: ${JSON.stringify(stream.outcomes.find((o) => o.token === tok))}`);
  checkUnacknowledged(stream, unacknowledged, outages);
  assert.deepEqual(missing, [], 'every message that got a 250 is in the Maildir');
  assert.deepEqual(duplicated.filter(([, n]) => n > 2), [], 'no message is delivered more than twice');
  assert.ok(duplicated.length <= maxDuplicates, `at most ${maxDuplicates} messages delivered twice, got ${duplicated.length}: ${duplicated.map(([k]) => k).join(' ')}`);
  await clearAbandoned(t, inst, accepted);
  assert.ok(inst.queueEmpty(), 'nothing left in incoming/, active/ or deferred/, temporary files included');
}

// ---------------------------------------------------------------------------

test('kill -9 of qmgr, local, cleanup and then master during a stream: every 250 is delivered, at most twice, queue empty', async (t) => {
  const inst = await makeInstance();
  t.after(() => inst.destroy());
  await inst.start();

  const stream = new Stream(inst.ports.smtp, 'kill', { senders: 3, maxMessages: 600, maxMs: 150000, pauseMs: 40 });
  // the kills that can lose the reply to a message already durable
  const outages: Outage[] = [];
  try {
    const waitForAccepted = (n: number, what: string) =>
      waitFor(`${n} messages accepted ${what}`, () => stream.acceptedCount() >= n, 30000, 50);
    await waitForAccepted(15, 'before the first kill');
    for (const command of ['qmgr', 'local', 'cleanup']) {
      const outage = await killService(t, inst, command);
      if (command === 'cleanup') outages.push(outage);
      const now = stream.acceptedCount();
      await waitForAccepted(now + 10, `after restarting ${command}`);
    }

    // the master: its children lose the IPC channel and exit; then a fresh start
    const master = inst.masterPid();
    assert.ok(master && alive(master), 'master is running');
    const children = (await services(inst)).map((s) => s.pid).filter((p): p is number => !!p);
    const killedAt = Date.now();
    process.kill(master, 'SIGKILL');
    await waitFor('the killed master\'s children to exit', () => [master, ...children].every((p) => !alive(p)), 30000);
    t.diagnostic(`killed master pid ${master}; its ${children.length} children exited within ${Date.now() - killedAt} ms`);
    await startAsync(inst);
    outages.push({ what: 'kill -9 master', from: killedAt, to: Date.now() });
    const restarted = inst.masterPid();
    assert.ok(restarted && restarted !== master && alive(restarted), 'a new master runs');

    const now = stream.acceptedCount();
    await waitForAccepted(now + 20, 'after restarting the master');
  } finally {
    await stream.stop();
  }

  await waitForDrain(inst);
  await checkDelivery(t, inst, stream, 'kill', 4, outages); // one duplicate per kill: qmgr, local, cleanup, master
  assert.ok(stream.acceptedCount() >= 60, 'the stream kept flowing around the kills');
});

test('cleanup killed while a big message streams in: no 250, its incoming/.ID stays, and qmgr\'s clean-up removes it once an hour old', async (t) => {
  const inst = await makeInstance();
  t.after(() => inst.destroy());
  await inst.start();
  const token = 'litter-0001';
  let temp: string;
  const c = await RawSmtp.connect(inst.ports.smtp);
  try {
    assert.match(c.greeting, /^220 /);
    for (const [line, want] of [['EHLO client.example.org', /^250[ -]/], ['MAIL FROM:<sender@example.org>', /^250 /],
      [`RCPT TO:<${RCPT}>`, /^250 /], ['DATA', /^354 /]] as const) assert.match(await c.command(line), want, line);
    // more than cleanup holds in memory (256 KiB), so it streams to incoming/.ID as the bytes arrive
    await c.send(messageFor(token) + `${'x'.repeat(998)}\r\n`.repeat(400));
    temp = await waitFor('cleanup to stream the message into incoming/.ID', () => abandonedTempFiles(inst).find((f) => tokenIn(f) === token), 30000);
    await killService(t, inst, 'cleanup');
    await c.send('.\r\n');
    const reply = await c.reply(30000);
    assert.ok(reply === '' || /^4\d\d /.test(reply), `the client is told to retry (or the connection closes), never 250: ${JSON.stringify(reply)}`);
  } finally {
    c.close();
  }
  assert.ok(fs.existsSync(temp), `the killed cleanup left ${temp}`);
  await clearAbandoned(t, inst, new Set());
  assert.ok(inst.queueEmpty(), 'nothing left in incoming/, active/ or deferred/, temporary files included');
  assert.equal(deliveredTokens(inst, 'litter').size, 0, 'the unacknowledged message was not delivered');
});

test('SIGTERM (postern stop) while mail flows: each session ends in 250 or a 4xx reply, and everything acknowledged is delivered', async (t) => {
  const inst = await makeInstance();
  t.after(() => inst.destroy());
  await inst.start();

  const stream = new Stream(inst.ports.smtp, 'term', { senders: 4, maxMessages: 400, maxMs: 120000, pauseMs: 20, dotDelayMs: 300 });
  let stopped = false;
  let stopAt = 0;
  let stopEnd = 0;
  try {
    await waitFor('20 messages accepted before the stop', () => stream.acceptedCount() >= 20, 30000, 50);
    const master = inst.masterPid()!;
    stopAt = Date.now();
    const r = await posternAsync(inst, ['stop']);
    stopEnd = Date.now();
    assert.equal(r.code, 0, `postern stop: ${r.stderr}${r.stdout}`);
    assert.ok(!alive(master), 'master has exited');
    stopped = true;
    // sessions begun during the stop run to their end against a stopped server
    await new Promise((r) => setTimeout(r, 500));
  } finally {
    await stream.stop();
  }
  assert.ok(stopped);

  // A session that got its greeting must end with a reply: a 250 or a temporary error
  // (421 shutting down, 451 cleanup gone), never a silent close or a hang.
  const greeted = stream.outcomes.filter((o) => !(o.kind === 'refused' || ((o.kind === 'closed' || o.kind === 'timeout') && o.stage === 'greeting')));
  const bad = greeted.filter((o) => !(o.kind === 'accepted' || (o.kind === 'rejected' && /^4\d\d/.test(o.reply ?? ''))));
  t.diagnostic(`outcomes across the stop: ${JSON.stringify(stream.summary())}`);
  const inFlight = stream.outcomes.filter((o) => o.began! < stopAt && o.ended! > stopAt);
  t.diagnostic(`sessions in progress when the stop began: ${inFlight.length} (${inFlight.map((o) => o.kind === 'accepted' ? '250' : `${o.kind}@${o.stage}`).join(', ')})`);
  assert.deepEqual(bad, [], 'sessions that were served end with 250 or a 4xx reply');

  await inst.start();
  await waitForDrain(inst);
  await checkDelivery(t, inst, stream, 'term', 0, [{ what: 'postern stop', from: stopAt, to: stopEnd }]);
});

test('a service killed again and again is restarted with growing backoff, never in a tight loop', async (t) => {
  const inst = await makeInstance();
  t.after(() => inst.destroy());
  await inst.start();
  const master = inst.masterPid();

  // lmtp is the smtp program in LMTP mode: after the kills, a delivery shows it is really back
  const pids: number[] = [];
  for (let i = 0; i < 4; i++) {
    const old = await pidOf(inst, 'lmtp');
    pids.push(old);
    process.kill(old, 'SIGKILL');
    await waitFor(`lmtp restarted after kill ${i + 1}`, async () => {
      const s = (await services(inst)).find((x) => x.command === 'lmtp' && x.running && x.pid && x.pid !== old);
      return s?.pid;
    }, 60000);
  }
  const restarts = inst.logs().filter((e) => e.pid === master && e.command === 'lmtp' && typeof e.restart_in_ms === 'number');
  const delays = restarts.map((e) => e.restart_in_ms as number);
  t.diagnostic(`killed lmtp pids ${pids.join(' ')}; master's restart_in_ms: ${delays.join(' ')}`);
  assert.equal(restarts.length, 4, 'master logs one restart per kill');
  for (const e of restarts) assert.equal(e.signal, 'SIGKILL', 'the log names the signal that ended the service');
  for (let i = 1; i < delays.length; i++) assert.ok(delays[i] > delays[i - 1], `restart delays grow: ${delays.join(', ')}`);
  assert.ok(delays[0] > 0, 'even the first restart waits');

  const now = await pidOf(inst, 'lmtp');
  assert.ok(!pids.includes(now), 'lmtp runs again under a new pid');
  const r = await sendOne(inst.ports.smtp, 'backoff-0001');
  assert.equal(r.kind, 'accepted', `message accepted: ${JSON.stringify(r)}`);
  await waitFor('the message to be delivered through the restarted lmtp', () => deliveredTokens(inst, 'backoff').get('backoff-0001'), 30000);
});

test('a second start on a running instance fails with "already running"; the pid file keeps a second master out', async (t) => {
  const inst = await makeInstance();
  t.after(() => inst.destroy());
  await inst.start();
  const master = inst.masterPid()!;
  const before = (await services(inst)).map((s) => s.pid).sort();

  const again = inst.tryCli(['start']);
  assert.equal(again.code, 1, `second postern start exits 1 (stdout: ${again.stdout})`);
  assert.match(again.stderr, /already running/);

  // the master program itself, past the CLI's check: the pid file must stop it
  const direct = run(process.execPath, [MASTER_PROGRAM, inst.etc], { timeout: 30000 });
  assert.equal(direct.code, 1, `a second master exits 1 (stderr: ${direct.stderr})`);
  assert.match(direct.stderr, /already running/);

  assert.equal(inst.masterPid(), master, 'the pid file still names the first master');
  assert.ok(alive(master), 'the first master still runs');
  const after = await services(inst);
  assert.deepEqual(after.map((s) => s.pid).sort(), before, 'its services were not disturbed');
  assert.ok(after.every((s) => s.running), 'every service still runs');
  for (const s of after) {
    if (s.type !== 'unix') continue;
    const dir = s.command === 'showq' ? 'public' : 'private'; // showq answers every local user
    assert.ok(fs.existsSync(path.join(inst.spool, dir, s.service)), `socket ${dir}/${s.service} is still there`);
  }

  const r = await sendOne(inst.ports.smtp, 'pidfile-0001');
  assert.equal(r.kind, 'accepted', `mail still flows: ${JSON.stringify(r)}`);
  await waitFor('the message to be delivered', () => deliveredTokens(inst, 'pidfile').get('pidfile-0001'), 30000);
});
