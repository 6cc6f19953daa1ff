/**
 * smtpd's reply batching (packages/smtpd/src/reply-batching.ts) on a real smtp-server:
 * the replies to a pipelined MAIL/RCPT/DATA leave in one write to the kernel (over TLS
 * in one record) instead of three; STARTTLS's 220 still reaches the client before the
 * handshake, and a 221 after a pipelined RSET arrives after its 250.
 *
 * Writes are counted at the socket's handle (the libuv TCP or TLS wrap), where each
 * call is one write system call or one TLS record. Each case also runs a server
 * without the batching, to show the count would see the difference.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { SMTPServer } from 'smtp-server';
import { batchReplies } from '../../packages/smtpd/dist/reply-batching.js';
import { onEachConnection } from '../../packages/smtpd/dist/connections.js';
import { selfSigned } from './tls-fixtures.js';
import { RawSmtp } from './harness.js';

const HANDLE_WRITES = ['writev', 'writeBuffer', 'writeUtf8String', 'writeLatin1String', 'writeAsciiString', 'writeUcs2String'];

/** Counts the handle-level writes of `socket` into `counter.writes` (the handle is looked up at each write: STARTTLS swaps sockets). */
function countWrites(socket: any, counter: { writes: number }): void {
  const handle = socket._handle;
  if (!handle || handle.__counted) return;
  handle.__counted = true;
  for (const name of HANDLE_WRITES) {
    const orig = handle[name];
    if (typeof orig !== 'function') continue;
    handle[name] = function (...args: unknown[]) {
      counter.writes++;
      return orig.apply(this, args);
    };
  }
}

interface TestServer { server: SMTPServer; port: number; counter: { writes: number }; close(): Promise<void> }

async function startServer(batched: boolean, key: string, cert: string): Promise<TestServer> {
  const counter = { writes: 0 };
  const server = new SMTPServer({
    key, cert, minVersion: 'TLSv1.2', authOptional: true, logger: false, disableReverseLookup: true,
    // synchronous answers: the three replies to a pipelined chunk are made in one turn
    onMailFrom: (_a, _s, cb) => cb(),
    onRcptTo: (_a, _s, cb) => cb(),
    onData: (stream, _s, cb) => { stream.resume(); stream.on('end', () => cb()); },
    onSecure: (socket, _s, cb) => { setImmediate(() => countWrites(socket, counter)); cb(); },
  });
  onEachConnection(server, (conn) => countWrites(conn._socket, counter));
  if (batched) batchReplies(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = ((server as any).server.address() as net.AddressInfo).port;
  return { server, port, counter, close: () => new Promise<void>((r) => server.close(() => r())) };
}

/** Greets, EHLO, optionally STARTTLS and EHLO again; then counts the writes a pipelined MAIL/RCPT/DATA costs the server. */
async function pipelinedWrites(srv: TestServer, overTls: boolean): Promise<{ writes: number; replies: string[] }> {
  const c = await RawSmtp.connect(srv.port);
  try {
    assert.match(c.greeting, /^220 /);
    assert.match(await c.command('EHLO client.test'), /^250/);
    if (overTls) {
      await c.startTls();
      assert.match(await c.command('EHLO client.test'), /^250/);
    }
    // let the server's handle settle, then count only the pipelined chunk's replies
    await new Promise((r) => setTimeout(r, 50));
    const before = srv.counter.writes;
    await c.send('MAIL FROM:<a@client.test>\r\nRCPT TO:<b@server.test>\r\nDATA\r\n');
    const replies = [await c.reply(), await c.reply(), await c.reply()];
    const writes = srv.counter.writes - before;
    await c.send('Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n');
    await c.reply();
    await c.reply();
    return { writes, replies };
  } finally {
    c.close();
  }
}

describe('smtpd reply batching', () => {
  let plain: TestServer;
  let batched: TestServer;
  before(async () => {
    const { key, cert } = selfSigned('mx.server.test');
    plain = await startServer(false, key, cert);
    batched = await startServer(true, key, cert);
  });
  after(async () => {
    await plain?.close();
    await batched?.close();
  });

  it('sends the three replies to a pipelined MAIL/RCPT/DATA in one write', async () => {
    const without = await pipelinedWrites(plain, false);
    const withBatching = await pipelinedWrites(batched, false);
    assert.deepEqual(withBatching.replies.map((r) => r.slice(0, 3)), ['250', '250', '354']);
    assert.equal(without.writes, 3, 'without batching each reply is its own write (the count works)');
    assert.equal(withBatching.writes, 1);
  });

  it('over TLS, after STARTTLS: one record for the three replies', async () => {
    const without = await pipelinedWrites(plain, true);
    const withBatching = await pipelinedWrites(batched, true);
    assert.deepEqual(withBatching.replies.map((r) => r.slice(0, 3)), ['250', '250', '354']);
    // TLS writes complete asynchronously: without batching the second and third replies
    // may share the write that follows the first, but never the first's
    assert.ok(without.writes >= 2, `without batching the replies take ${without.writes} records (the count works)`);
    assert.equal(withBatching.writes, 1);
  });

  it('writes 221 after what is held, in order, and closes', async () => {
    const c = await RawSmtp.connect(batched.port);
    try {
      assert.match(c.greeting, /^220 /);
      await c.send('EHLO client.test\r\nRSET\r\nNOOP\r\nQUIT\r\n');
      const replies = [await c.reply(), await c.reply(), await c.reply(), await c.reply()];
      assert.deepEqual(replies.map((r) => r.slice(0, 3)), ['250', '250', '250', '221']);
      // the server ends the connection: nothing more comes, and the socket closes
      assert.equal(await c.reply(5000), '');
      assert.equal(c.closed, true);
    } finally {
      c.close();
    }
  });
});
