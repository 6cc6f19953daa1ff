/**
 * Every socket's server checks what its client sends against the socket's
 * schema (common/src/ipc/schema.ts) before acting: a request with a field the
 * socket does not know, a value of the wrong type, an oversized string or one
 * that would break a header line is refused with
 * `{ok: false, error: "invalid request: PATH: PROBLEM"}` and one log line naming
 * the socket, and the service goes on serving the next valid request. Each
 * socket of a real, running instance is spoken to directly, as a compromised
 * or broken sibling service would.
 */
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import { Instance, waitFor } from './harness.js';
import {
  connectUnix, FrameReader, FrameWriter, requestJson, smtpdMessageRequest, localMessageRequest, milterEditsRequest, validate, SchemaError,
} from '../../packages/common/dist/index.js';

const REFUSED = 'request refused: not what this socket\'s clients may send';

describe('socket schemas', () => {
  let inst: Instance;
  before(async () => {
    inst = await Instance.create();
    await inst.start();
  });
  after(async () => { await inst?.destroy(); });

  const sock = (dir: 'private' | 'public', name: string) => path.join(inst.spool, dir, name);

  /** One request per connection (the socket's usual client); waits for the socket to accept. */
  async function ask(socketPath: string, req: unknown): Promise<any> {
    return waitFor(`an answer on ${path.basename(socketPath)}`, () => requestJson(socketPath, req, 10000), 20000);
  }

  /** The refusal is logged once with the socket's name and the problem. */
  async function refusalLogged(socket: string, err: string): Promise<void> {
    await inst.waitForLog(`${socket} refusal "${err}" logged`, (e) => e.msg === REFUSED && e.socket === socket && e.err === err);
  }

  /** Each bad request is refused with its PATH: PROBLEM and logged; then `good` is answered as `goodReply` says. */
  async function refusesThenServes(socket: string, socketPath: string, bad: [unknown, string][],
    good: unknown, goodReply: (r: any) => void): Promise<void> {
    for (const [req, problem] of bad) {
      const reply = await ask(socketPath, req);
      assert.deepEqual(reply, { ok: false, error: `invalid request: ${problem}` }, `${socket}: ${JSON.stringify(req).slice(0, 120)}`);
      await refusalLogged(socket, problem);
    }
    goodReply(await ask(socketPath, good));
  }

  it('private/qmgr: trigger and queue administration', async () => {
    await refusesThenServes('private/qmgr', sock('private', 'qmgr'), [
      [{ type: 'trigger', uid: 0 }, 'request.uid: field not allowed here'],
      [{ type: 'flush', site: 5 }, 'request.site: expected a string, got number'],
      [{ type: 'flush', site: 'example.test\r\nX: y' }, 'request.site: contains a control character (CR, LF, NUL, ...)'],
      [{ type: 'hold', ids: ['A'.repeat(100000)] }, 'request.ids[0]: longer than 20 characters'],
      [{ type: 'delete', ids: 'ALL', queues: ['maildrop', '../x'] }, 'request.queues[1]: not one of maildrop, incoming, active, deferred, hold, corrupt'],
      [{ type: 'shutdown' }, 'request.type: not one of trigger, flush, hold, release, delete, expire, requeue, deliver'],
    ], { type: 'trigger' }, (r) => assert.deepEqual(r, { ok: true }));
  });

  it('private/pickup: trigger', async () => {
    await refusesThenServes('private/pickup', sock('private', 'pickup'), [
      [{ type: 'trigger', file: '/etc/shadow' }, 'request.file: field not allowed here'],
      [{ type: 7 }, 'request.type: expected a string, got number'],
    ], { type: 'trigger' }, (r) => assert.deepEqual(r, { ok: true }));
  });

  it('public/showq: list', async () => {
    await refusesThenServes('public/showq', sock('public', 'showq'), [
      [{ type: 'list', queue: 'x'.repeat(5000) }, 'request.queue: field not allowed here'],
      [[{ type: 'list' }], 'request: expected an object, got an array'],
    ], { type: 'list' }, (r) => assert.deepEqual(r, { ok: true, entries: [] }));
  });

  it('private/anvil: counters, several requests on one kept connection', async () => {
    const s = await waitFor('anvil accepting', () => connectUnix(sock('private', 'anvil'), 2000), 20000);
    s.on('error', () => undefined);
    s.setTimeout(10000, () => s.destroy(new Error('test client: no answer within 10 s')));
    const reader = new FrameReader(s);
    const writer = new FrameWriter(s);
    try {
      const bad: [unknown, string][] = [
        [{ type: 'connect', service: 'smtp', client: '192.0.2.1', uid: 0 }, 'request.uid: field not allowed here'],
        [{ type: 'lookup', service: 25, client: '192.0.2.1' }, 'request.service: expected a string, got number'],
        [{ type: 'message', service: 'smtp', client: 'x'.repeat(201) }, 'request.client: longer than 200 characters'],
        [{ type: 'recipient', service: 'smtp', client: '192.0.2.1\nforged' }, 'request.client: contains a control character (CR, LF, NUL, ...)'],
        [{ type: 'auth', service: 'smtp', client: '192.0.2.1', peek: 'yes' }, 'request.peek: expected true or false, got string'],
      ];
      for (const [req, problem] of bad) {
        await writer.json(req);
        assert.deepEqual(await reader.json(), { ok: false, error: `invalid request: ${problem}` }, JSON.stringify(req).slice(0, 120));
        await refusalLogged('private/anvil', problem);
      }
      // the same connection goes on: the next valid request is counted
      await writer.json({ type: 'connect', service: 'smtp', client: '192.0.2.1' });
      const connect = await reader.json();
      assert.equal(connect.ok, true);
      assert.equal(connect.count, 1);
      await writer.json({ type: 'lookup', service: 'smtp', client: '192.0.2.1' });
      const lookup = await reader.json();
      assert.equal(lookup.ok, true);
      assert.equal(lookup.count, 1, 'the refused connect with a uid was not counted');
    } finally {
      s.destroy();
    }
  });

  it('private/smtp and private/lmtp: delivery requests', async () => {
    const request = { type: 'deliver', queue_id: '0123456789ABCDEF0123', file: path.join(inst.spool, 'active', '0123456789ABCDEF0123'),
      nexthop: 'example.test', recipients: [{ index: 0, address: 'a@example.test' }] };
    for (const agent of ['smtp', 'lmtp']) {
      await refusesThenServes(`private/${agent}`, sock('private', agent), [
        [{ ...request, origin: 'smtpd' }, 'request.origin: field not allowed here'],
        [{ ...request, recipients: [{ index: '0', address: 'a@example.test' }] }, 'request.recipients[0].index: expected an integer, got string'],
        [{ ...request, recipients: [] }, 'request.recipients: fewer than 1 entries'],
        [{ ...request, nexthop: 'x'.repeat(5000) }, 'request.nexthop: longer than 4096 characters'],
        [{ ...request, recipients: [{ index: 0, address: 'a@example.test\r\nBcc: b@example.test' }] },
          'request.recipients[0].address: contains a control character (CR, LF, NUL, ...)'],
        [{ ...request, skip: [1] }, 'request.skip[0]: expected a string, got number'],
        [{ ...request, queue_id: '../../etc/passwd' }, 'request.queue_id: not in the expected form'],
      ], request, (r) => {
        // checked and acted on: the agent went to read the (missing) queue file
        assert.equal(r.results, undefined);
        assert.match(r.error, /ENOENT.*0123456789ABCDEF0123/);
      });
    }
  });

  it('private/local.qmgr: delivery requests with the message in the frames', async () => {
    const request = { type: 'deliver', queue_id: '0123456789ABCDEF0123', sender: 'a@remote.test', arrival: Date.now(),
      recipients: [{ index: 0, address: 'nobody@example.test' }] };
    for (const [bad, problem] of [
      [{ ...request, file: '/etc/shadow' }, 'request.file: field not allowed here'],
      [{ ...request, arrival: 'now' }, 'request.arrival: expected an integer, got string'],
      [{ ...request, recipients: [{ index: 0, address: 'a@example.test\r\nBcc: b@example.test' }] },
        'request.recipients[0].address: contains a control character (CR, LF, NUL, ...)'],
    ] as [unknown, string][]) {
      const reply = await ask(sock('private', 'local.qmgr'), bad);
      assert.deepEqual(reply, { ok: false, error: `invalid request: ${problem}` });
      await refusalLogged('private/local.qmgr', problem);
    }
    // a good one: its message frames follow, then E; an unknown user is answered 5.1.1 as over LMTP
    const s = await connectUnix(sock('private', 'local.qmgr'));
    try {
      const w = new FrameWriter(s);
      await w.json(request);
      await w.data(Buffer.from('Subject: x\r\n\r\nbody\r\n'));
      await w.end();
      const reply = await new FrameReader(s).json();
      assert.equal(reply.results.length, 1);
      assert.equal(reply.results[0].status, 'bounced');
      assert.equal(reply.results[0].dsn, '5.1.1');
      assert.match(reply.results[0].reason, /^550 5\.1\.1 <nobody@example\.test>: no such user/);
    } finally {
      s.destroy();
    }
  });

  it('private/proxymap: table lookups', async () => {
    await refusesThenServes('private/proxymap', sock('private', 'proxymap'), [
      [{ op: 'lookup', spec: 'sqlite:/etc/postern/x.cf', key: 'a@example.test', service: 'smtpd' }, 'request.service: field not allowed here'],
      [{ op: 'drop', spec: 'sqlite:/etc/postern/x.cf', key: 'a' }, 'request.op: not one of lookup, exists, credentials, userInfo'],
      [{ op: 'lookup', spec: 'sqlite:/etc/postern/x.cf', key: ['a'] }, 'request.key: expected a string, got an array'],
      [{ op: 'lookup', spec: 'sqlite:/etc/postern/x.cf', key: 'k'.repeat(5000) }, 'request.key: longer than 4096 characters'],
      [{ op: 'lookup', spec: 'sqlite:/etc/postern/x.cf', key: "a' OR 1=1\n--" }, 'request.key: contains a control character (CR, LF, NUL, ...)'],
    ], { op: 'lookup', spec: 'sqlite:/etc/postern/x.cf', key: 'a@example.test' },
    (r) => assert.deepEqual(r, { ok: false, unavailable: false, error: 'table sqlite:/etc/postern/x.cf is not named in main.cf or master.cf' }));
  });
});

describe('cleanup\'s request schemas are built once, not per message', () => {
  it('one schema object per recipient limit; the limit it was built with is still enforced', () => {
    assert.equal(smtpdMessageRequest(3), smtpdMessageRequest(3), 'smtpd\'s request: the same object for the same limit');
    assert.equal(milterEditsRequest(3), milterEditsRequest(3), 'milter edits: the same object for the same limit');
    assert.equal(localMessageRequest(), localMessageRequest(), 'the local socket\'s request: one object');
    assert.notEqual(smtpdMessageRequest(3), smtpdMessageRequest(4), 'a new smtpd_recipient_limit (reload) gets its own');
    const request = (n: number) => ({
      type: 'message', envelope: {
        sender: 'a@example.test', recipients: Array.from({ length: n }, (_, i) => ({ address: `r${i}@example.test` })),
        client: { address: '192.0.2.1', name: 'client.example.test', helo: 'client.example.test' }, protocol: 'ESMTP', tls: null,
      },
    });
    assert.equal(validate(smtpdMessageRequest(3), request(3)).envelope.recipients.length, 3);
    assert.throws(() => validate(smtpdMessageRequest(3), request(4)),
      (e: unknown) => e instanceof SchemaError && /request\.envelope\.recipients: more than 3 entries/.test((e as Error).message));
    assert.equal(validate(smtpdMessageRequest(4), request(4)).envelope.recipients.length, 4);
  });
});
