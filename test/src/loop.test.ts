/**
 * "Loops back to myself" (issue 8, item 8): a domain whose MX host is this
 * very instance (an address AND port it listens on for SMTP) must not be
 * delivered to: smtp bounces the mail with 5.4.6, as Postfix does, instead of
 * handing it to its own smtpd again and again. Other instances on the same
 * loopback address but another port are other mail systems (two-servers.test).
 */
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import nodemailer from 'nodemailer';
import { Instance, waitFor, ROOT } from './harness.js';
import { TestDnsServer } from './dns-server.js';

const SENDER = 'alice@example.test';
const PASS = 'alice-secret';

interface LoopModule {
  pruneSelf(hosts: { name: string; priority: number; addresses: string[] }[], port: number,
    isSelf: (address: string, port: number) => boolean): { name: string; priority: number; addresses: string[] }[] | null;
  selfTest(listeners: { host?: string; port: number }[], proxy: string[], local: string[]): (address: string, port: number) => boolean;
}
const loopModule = (): LoopModule => require(path.join(ROOT, 'packages', 'smtp', 'dist', 'loop.js'));

describe('which MX hosts are this instance', () => {
  it('counts an address and port this instance listens on; another port on the same address is another server', () => {
    const { selfTest } = loopModule();
    const self = selfTest([{ host: '127.0.0.1', port: 2525 }, { port: 2600 }], ['192.0.2.9'], ['127.0.0.1', '::1', '198.51.100.7']);
    assert.equal(self('127.0.0.1', 2525), true);
    assert.equal(self('::ffff:127.0.0.1', 2525), true, 'an IPv4-mapped address is the IPv4 address');
    assert.equal(self('127.0.0.1', 2526), false, 'another port: another instance');
    assert.equal(self('198.51.100.7', 2600), true, 'a wildcard listener: any local interface address');
    assert.equal(self('0:0:0:0:0:0:0:1', 2600), true, 'any spelling of an IPv6 address');
    assert.equal(self('203.0.113.1', 2600), false, 'not a local address');
    assert.equal(self('192.0.2.9', 25), true, 'proxy_interfaces: ours whatever the port');
  });

  it('drops MX hosts at or below our own preference, as Postfix does; nothing left is a loop', () => {
    const { pruneSelf } = loopModule();
    const self = (a: string, p: number) => a === '127.0.0.1' && p === 25;
    const us = { name: 'mx.us.test', priority: 10, addresses: ['127.0.0.1'] };
    const better = { name: 'mx.better.test', priority: 5, addresses: ['192.0.2.1'] };
    const worse = { name: 'mx.worse.test', priority: 20, addresses: ['192.0.2.2'] };
    assert.deepEqual(pruneSelf([better, us, worse], 25, self), [better]);
    assert.equal(pruneSelf([us, worse], 25, self), null, 'we are the best MX: the mail loops back to us');
    assert.deepEqual(pruneSelf([better, worse], 25, self), [better, worse], 'not ours: unchanged');
    assert.deepEqual(pruneSelf([us], 26, self), [us], 'another port');
  });
});

describe('a domain whose MX is this instance', () => {
  let dns: TestDnsServer;
  let inst: Instance;

  before(async () => {
    dns = await new TestDnsServer({ records: [
      { name: 'loop.test', type: 'MX', value: { priority: 10, exchange: 'mx.loop.test' } },
      { name: 'mx.loop.test', type: 'A', value: '127.0.0.1' },
    ] }).start();
    inst = await Instance.create({ users: [{ address: SENDER, password: PASS }], main: { dns_servers: dns.address } });
    // the smtp client connects to MX hosts on this instance's own SMTP port
    inst.cli(['config', 'set', `smtp_port=${inst.ports.smtp}`]);
    await inst.start();
  });
  after(async () => { await inst?.destroy(); await dns?.close(); });

  it('bounces with 5.4.6 "mail for loop.test loops back to myself" and queues no second copy', async () => {
    const t = nodemailer.createTransport({ host: '127.0.0.1', port: inst.ports.submission, secure: false, requireTLS: true,
      auth: { user: SENDER, pass: PASS }, tls: { rejectUnauthorized: false } });
    const info = await t.sendMail({ from: SENDER, to: 'someone@loop.test', subject: 'round and round', text: 'hello\n' });
    const id = /queued as ([0-9A-F]{20})/.exec(info.response)?.[1];
    assert.ok(id, info.response);
    const copies = () => inst.logs().filter((e) => e.service === 'cleanup' && e.msg === 'queued' && e.from === `<${SENDER}>`).length;
    // either the bounce, or (the loop) a copy that came back in through smtpd
    await waitFor('the bounce or a second copy', () => copies() > 1 || inst.logs().some((e) => e.queue_id === id && e.status === 'bounced'), 30000);
    assert.equal(copies(), 1, 'the message came back in through our own smtpd: it looped');
    const bounced = await inst.waitForLog('the smtp bounce line', (e) => e.queue_id === id && e.status === 'bounced' && e.to === '<someone@loop.test>' && e.dsn);
    assert.equal(bounced.dsn, '5.4.6');
    assert.equal(bounced.msg, 'bounced (mail for loop.test loops back to myself)');
    const dsn = await waitFor('the DSN in the sender\'s Maildir', () => inst.delivered(SENDER)[0], 20000);
    const text = fs.readFileSync(dsn, 'utf8');
    assert.match(text, /^Status: 5\.4\.6/m);
    assert.match(text, /mail for loop\.test loops back to myself/);
    assert.equal(copies(), 1, 'still one copy');
  });
});
