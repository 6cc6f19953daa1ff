// The common server skeleton every framed socket server uses (common/src/ipc/server.ts):
// a request refused by its schema, connections in hand when the server stops, frame limits.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { EventEmitter } from 'node:events';
import * as path from 'node:path';
import {
  serveFrames, serveRequests, FrameServer, FrameReader, FrameWriter, connectUnix, validate, Schema, Logger,
  submitMessage, CleanupSubmission, CleanupUnreachable, RequestConnection, IdlePool,
} from '../../packages/common/dist/index.js';
import { tempDir, waitFor } from './harness.js';

/** A log sink that keeps what it was given. */
function captureLog() {
  const lines: { level: string; fields: any; msg: string }[] = [];
  const at = (level: string) => (fields: any, msg: string) => { lines.push({ level, fields, msg }); };
  return { lines, log: { warn: at('warn'), info: at('info'), error: at('error') } as unknown as Logger };
}

async function listening(server: FrameServer, name: string) {
  const dir = tempDir('ipc');
  const socketPath = path.join(dir, name);
  server.listen({ path: socketPath });
  // the bind is done inside listen(); a connect may still race the listen queue on a slow machine
  for (let i = 0; i < 50 && !fs.existsSync(socketPath); i++) await new Promise((r) => setTimeout(r, 20));
  return { socketPath, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

async function client(socketPath: string) {
  const s = await connectUnix(socketPath, 2000);
  s.on('error', () => undefined);
  s.setTimeout(10000, () => s.destroy(new Error('test client: no answer within 10 s')));
  return { socket: s, reader: new FrameReader(s), writer: new FrameWriter(s) };
}

const closed = (s: net.Socket) => new Promise<void>((r) => (s.destroyed ? r() : s.once('close', () => r())));

const greeting = { type: 'object', fields: { type: { type: 'string', max: 8, values: ['hello'] }, name: { type: 'string', max: 16 } } } as const satisfies Schema;

test('serveRequests: a request its schema refuses is answered "invalid request: PATH: PROBLEM" and logged; the connection goes on', async () => {
  const { lines, log } = captureLog();
  const answered: unknown[] = [];
  const server = serveRequests({
    many: true, log, logFields: { socket: 'test' },
    check: (raw) => validate(greeting, raw),
    answer: (req) => { answered.push(req); return { ok: true, hello: req.name }; },
    failure: (error: string): Record<string, unknown> => ({ ok: false, error }),
  });
  const { socketPath, cleanup } = await listening(server, 'greet');
  try {
    const c = await client(socketPath);
    await c.writer.json({ type: 'hello', name: 'x', uid: 0 });
    assert.deepEqual(await c.reader.json(), { ok: false, error: 'invalid request: request.uid: field not allowed here' });
    const refused = lines.find((l) => l.level === 'warn');
    assert.ok(refused, 'the refusal is logged');
    assert.equal(refused.fields.socket, 'test');
    assert.equal(refused.fields.err, 'request.uid: field not allowed here');
    await c.writer.json({ type: 'hello', name: 'a\r\nb' });
    assert.deepEqual(await c.reader.json(), { ok: false, error: 'invalid request: request.name: contains a control character (CR, LF, NUL, ...)' });
    // a frame that is not JSON is answered too, not silently dropped
    await c.writer.data(Buffer.from('x'));
    assert.deepEqual(await c.reader.json(), { ok: false, error: 'expected a JSON frame, got D' });
    await c.writer.json({ type: 'hello', name: 'bob' });
    assert.deepEqual(await c.reader.json(), { ok: true, hello: 'bob' });
    assert.deepEqual(answered, [{ type: 'hello', name: 'bob' }], 'only the checked request reached answer()');
    c.socket.end();
  } finally {
    await server.stop();
    cleanup();
  }
});

test('serveRequests: one request per connection unless `many`; an answer that throws is answered with failure()', async () => {
  const server = serveRequests({
    check: (raw) => raw as { n: number },
    answer: (req) => { if (req.n < 0) throw new Error('negative'); return { ok: true, n: req.n }; },
    failure: (error: string): Record<string, unknown> => ({ ok: false, error }),
  });
  const { socketPath, cleanup } = await listening(server, 'one');
  try {
    const c = await client(socketPath);
    await c.writer.json({ n: -1 });
    assert.deepEqual(await c.reader.json(), { ok: false, error: 'negative' });
    assert.equal(await c.reader.next(), null, 'the server ends the connection after one reply');
  } finally {
    await server.stop();
    cleanup();
  }
});

test('FrameServer.stop: closes idle connections and new ones at once, waits for the connection in hand', async () => {
  let release!: () => void;
  const gate = new Promise<void>((r) => { release = r; });
  let started!: () => void;
  const working = new Promise<void>((r) => { started = r; });
  const server = serveFrames({
    async serve(conn) {
      for (;;) {
        const f = await conn.next();
        if (!f || f.type !== 'J') return;
        started();
        await gate; // work in hand: stop must wait for it
        await conn.writer.json({ done: f.json });
      }
    },
  });
  const { socketPath, cleanup } = await listening(server, 'stop');
  try {
    const busy = await client(socketPath);
    const idle = await client(socketPath);
    await busy.writer.json({ job: 1 });
    await working;
    assert.equal(server.connections, 2);
    let stopped = false;
    const stopping = server.stop().then(() => { stopped = true; });
    await closed(idle.socket); // it held no work: dropped without waiting
    await assert.rejects(connectUnix(socketPath, 2000), /connect to .*stop/, 'no new connections once stopping');
    assert.equal(stopped, false, 'stop() waits while a connection is working');
    assert.equal(server.connections, 1);
    release();
    assert.deepEqual(await busy.reader.json(), { done: { job: 1 } }, 'the work in hand is finished and answered');
    await stopping;
    assert.equal(server.connections, 0);
    assert.equal(await busy.reader.next(), null, 'after its reply the connection is closed, not served again');
  } finally {
    release();
    await server.stop();
    cleanup();
  }
});

test('frame limits: a frame over the server\'s limit ends that connection at its header; others are served', async () => {
  const broken: string[] = [];
  const server = serveRequests({
    many: true,
    limits: { json: 64, data: 16 },
    check: (raw) => raw,
    answer: () => ({ ok: true }),
    failure: (error: string): Record<string, unknown> => ({ ok: false, error }),
    broken: (e) => { broken.push(e.message); },
  });
  const { socketPath, cleanup } = await listening(server, 'limits');
  try {
    const big = await client(socketPath);
    // only the 5-byte header of a 100-byte JSON frame: refused on the header, no payload awaited
    const head = Buffer.alloc(5);
    head.write('J', 0, 'latin1');
    head.writeUInt32BE(100, 1);
    big.socket.write(head);
    assert.equal(await big.reader.next(), null, 'closed without a reply');
    assert.deepEqual(broken, ['frame of 100 bytes is too large']);

    const data = await client(socketPath);
    await data.writer.data(Buffer.alloc(17));
    assert.equal(await data.reader.next(), null);
    assert.deepEqual(broken.slice(1), ['frame of 17 bytes is too large']);

    const cut = await client(socketPath);
    head.writeUInt32BE(10, 1);
    cut.socket.end(Buffer.concat([head, Buffer.from('{"a":')]));
    await closed(cut.socket);
    assert.deepEqual(broken.slice(2), ['connection closed inside a frame']);

    const ok = await client(socketPath);
    await ok.writer.json({ small: true });
    assert.deepEqual(await ok.reader.json(), { ok: true });
    ok.socket.end();
  } finally {
    await server.stop();
    cleanup();
  }
});

test('cleanup client: envelope, message bytes in order, end; cleanup\'s reply; A on abort; unreachable is its own error', async () => {
  const seen: any[] = [];
  const server = serveFrames({
    async serve(conn) {
      const frames: any[] = [];
      for (;;) {
        const f = await conn.reader.next();
        if (!f) break;
        frames.push(f.type === 'J' ? f.json : f.type === 'D' ? f.data.toString() : f.type);
        if (f.type === 'E') { await conn.writer.json({ ok: true, queue_id: 'Q1' }); break; }
        if (f.type === 'A') break;
      }
      seen.push(frames);
    },
  });
  const { socketPath, cleanup } = await listening(server, 'cleanup.local');
  try {
    const envelope = { sender: 'a@example.test', recipients: [{ address: 'b@example.test' }], origin: 'bounce' as const };
    const reply = await submitMessage(socketPath, envelope, [Buffer.from('Subject: x\r\n'), Buffer.from('\r\nbody\r\n')]);
    assert.deepEqual(reply, { ok: true, queue_id: 'Q1' });
    const sub = await CleanupSubmission.open(socketPath);
    await sub.envelope(envelope);
    await sub.data(Buffer.from('x'));
    await sub.abort();
    sub.close();
    await waitFor('the aborted submission seen', () => seen.length === 2 || null, 5000);
    assert.deepEqual(seen[0], [{ type: 'message', envelope }, 'Subject: x\r\n', '\r\nbody\r\n', 'E']);
    assert.deepEqual(seen[1], [{ type: 'message', envelope }, 'x', 'A']);
    await assert.rejects(submitMessage(path.join(path.dirname(socketPath), 'nothing'), envelope, []),
      (e: Error) => e instanceof CleanupUnreachable && /connect to .*nothing/.test(e.message));
  } finally {
    await server.stop();
    cleanup();
  }
});

test('RequestConnection: requests in flight are answered in order; no reply in time ends the connection for all of them', async () => {
  let hold = false;
  let release!: () => void;
  const gate = new Promise<void>((r) => { release = r; });
  const server = serveRequests({
    many: true,
    check: (raw) => raw as { i: number },
    answer: async (req) => {
      if (hold) await gate; // no answer until the test ends: the client's timeout must act
      return { i: req.i };
    },
    failure: (error: string): Record<string, unknown> => ({ error }),
  });
  const { socketPath, cleanup } = await listening(server, 'anvil');
  let conn: InstanceType<typeof RequestConnection> | null = null;
  try {
    conn = await RequestConnection.connect(socketPath, 2000);
    const died: Error[] = [];
    conn.onDead = (e) => { died.push(e); };
    const replies = await Promise.all([1, 2, 3].map((i) => conn!.request({ i }, 5000)));
    assert.deepEqual(replies, [{ i: 1 }, { i: 2 }, { i: 3 }]);
    hold = true;
    const late = [conn.request({ i: 4 }, 300), conn.request({ i: 5 }, 60000)];
    const results = await Promise.allSettled(late);
    for (const r of results) {
      assert.equal(r.status, 'rejected');
      assert.match((r as PromiseRejectedResult).reason.message, /anvil: no reply within 300 ms/);
    }
    assert.equal(died.length, 1, 'onDead once');
    await assert.rejects(conn.request({ i: 6 }, 1000), /no reply within 300 ms/, 'a dead connection refuses at once');
  } finally {
    conn?.close();
    release();
    await server.stop();
    cleanup();
  }
});

/** A client session as IdlePool sees it: ends like nodemailer's SMTPConnection, counts its QUITs. */
class Session extends EventEmitter {
  quits = 0;
  constructor(readonly name: string) { super(); }
  quit(): void { this.quits++; }
}

test('IdlePool: most recent first, at most `max` kept, forgotten when the server closes it, QUIT when its time runs out', async () => {
  const pool = new IdlePool<Session, { clean: boolean }>();
  const a = new Session('a'); const b = new Session('b'); const c = new Session('c');
  assert.equal(pool.put('k', a, { clean: true }, 60000, 2), true);
  assert.equal(pool.put('k', b, { clean: false }, 60000, 2), true);
  assert.equal(pool.put('k', c, { clean: true }, 60000, 2), false, 'a third over max=2 is not kept');
  assert.equal(c.quits, 1, 'and is closed');
  assert.deepEqual(pool.take('k'), { conn: b, meta: { clean: false } });
  assert.equal(b.listenerCount('end'), 0, 'a taken session is no longer watched');
  a.emit('end'); // the server closed it while idle
  assert.equal(pool.take('k'), null);
  assert.equal(a.quits, 0);
  assert.equal(pool.take('other'), null);
  const d = new Session('d');
  pool.put('k', d, { clean: true }, 20);
  await waitFor('the idle time to run out', () => (pool.count('k') === 0 ? true : null), 5000, 10);
  assert.equal(d.quits, 1, 'closed with QUIT when its time ran out');
  assert.equal(d.listenerCount('end'), 0);
});
