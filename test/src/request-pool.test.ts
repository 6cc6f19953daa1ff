// Kept-open request connections (common/ipc/request-pool.ts), as qmgr uses them to
// talk to its delivery agents.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { RequestPool, FrameReader, FrameWriter } from '../../packages/common/dist/index.js';
import { tempDir } from './harness.js';

/** A JSON echo server on a Unix socket; `perConnection` requests are answered before it closes the connection (0: never). */
async function server(perConnection: number, opts: { silent?: boolean } = {}) {
  const dir = tempDir('request-pool');
  const socketPath = path.join(dir, 'agent');
  const conns: net.Socket[] = [];
  let accepted = 0;
  const srv = net.createServer(async (c) => {
    accepted++;
    conns.push(c);
    c.on('error', () => undefined);
    const reader = new FrameReader(c);
    const writer = new FrameWriter(c);
    try {
      for (let n = 0; perConnection === 0 || n < perConnection; n++) {
        const f = await reader.next();
        if (!f || f.type !== 'J') break;
        if (!opts.silent) await writer.json({ echo: f.json, n });
      }
    } catch { /* closed */ }
    c.end();
  });
  await new Promise<void>((r) => srv.listen(socketPath, r));
  return {
    socketPath,
    accepted: () => accepted,
    /** Close every connection the server holds (as an agent that restarts does). */
    dropAll: () => { for (const c of conns.splice(0)) c.destroy(); },
    close: async () => { for (const c of conns) c.destroy(); await new Promise((r) => srv.close(r)); fs.rmSync(dir, { recursive: true, force: true }); },
  };
}

test('RequestPool: sequential requests share one connection; concurrent ones get one each', async () => {
  const s = await server(0);
  const pool = new RequestPool(s.socketPath);
  try {
    for (let i = 0; i < 5; i++) assert.deepEqual(await pool.request({ i }), { echo: { i }, n: i });
    assert.equal(s.accepted(), 1);
    const replies = await Promise.all([1, 2, 3].map((i) => pool.request({ i })));
    assert.deepEqual(replies.map((r) => r.echo.i), [1, 2, 3]);
    assert.equal(s.accepted(), 3, 'two more for the two requests that found no idle connection');
  } finally {
    pool.close();
    await s.close();
  }
});

test('RequestPool: a server that answers one request per connection still works', async () => {
  const s = await server(1);
  const pool = new RequestPool(s.socketPath);
  try {
    for (let i = 0; i < 3; i++) assert.equal((await pool.request({ i })).echo.i, i);
    assert.equal(s.accepted(), 3);
  } finally {
    pool.close();
    await s.close();
  }
});

test('RequestPool: a kept connection the server dropped is replaced, the request is not lost', async () => {
  const s = await server(0);
  const pool = new RequestPool(s.socketPath);
  try {
    assert.equal((await pool.request({ i: 1 })).echo.i, 1);
    s.dropAll();
    assert.equal((await pool.request({ i: 2 })).echo.i, 2);
    assert.equal(s.accepted(), 2);
  } finally {
    pool.close();
    await s.close();
  }
});

test('RequestPool: no reply within the timeout is an error naming the socket; nothing listening is an error too', async () => {
  const s = await server(0, { silent: true });
  const pool = new RequestPool(s.socketPath);
  try {
    await assert.rejects(pool.request({ i: 1 }, 200), /agent: no reply within 200 ms/);
  } finally {
    pool.close();
    await s.close();
  }
  await assert.rejects(new RequestPool(s.socketPath).request({ i: 1 }, 1000), /connect to .*agent/);
});
