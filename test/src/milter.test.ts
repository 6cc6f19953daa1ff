/**
 * smtpd's milter client (Sendmail milter protocol 6) against a small milter
 * written here: a loopback TCP server speaking the wire format from the
 * protocol's description (not from Postern's codec), scripted per test. It
 * records every packet it gets; each test sets what it answers.
 */
import { describe, it, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { Instance, RawSmtp, freePort, submitAs, waitFor, headerFields } from './harness.js';

const BOB = 'bob@example.test';
const CAROL = 'carol@example.test';
const DAVE = 'dave@example.test';

interface Got { conn: number; cmd: string; data: Buffer }

/** One packet: 4-byte length (command included), command, payload. */
function packet(cmd: string, ...parts: (Buffer | string)[]): Buffer {
  const body = Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'utf8') : p)));
  const len = Buffer.alloc(4);
  len.writeUInt32BE(body.length + 1);
  return Buffer.concat([len, Buffer.from(cmd, 'latin1'), body]);
}
const z = (s: string) => `${s}\0`;
const be32 = (n: number) => { const b = Buffer.alloc(4); b.writeUInt32BE(n); return b; };
const strings = (b: Buffer) => b.toString('utf8').split('\0').slice(0, -1);

interface Script {
  /** Our answer to option negotiation: actions and protocol flags, and macro lists per stage. */
  actions: number;
  flags: number;
  symlists?: [number, string][];
  /** Packets to send in reply to a command (none: stall); undefined: SMFIR_CONTINUE. */
  answer?: (cmd: string, data: Buffer) => Buffer[] | undefined;
}

const CONTINUE = packet('c');
/** Commands that get no reply: macros, abort, quit. */
const NO_REPLY = new Set(['D', 'A', 'Q', 'K']);

class TestMilter {
  got: Got[] = [];
  script: Script = { actions: 0x1ff, flags: 0 };
  private server!: net.Server;
  private sockets = new Set<net.Socket>();
  private conns = 0;
  port = 0;

  async start(): Promise<void> {
    this.server = net.createServer((sock) => this.serve(sock));
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', () => r()));
    this.port = (this.server.address() as net.AddressInfo).port;
  }

  private serve(sock: net.Socket): void {
    const conn = ++this.conns;
    this.sockets.add(sock);
    sock.on('close', () => this.sockets.delete(sock));
    sock.on('error', () => undefined);
    let buf = Buffer.alloc(0);
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
        const len = buf.readUInt32BE(0);
        const cmd = String.fromCharCode(buf[4]);
        const data = Buffer.from(buf.subarray(5, 4 + len));
        buf = buf.subarray(4 + len);
        this.got.push({ conn, cmd, data });
        const s = this.script;
        if (cmd === 'O') {
          const lists = (s.symlists ?? []).map(([stage, names]) => Buffer.concat([be32(stage), Buffer.from(z(names))]));
          sock.write(packet('O', be32(6), be32(s.actions), be32(s.flags), ...lists));
          continue;
        }
        if (NO_REPLY.has(cmd)) continue;
        const r = s.answer ? s.answer(cmd, data) : undefined;
        for (const p of r ?? [CONTINUE]) sock.write(p);
      }
    });
  }

  /** The macros sent before the given command, as name -> value. */
  macros(cmd: string, conn?: number): Record<string, string> {
    const out: Record<string, string> = {};
    for (const g of this.got) {
      if (g.cmd !== 'D' || String.fromCharCode(g.data[0]) !== cmd || (conn && g.conn !== conn)) continue;
      const s = strings(g.data.subarray(1));
      for (let i = 0; i + 1 < s.length; i += 2) out[s[i]] = s[i + 1];
    }
    return out;
  }

  cmds(conn?: number): string { return this.got.filter((g) => !conn || g.conn === conn).map((g) => g.cmd).join(''); }
  get lastConn(): number { return this.conns; }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

async function send(inst: Instance, rcpts: string[], msg: string, from = 'someone@sender.test'): Promise<{ replies: string[]; id?: string }> {
  const c = await waitFor('smtpd to accept connections', () => RawSmtp.connect(inst.ports.smtp));
  const replies: string[] = [];
  try {
    replies.push(await c.command('EHLO client.example.net'));
    replies.push(await c.command(`MAIL FROM:<${from}>`));
    if (!replies[1].startsWith('250')) return { replies };
    for (const r of rcpts) replies.push(await c.command(`RCPT TO:<${r}>`));
    if (!replies.some((r, i) => i >= 2 && r.startsWith('250'))) return { replies };
    replies.push(await c.command('DATA'));
    const last = await c.command(`${msg.replace(/\r?\n/g, '\r\n').replace(/^\./gm, '..')}\r\n.`);
    replies.push(last);
    await c.command('QUIT');
    return { replies, id: /queued as ([0-9A-F]{20})/.exec(last)?.[1] };
  } finally {
    c.close();
  }
}

function message(subject: string, body = 'Hello Bob,\r\n\r\nsee you on Friday.\r\n'): string {
  return `From: Someone <someone@sender.test>\r\nTo: Bob <${BOB}>\r\nSubject: ${subject}\r\nX-Remove-Me: yes\r\n`
    + `Message-ID: <${Date.now()}.${Math.random().toString(36).slice(2)}@sender.test>\r\n\r\n${body}`;
}

async function deliveredTo(inst: Instance, who: string, id: string): Promise<string> {
  const file = await waitFor(`delivery of ${id} to ${who}`, () => inst.delivered(who).find((f) => new RegExp(` id ${id}\\r?\\n`).test(fs.readFileSync(f, 'latin1'))));
  return fs.readFileSync(file, 'utf8');
}

describe('milters (smtpd_milters)', () => {
  const milter = new TestMilter();
  let inst: Instance;
  let deadPort: number;

  /** Change main.cf and wait until the port 25 and submission smtpds have re-read it. */
  async function reconfigure(settings: Record<string, string>): Promise<void> {
    const names = [`smtpd[127.0.0.1:${inst.ports.smtp}]`, `smtpd[127.0.0.1:${inst.ports.submission}]`];
    const count = () => inst.logs().filter((e) => names.includes(e.service) && e.msg === 'configuration reloaded').length;
    const n = count();
    inst.cli(['config', 'set', ...Object.entries(settings).map(([k, v]) => `${k}=${v}`)]);
    inst.cli(['reload']);
    await waitFor('smtpd to reload its configuration', () => count() >= n + 2);
  }

  before(async () => {
    await milter.start();
    deadPort = await freePort(); // nothing listens there
    inst = await Instance.create({
      users: [{ address: BOB }, { address: CAROL }, { address: DAVE }],
      main: { smtpd_milters: `inet:127.0.0.1:${milter.port}`, milter_default_action: 'tempfail' },
    });
    await inst.start();
  });

  after(async () => {
    await inst?.destroy();
    await milter.close();
  });

  beforeEach(() => {
    milter.got = [];
    milter.script = { actions: 0x1ff, flags: 0 };
  });

  it('negotiates protocol 6 and sends the events in order with Postfix\'s macros', async () => {
    // the milter also asks for {client_addr} at connect (SMFIR_SETSYMLIST in its negotiation reply)
    milter.script = { actions: 0x1ff, flags: 0, symlists: [[0, 'j {daemon_name} {client_addr} _']] };
    const s = await send(inst, [BOB], message('macros'));
    assert.ok(s.id, s.replies.join(' | '));
    await deliveredTo(inst, BOB, s.id!);
    const conn = milter.lastConn;
    await waitFor('QUIT at the end of the session', () => milter.cmds(conn).endsWith('Q'));
    const opt = milter.got.find((g) => g.conn === conn && g.cmd === 'O')!;
    assert.equal(opt.data.readUInt32BE(0), 6, 'protocol version 6');
    assert.equal(opt.data.readUInt32BE(4), 0x1ff, 'every action offered');
    assert.equal(opt.data.readUInt32BE(8) & 0x80000, 0x80000, 'SMFIP_NR_BODY offered');
    // O, connect, HELO, MAIL, RCPT, DATA, header fields, end of header, body, end of message, QUIT (macros between)
    assert.match(milter.cmds(conn).replace(/D/g, ''), /^OCHMRTL+NB+EQ$/);
    const c = milter.macros('C', conn);
    assert.equal(c.j, 'mx.example.test');
    assert.equal(c['{daemon_name}'], 'mx.example.test');
    assert.equal(c['{client_addr}'], '127.0.0.1');
    assert.match(c._, /\[127\.0\.0\.1\]$/);
    const connect = milter.got.find((g) => g.conn === conn && g.cmd === 'C')!;
    assert.equal(String.fromCharCode(connect.data[connect.data.indexOf(0) + 1]), '4', 'an IPv4 client');
    assert.equal(milter.macros('M', conn)['{mail_addr}'], 'someone@sender.test');
    assert.deepEqual(strings(milter.got.find((g) => g.conn === conn && g.cmd === 'M')!.data)[0], '<someone@sender.test>');
    assert.equal(milter.macros('R', conn)['{rcpt_addr}'], BOB);
    for (const stage of ['T', 'N', 'E']) assert.equal(milter.macros(stage, conn).i, s.id, `i at ${stage}`);
    const subject = milter.got.find((g) => g.conn === conn && g.cmd === 'L' && strings(g.data)[0] === 'Subject')!;
    assert.equal(strings(subject.data)[1], 'macros', 'the value without the space after the colon');
  });

  it('an authenticated submission sends {auth_authen}', async () => {
    const id = await submitAs(inst, BOB, 'secret', CAROL, 'authenticated');
    await deliveredTo(inst, CAROL, id);
    const conn = milter.got.find((g) => g.cmd === 'M')!.conn;
    assert.equal(milter.macros('M', conn)['{auth_authen}'], BOB);
    assert.equal(milter.macros('M', conn)['{auth_type}'], 'PLAIN');
  });

  it('header edits, a recipient added and one deleted, and a new sender are in the delivered message', async () => {
    milter.script = {
      actions: 0x1ff, flags: 0,
      answer: (cmd) => (cmd !== 'E' ? undefined : [
        packet('h', z('X-Milter-Added'), z('added at the end')),
        packet('i', be32(0), z('X-Milter-First'), z('inserted on top')),
        packet('m', be32(1), z('Subject'), z('changed by the milter')),
        packet('m', be32(1), z('X-Remove-Me'), z('')),
        packet('+', z(`<${CAROL}>`)),
        packet('-', z(`<${DAVE}>`)),
        packet('e', z('<changed@sender.test>')),
        packet('a'),
      ]),
    };
    const s = await send(inst, [BOB, DAVE], message('to be changed'));
    assert.ok(s.id, s.replies.join(' | '));
    const bob = await deliveredTo(inst, BOB, s.id!);
    const carol = await deliveredTo(inst, CAROL, s.id!);
    const fields = headerFields(bob);
    const names = fields.map((f) => f.name);
    assert.equal(fields.find((f) => f.name === 'subject')?.value, 'changed by the milter');
    assert.ok(!names.includes('x-remove-me'), 'the deleted header is gone');
    assert.equal(fields.find((f) => f.name === 'x-milter-added')?.value, 'added at the end');
    // inserted at the top of the client's header section: after our Received:, before From:
    assert.ok(names.indexOf('x-milter-first') > names.indexOf('received') && names.indexOf('x-milter-first') < names.indexOf('from'), names.join(','));
    assert.ok(names.indexOf('x-milter-added') > names.indexOf('message-id'), names.join(','));
    assert.equal(fields.find((f) => f.name === 'return-path')?.value, '<changed@sender.test>');
    assert.match(carol, /^Subject: changed by the milter\r?$/m);
    await inst.waitForLog('the changes logged', (e) => e.queue_id === s.id && e.msg === 'milter changes applied');
    await waitFor('an empty queue', () => inst.queueEmpty());
    assert.ok(!inst.delivered(DAVE).some((f) => fs.readFileSync(f, 'latin1').includes(s.id!)), 'the deleted recipient got nothing');
  });

  it('a replaced body is delivered instead of the original', async () => {
    const replacement = `${'The milter wrote this body.\r\n'.repeat(5000)}`; // ~140 KB: several chunks
    milter.script = {
      actions: 0x1ff, flags: 0,
      answer: (cmd) => {
        if (cmd !== 'E') return undefined;
        const b = Buffer.from(replacement);
        const out: Buffer[] = [];
        for (let off = 0; off < b.length; off += 60000) out.push(packet('b', b.subarray(off, off + 60000)));
        return [...out, packet('c')];
      },
    };
    const s = await send(inst, [BOB], message('new body', 'the original body, never delivered\r\n'));
    assert.ok(s.id, s.replies.join(' | '));
    const text = await deliveredTo(inst, BOB, s.id!);
    const end = /\r?\n\r?\n/.exec(text)!;
    // Maildir keeps LF line endings
    assert.equal(text.slice(end.index + end[0].length).replace(/\r\n/g, '\n'), replacement.replace(/\r\n/g, '\n'));
    assert.match(text, /^Subject: new body\r?$/m, 'the header section is kept');
  });

  it('SMFIR_QUARANTINE puts the queue file in hold/ with the milter\'s reason logged', async () => {
    milter.script = { actions: 0x1ff, flags: 0, answer: (cmd) => (cmd === 'E' ? [packet('q', z('looks odd')), packet('c')] : undefined) };
    const s = await send(inst, [BOB], message('quarantined'));
    assert.ok(s.id, s.replies.join(' | '));
    assert.ok(inst.queued('hold').some((f) => f.endsWith(s.id!)), `${s.id} in hold/`);
    await inst.waitForLog('the hold', (e) => e.queue_id === s.id && e.status === 'hold' && e.reason === 'looks odd');
    assert.ok(!inst.delivered(BOB).some((f) => fs.readFileSync(f, 'latin1').includes(s.id!)), 'not delivered');
    inst.cli(['queue', 'delete', s.id!]);
  });

  it('reject, tempfail and discard with the milter\'s own reply codes', async () => {
    milter.script = {
      actions: 0x1ff, flags: 0,
      answer: (cmd, data) => (cmd === 'R' && strings(data)[0] === `<${DAVE}>` ? [packet('y', z('550 5.7.0 Dave is not taking mail from you'))]
        : cmd === 'E' ? [packet('y', z('451 4.7.0 Come back later, says the milter'))] : undefined),
    };
    const s = await send(inst, [DAVE, BOB], message('refused'));
    assert.equal(s.replies[2], '550 5.7.0 Dave is not taking mail from you');
    assert.ok(s.replies[3].startsWith('250'), s.replies[3]);
    assert.equal(s.replies.at(-1), '451 4.7.0 Come back later, says the milter');
    await inst.waitForLog('the rejection', (e) => e.milter && /^milter-reject: RCPT .*550 5\.7\.0 Dave/.test(e.msg));

    milter.script = { actions: 0x1ff, flags: 0, answer: (cmd) => (cmd === 'E' ? [packet('r')] : undefined) };
    const r = await send(inst, [BOB], message('rejected'));
    assert.equal(r.replies.at(-1), '550 5.7.1 Command rejected');

    milter.script = { actions: 0x1ff, flags: 0, answer: (cmd) => (cmd === 'M' ? [packet('t')] : undefined) };
    const t = await send(inst, [BOB], message('tempfailed'));
    assert.equal(t.replies[1], '451 4.7.1 Service unavailable - try again later');

    milter.script = { actions: 0x1ff, flags: 0, answer: (cmd) => (cmd === 'E' ? [packet('d')] : undefined) };
    const d = await send(inst, [BOB], message('discarded'));
    assert.match(d.replies.at(-1)!, /^250 2\.0\.0 /, 'a discard looks accepted');
    await inst.waitForLog('the discard', (e) => e.status === 'discard' && e.milter && /^milter-discard/.test(e.msg));
    await waitFor('an empty queue', () => inst.queueEmpty());
    assert.ok(!inst.delivered(BOB).some((f) => /Subject: (discarded|rejected|refused|tempfailed)/.test(fs.readFileSync(f, 'latin1'))), 'none delivered');
  });

  it('a large body reaches the milter in chunks of at most 65535 bytes, while it is still arriving', async () => {
    const lines = 'All work and no play makes Jack a dull boy.\r\n';
    const first = lines.repeat(4000); // ~180 KB
    const c = await RawSmtp.connect(inst.ports.smtp);
    try {
      assert.match(await c.command('EHLO client.example.net'), /^250/);
      assert.match(await c.command('MAIL FROM:<someone@sender.test>'), /^250/);
      assert.match(await c.command(`RCPT TO:<${BOB}>`), /^250/);
      assert.match(await c.command('DATA'), /^354/);
      await c.send(message('big', first));
      // the milter has body chunks before the client has sent the end of the message
      await waitFor('body chunks at the milter before the end of DATA', () => milter.got.some((g) => g.cmd === 'B'));
      assert.ok(!milter.got.some((g) => g.cmd === 'E'));
      const reply = await c.command(`${lines.repeat(100)}.`);
      assert.match(reply, /^250 .*queued as/);
    } finally {
      c.close();
    }
    const chunks = milter.got.filter((g) => g.cmd === 'B');
    assert.ok(chunks.length > 1, `${chunks.length} chunks`);
    assert.ok(chunks.every((g) => g.data.length <= 65535 && g.data.length > 0));
    assert.equal(Buffer.concat(chunks.map((g) => g.data)).toString(), first + lines.repeat(100));
  });

  it('honours SMFIP_NR_HDR and SMFIP_NR_BODY (no replies awaited) and SMFIR_SKIP (no more body)', async () => {
    const NR_HDR = 0x80, NR_BODY = 0x80000, SKIP = 0x400;
    milter.script = { actions: 0x1ff, flags: NR_HDR | NR_BODY, answer: (cmd) => (cmd === 'L' || cmd === 'B' ? [] : undefined) };
    const quiet = await send(inst, [BOB], message('no replies'));
    assert.ok(quiet.id, quiet.replies.join(' | '));
    await deliveredTo(inst, BOB, quiet.id!);

    milter.got = [];
    milter.script = { actions: 0x1ff, flags: SKIP, answer: (cmd) => (cmd === 'B' ? [packet('s')] : undefined) };
    const skipped = await send(inst, [BOB], message('skipped', 'x'.repeat(70) + '\r\n'.repeat(1) + 'All work and no play.\r\n'.repeat(8000)));
    assert.ok(skipped.id, skipped.replies.join(' | '));
    assert.equal(milter.got.filter((g) => g.cmd === 'B').length, 1, 'one chunk, then SKIP');
    assert.ok(milter.got.some((g) => g.cmd === 'E'), 'still the end of message');
    await deliveredTo(inst, BOB, skipped.id!);
  });

  it('a packet longer than the limit is a protocol error: the default action, logged', async () => {
    const huge = Buffer.alloc(5);
    huge.writeUInt32BE(64 * 1024 * 1024);
    huge.write('c', 4);
    milter.script = { actions: 0x1ff, flags: 0, answer: (cmd) => (cmd === 'M' ? [huge] : undefined) };
    const s = await send(inst, [BOB], message('oversized'));
    assert.equal(s.replies[1], '451 4.7.1 Service unavailable - try again later');
    await inst.waitForLog('the protocol error', (e) => e.milter && e.stage === 'mail' && /packet length 67108864 out of range/.test(e.err));
  });

  it('a milter that is down: milter_default_action accept, tempfail, reject', async () => {
    await reconfigure({ smtpd_milters: `inet:127.0.0.1:${deadPort}`, milter_default_action: 'tempfail' });
    const t = await send(inst, [BOB], message('down, tempfail'));
    assert.equal(t.replies[1], '451 4.7.1 Service unavailable - try again later');
    await inst.waitForLog('the failure', (e) => e.milter === `inet:127.0.0.1:${deadPort}` && e.action === 'tempfail' && /connect/.test(e.err));

    await reconfigure({ milter_default_action: 'reject' });
    const r = await send(inst, [BOB], message('down, reject'));
    assert.equal(r.replies[1], '550 5.7.1 Command rejected');

    await reconfigure({ milter_default_action: 'accept' });
    const a = await send(inst, [BOB], message('down, accept'));
    assert.ok(a.id, a.replies.join(' | '));
    await deliveredTo(inst, BOB, a.id!);
  });

  it('a bad smtpd_milters value is an error naming main.cf, its line and the problem', async () => {
    const mainCf = `${inst.etc}/main.cf`;
    const before = fs.readFileSync(mainCf, 'utf8');
    try {
      const line = before.split('\n').length - (before.endsWith('\n') ? 1 : 0) + 1;
      fs.appendFileSync(mainCf, `${before.endsWith('\n') ? '' : '\n'}smtpd_milters = tcp:127.0.0.1:1, { inet:127.0.0.1:2, default_action=maybe }\n`);
      const r = inst.tryCli(['check']);
      assert.equal(r.code, 1);
      assert.match(r.stderr, new RegExp(`main\\.cf:${line}: error: smtpd_milters: tcp:127\\.0\\.0\\.1:1: expected unix:/path or inet:host:port`));
    } finally {
      fs.writeFileSync(mainCf, before);
    }
    const bad = inst.tryCli(['config', 'set', 'smtpd_milters={ inet:127.0.0.1:2, default_action=maybe }']);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /smtpd_milters: default_action=maybe: not one of accept, tempfail, reject, quarantine/);
  });

  it('a milter that stalls: its timeout, then its own default_action', async () => {
    // no reply to the end of message; this milter's own settings in braces
    await reconfigure({ smtpd_milters: `{ inet:127.0.0.1:${milter.port}, content_timeout=1s, default_action=reject }`, milter_default_action: 'accept' });
    milter.script = { actions: 0x1ff, flags: 0, answer: (cmd) => (cmd === 'E' ? [] : undefined) };
    const s = await send(inst, [BOB], message('stalled'));
    assert.equal(s.replies.at(-1), '550 5.7.1 Command rejected');
    await inst.waitForLog('the timeout', (e) => e.milter && e.stage === 'eom' && /no reply within 1000 ms/.test(e.err) && e.action === 'reject');
    await waitFor('an empty queue', () => inst.queueEmpty());
  });
});
