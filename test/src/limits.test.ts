/**
 * Limits that keep the server up (issue 4, item 5): per-client connection
 * count and rate, message and recipient rates, AUTH failures (a growing delay,
 * then 421), the hard error limit for bad commands, command and DATA
 * timeouts, the command line length; all client counts kept by the anvil
 * service, so they hold across every smtpd process of a listener.
 *
 * The clients connect from 127.0.0.1 and mynetworks is 10.255.0.0/16, so
 * every limit applies to them; one listener puts loopback back into
 * mynetworks to show that trusted networks are exempt.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Instance, RawSmtp, freePort, waitFor } from './harness.js';
import { TestDnsServer } from './dns-server.js';
import { ClientCounters } from '../../packages/anvil/dist/counters.js';

const USER = 'rcpt@example.test';
const PASS = 'secret';

const plain = (user: string, pass: string) => Buffer.from(`\0${user}\0${pass}`).toString('base64');

describe('anvil counters', () => {
  it('count connections open now, and events per time unit in a window that restarts', () => {
    let now = 1_000_000;
    const c = new ClientCounters(() => 60_000, () => now);
    assert.deepEqual(c.connect('smtp:192.0.2.1'), { count: 1, rate: 1 });
    assert.deepEqual(c.connect('smtp:192.0.2.1'), { count: 2, rate: 2 });
    assert.deepEqual(c.connect('submission:192.0.2.1'), { count: 1, rate: 1 }, 'each service counts apart');
    c.disconnect('smtp:192.0.2.1');
    assert.deepEqual(c.connect('smtp:192.0.2.1'), { count: 2, rate: 3 }, 'a closed connection still counts in the rate');
    assert.equal(c.event('smtp:192.0.2.1', 'message'), 1);
    assert.equal(c.event('smtp:192.0.2.1', 'auth', true), 0, 'a peek counts nothing');
    assert.equal(c.event('smtp:192.0.2.1', 'auth'), 1);
    now += 60_000;
    assert.deepEqual(c.connect('smtp:192.0.2.1'), { count: 3, rate: 1 }, 'a new time unit: rates restart, open connections stay');
    assert.equal(c.event('smtp:192.0.2.1', 'message'), 1);
    for (let i = 0; i < 3; i++) c.disconnect('smtp:192.0.2.1');
    c.disconnect('smtp:192.0.2.1');
    assert.equal(c.lookup('smtp:192.0.2.1').count, 0, 'never below zero');
    now += 60_000;
    assert.equal(c.sweep(), 1, 'a client with a connection open is kept');
    c.disconnect('submission:192.0.2.1');
    assert.equal(c.sweep(), 0, 'idle clients are forgotten');
  });
});

describe('client limits on a running instance', () => {
  let inst: Instance;
  let dns: TestDnsServer;
  const port = { rate: 0, timeout: 0, events: 0, trusted: 0 };
  let logMark = 0;
  /** Log entries since the last mark() */
  const recent = () => inst.logs().slice(logMark);
  const mark = () => { logMark = inst.logs().length; };

  before(async () => {
    // an empty zone: every client is unknown[address], answered at once (no resolver of the host is asked)
    dns = await new TestDnsServer().start();
    inst = await Instance.create({
      users: [{ address: USER, password: PASS }],
      main: {
        mynetworks: '10.255.0.0/16',
        dns_servers: dns.address,
        // clients have no PTR here here: the default list's reverse-DNS check would refuse every client
        smtpd_client_restrictions: 'permit_mynetworks, permit_sasl_authenticated',
        smtpd_client_connection_count_limit: '3',
        smtpd_client_auth_rate_limit: '3',
        smtpd_error_sleep_time: '1s',
      },
    });
    for (const k of Object.keys(port) as (keyof typeof port)[]) port[k] = await freePort();
    const masterCf = path.join(inst.etc, 'master.cf');
    let text = fs.readFileSync(masterCf, 'utf8');
    // the MX listener with two processes: anvil's counts must hold across both
    const mx = new RegExp(`^(127\\.0\\.0\\.1:${inst.ports.smtp}\\s+inet\\s+-\\s+)1(\\s+smtpd)\\s*$`, 'm');
    assert.match(text, mx, 'postern init wrote the MX listener');
    text = text.replace(mx, '$12$2');
    assert.match(text, /^anvil\s+unix\s+-\s+1\s+anvil$/m, 'postern init runs anvil');
    text += [
      `127.0.0.1:${port.rate}  inet  -  1  smtpd  -o smtpd_client_connection_rate_limit=3`,
      `127.0.0.1:${port.timeout}  inet  -  1  smtpd  -o smtpd_timeout=2s`,
      `127.0.0.1:${port.events}  inet  -  1  smtpd  -o smtpd_client_message_rate_limit=2 -o smtpd_client_recipient_rate_limit=3`,
      `127.0.0.1:${port.trusted}  inet  -  1  smtpd  -o mynetworks=127.0.0.0/8 -o smtpd_client_connection_count_limit=1`,
    ].join('\n') + '\n';
    fs.writeFileSync(masterCf, text);
    await inst.start();
  });
  after(async () => { await inst?.destroy(); await dns?.close(); });

  const smtpdPids = (listener: number): number[] => inst.status().services
    .filter((s: any) => s.command === 'smtpd' && s.service === `127.0.0.1:${listener}`).map((s: any) => s.pid);

  it('connections beyond smtpd_client_connection_count_limit get 421, counted across both smtpd processes', async () => {
    const [p1, p2] = smtpdPids(inst.ports.smtp);
    assert.ok(p1 && p2 && p1 !== p2, 'two smtpd processes serve the MX listener');
    mark();
    const open: RawSmtp[] = [];
    try {
      // a stopped process accepts nothing: the first two connections go to p1, the others to p2
      process.kill(p2, 'SIGSTOP');
      try {
        for (let i = 0; i < 2; i++) open.push(await RawSmtp.connect(inst.ports.smtp));
      } finally { process.kill(p2, 'SIGCONT'); }
      process.kill(p1, 'SIGSTOP');
      let refused: RawSmtp;
      try {
        open.push(await RawSmtp.connect(inst.ports.smtp));
        refused = await RawSmtp.connect(inst.ports.smtp);
      } finally { process.kill(p1, 'SIGCONT'); }
      for (const c of open) assert.match(c.greeting, /^220 /, 'three connections are within the limit');
      assert.equal(refused.greeting, `421 4.7.0 mx.example.test Error: too many connections from 127.0.0.1`);
      await waitFor('the refused connection closed', () => refused.closed, 5000);
      const connects = (pid: number) => recent().filter((e) => e.pid === pid && /^connect from /.test(e.msg)).length;
      assert.equal(connects(p1), 2, 'p1 holds two connections');
      const exceeded = await inst.waitForLog('anvil count logged', (e) => /Connection concurrency limit exceeded: 4 from unknown\[127\.0\.0\.1\]/.test(e.msg));
      assert.equal(exceeded.pid, p2, 'p2 refused the fourth connection though it held only one of its own');
      assert.equal(exceeded.status, 'reject');
    } finally {
      for (const c of open) c.close();
    }
    // the closed connections are no longer counted
    const again: RawSmtp[] = [];
    try {
      for (let i = 0; i < 3; i++) {
        const c = await waitFor('a connection within the limit', async () => {
          const x = await RawSmtp.connect(inst.ports.smtp);
          if (x.greeting.startsWith('220')) return x;
          x.close();
          return null;
        }, 10000, 200);
        again.push(c);
      }
    } finally { for (const c of again) c.close(); }
  });

  it('connections beyond smtpd_client_connection_rate_limit in a time unit get 421 even when the others closed', async () => {
    for (let i = 0; i < 3; i++) {
      const c = await RawSmtp.connect(port.rate);
      assert.match(c.greeting, /^220 /, `connection ${i + 1} of 3`);
      assert.match(await c.command('QUIT'), /^221 /);
      c.close();
    }
    const c = await RawSmtp.connect(port.rate);
    assert.equal(c.greeting, '421 4.7.0 mx.example.test Error: too many connections from 127.0.0.1');
    c.close();
    await inst.waitForLog('rate logged', (e) => /^Connection rate limit exceeded: 4 from unknown\[127\.0\.0\.1\] for service 127\.0\.0\.1:\d+$/.test(e.msg));
  });

  it('mynetworks (smtpd_client_event_limit_exceptions) is exempt', async () => {
    const open: RawSmtp[] = [];
    try {
      for (let i = 0; i < 3; i++) open.push(await RawSmtp.connect(port.trusted));
      for (const c of open) assert.match(c.greeting, /^220 /, 'a limit of 1 does not apply to a trusted client');
    } finally { for (const c of open) c.close(); }
  });

  it('messages and recipients beyond their rates get 450 4.7.1', async () => {
    const c = await RawSmtp.connect(port.events);
    try {
      assert.match(await c.command('EHLO client.example.net'), /^250/);
      assert.match(await c.command('MAIL FROM:<someone@example.net>'), /^250 /);
      for (let i = 0; i < 3; i++) assert.match(await c.command(`RCPT TO:<${USER}>`), /^250 /, `recipient ${i + 1} of 3`);
      assert.equal(await c.command(`RCPT TO:<${USER}>`), '450 4.7.1 Error: too many recipients from 127.0.0.1');
      assert.match(await c.command('RSET'), /^250 /);
      assert.match(await c.command('MAIL FROM:<someone@example.net>'), /^250 /, 'message 2 of 2');
      assert.match(await c.command('RSET'), /^250 /);
      assert.equal(await c.command('MAIL FROM:<someone@example.net>'), '450 4.7.1 Error: too much mail from 127.0.0.1');
    } finally { c.close(); }
    await inst.waitForLog('message rate logged', (e) => /^Message delivery request rate limit exceeded: 3 from /.test(e.msg));
    await inst.waitForLog('recipient rate logged', (e) => /^Recipient address rate limit exceeded: 4 from /.test(e.msg));
  });

  it('failed AUTH waits longer each time, then 421 closes the connection, and the next session is refused too', async () => {
    mark();
    const c = await RawSmtp.connectTls(inst.ports.submissions);
    assert.match(c.greeting, /^220 /);
    assert.match(await c.command('EHLO client.example.net'), /AUTH PLAIN LOGIN/);
    for (let i = 1; i <= 3; i++) {
      assert.equal(await c.command(`AUTH PLAIN ${plain(USER, `guess-${i}`)}`), '535 5.7.8 Error: authentication failed', `guess ${i}`);
    }
    assert.equal(await c.command(`AUTH PLAIN ${plain(USER, 'guess-4')}`), '421 4.7.0 mx.example.test Error: too many AUTH failures from 127.0.0.1');
    await waitFor('the connection closed', () => c.closed, 5000);
    c.close();
    const failures = recent().filter((e) => /SASL PLAIN authentication failed; reply delayed/.test(e.msg));
    assert.deepEqual(failures.map((e) => [e.auth_failures, e.delay_s]), [[1, 1], [2, 2], [3, 3]],
      'each failure waits smtpd_error_sleep_time times the failures so far');
    assert.match(failures[2].msg, /^unknown\[127\.0\.0\.1\]: SASL PLAIN authentication failed; reply delayed 3s$/);
    await inst.waitForLog('AUTH limit logged', (e) => /^AUTH failure rate limit exceeded: 3 from unknown\[127\.0\.0\.1\]/.test(e.msg));

    // anvil remembers the client: a new session, even with the right password, is refused for this time unit
    const next = await RawSmtp.connectTls(inst.ports.submissions);
    assert.match(await next.command('EHLO client.example.net'), /^250/);
    assert.equal(await next.command(`AUTH PLAIN ${plain(USER, PASS)}`), '421 4.7.0 mx.example.test Error: too many AUTH failures from 127.0.0.1');
    next.close();
  });

  it('bad commands up to smtpd_hard_error_limit (20) get 500, the next command 421 and the connection closes', async () => {
    mark();
    const c = await RawSmtp.connect(inst.ports.smtp);
    assert.match(await c.command('EHLO client.example.net'), /^250/);
    for (let i = 1; i <= 20; i++) assert.match(await c.command(`XYZZY ${i}`), /^500 /, `bad command ${i}`);
    assert.equal(await c.command('NOOP'), '421 4.7.0 mx.example.test Error: too many errors');
    await waitFor('the connection closed', () => c.closed, 5000);
    c.close();
    const line = await inst.waitForLog('hang-up logged', (e) => /^too many errors after NOOP from unknown\[127\.0\.0\.1\]$/.test(e.msg));
    assert.equal(line.errors, 20);
  });

  it('a command line longer than line_length_limit gets 421 and the connection closes', async () => {
    const c = await RawSmtp.connect(inst.ports.smtp);
    assert.match(await c.command('EHLO client.example.net'), /^250/);
    assert.equal(await c.command(`NOOP ${'x'.repeat(3000)}`), '421 4.5.0 mx.example.test Error: command line too long');
    await waitFor('the connection closed', () => c.closed, 5000);
    c.close();
  });

  it('a client that sends nothing is dropped at smtpd_timeout with 421 4.4.2', async () => {
    const c = await RawSmtp.connect(port.timeout);
    assert.match(c.greeting, /^220 /);
    assert.equal(await c.reply(15000), '421 4.4.2 mx.example.test Error: timeout exceeded');
    await waitFor('the connection closed', () => c.closed, 5000);
    c.close();
    await inst.waitForLog('timeout logged', (e) => /^timeout after CONNECT from unknown\[127\.0\.0\.1\]$/.test(e.msg));
  });

  it('a client that stops in the middle of DATA is dropped at smtpd_timeout and nothing is queued', async () => {
    mark();
    const c = await RawSmtp.connect(port.timeout);
    assert.match(await c.command('EHLO client.example.net'), /^250/);
    assert.match(await c.command('MAIL FROM:<someone@example.net>'), /^250 /);
    assert.match(await c.command(`RCPT TO:<${USER}>`), /^250 /);
    assert.match(await c.command('DATA'), /^354 /);
    await c.send('Subject: half a message\r\n\r\nand then nothing more');
    assert.equal(await c.reply(15000), '421 4.4.2 mx.example.test Error: timeout exceeded');
    await waitFor('the connection closed', () => c.closed, 5000);
    c.close();
    await inst.waitForLog('timeout logged', (e) => /^timeout after DATA from unknown\[127\.0\.0\.1\]$/.test(e.msg));
    await inst.waitForLog('cleanup dropped the partial message', (e) => e.service === 'cleanup' && e.msg === 'message not queued');
    assert.equal(recent().filter((e) => e.service === 'cleanup' && e.msg === 'queued').length, 0);
    assert.equal(inst.delivered(USER).length, 0);
  });

  it('with anvil not answering, clients are served (and the outage is logged)', async () => {
    const anvil = inst.status().services.find((s: any) => s.command === 'anvil');
    assert.ok(anvil?.pid, 'anvil runs');
    process.kill(anvil.pid, 'SIGSTOP');
    let c: RawSmtp;
    try {
      c = await RawSmtp.connect(inst.ports.submission);
    } finally { process.kill(anvil.pid, 'SIGCONT'); }
    assert.match(c.greeting, /^220 /);
    c.close();
    await inst.waitForLog('outage logged', (e) => /^anvil is not reachable: client connection and rate limits are not enforced/.test(e.msg));
  });
});
