/**
 * One From: header must not stall the MX listener (issue 8, item 7):
 * nodemailer 8's address parser (bundled by mailauth 4.13.3) took seconds of
 * CPU on a 100 KB `From: x.x.x...@`, during which smtpd answered nobody. The
 * tree now has one nodemailer (npm overrides), and message authentication does
 * not parse a From: header longer than its cap (dmarc=permerror instead).
 *
 * The ordering test: cleanup is stopped (SIGSTOP) while the first client's
 * message is in flight, so its DATA reply cannot come before cleanup runs
 * again; meanwhile a second client connects. smtpd, if its event loop is free,
 * greets the second client first. With the old parser smtpd was busy in the
 * parse and the second client got no greeting within RawSmtp's 10 s bound.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Instance, RawSmtp, run, waitFor, ROOT } from './harness.js';
import { TestDnsServer } from './dns-server.js';
import * as messageAuth from '../../packages/smtpd/dist/message-auth.js';

const RCPT = 'bob@example.test';

describe('one version of nodemailer', () => {
  it('npm ls nodemailer --all shows exactly one version in the tree', () => {
    const r = run('npm', ['ls', 'nodemailer', '--all', '--json'], { cwd: ROOT });
    const tree = JSON.parse(r.stdout);
    const versions = new Set<string>();
    const walk = (deps: Record<string, any> | undefined) => {
      for (const [name, d] of Object.entries(deps ?? {})) {
        if (name === 'nodemailer' && d.version) versions.add(d.version);
        walk(d.dependencies);
      }
    };
    walk(tree.dependencies);
    assert.deepEqual([...versions], ['10.6.1'], `nodemailer versions in the tree: ${[...versions].join(', ')}`);
  });
});

describe('the dependencies', () => {
  it('every runtime dependency is imported by a program; mailparser (tests only) is not one', () => {
    const deps = Object.keys(JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).dependencies ?? {});
    const sources: string[] = [];
    for (const p of fs.readdirSync(path.join(ROOT, 'packages'))) {
      const src = path.join(ROOT, 'packages', p, 'src');
      const walk = (d: string) => { for (const e of fs.readdirSync(d, { withFileTypes: true })) {
        if (e.isDirectory()) walk(path.join(d, e.name)); else if (e.name.endsWith('.ts')) sources.push(fs.readFileSync(path.join(d, e.name), 'utf8'));
      } };
      if (fs.existsSync(src)) walk(src);
    }
    const imported = (dep: string) => sources.some((t) => new RegExp(`(from|import|require\\()\\s*['"]${dep.replace(/[/.]/g, '\\$&')}(/[^'"]*)?['"]`).test(t));
    assert.deepEqual(deps.filter((d) => !imported(d)), [], 'dependencies no program imports');
    assert.ok(!deps.includes('mailparser'), 'mailparser is a devDependency only');
  });
});

describe('the From: meter', () => {
  it('counts the bytes of every From: field, folded lines included, and stops at the body', () => {
    const Meter = (messageAuth as any).FromFieldMeter;
    assert.equal(typeof Meter, 'function', 'message-auth.ts exports FromFieldMeter');
    const m = new Meter();
    const head = 'To: <a@b.test>\r\nFrom: "A very\r\n long name" <a@b.test>\r\nSubject: x\r\n';
    assert.equal(m.feed(Buffer.from(head.slice(0, 20)), 1000), false);
    assert.equal(m.feed(Buffer.from(head.slice(20)), 1000), false);
    assert.equal(m.fromBytes, 'From: "A very\r\n long name" <a@b.test>\r\n'.length);
    m.feed(Buffer.from(`\r\nFrom: ${'x'.repeat(5000)}\r\n`), 1000);
    assert.equal(m.fromBytes, 'From: "A very\r\n long name" <a@b.test>\r\n'.length, 'a From: line in the body is not a header');
    const big = new Meter();
    assert.equal(big.feed(Buffer.from(`FROM : ${'x.'.repeat(5000)}@\r\n\r\n`), 8192), true, 'any spelling of the field name');
  });
});

describe('a 100 KB From: header on the MX listener', () => {
  let dns: TestDnsServer;
  let inst: Instance;

  before(async () => {
    dns = await new TestDnsServer().start();
    inst = await Instance.create({ users: [{ address: RCPT }], main: {
      mynetworks: '10.255.0.0/16', dns_servers: dns.address,
      smtpd_client_restrictions: 'permit_mynetworks, permit_sasl_authenticated',
    } });
    await inst.start();
  });
  after(async () => { await inst?.destroy(); await dns?.close(); });

  it('does not hold up a second client: its greeting comes before the first message\'s DATA reply', async () => {
    const cleanup = inst.status().services.find((s: any) => s.command === 'cleanup')?.pid;
    assert.ok(cleanup, 'cleanup runs');
    const first = await RawSmtp.connect(inst.ports.smtp);
    let second: RawSmtp | undefined;
    const order: string[] = [];
    try {
      for (const [line, code] of [['EHLO client.example.net', '250'], ['MAIL FROM:<sender@remote.test>', '250'],
        [`RCPT TO:<${RCPT}>`, '250'], ['DATA', '354']]) {
        assert.ok((await first.command(line)).startsWith(code), line);
      }
      process.kill(cleanup, 'SIGSTOP');
      let dataReply: Promise<string>;
      try {
        await first.send(`From: ${'x.'.repeat(51200)}@\r\nTo: <${RCPT}>\r\nSubject: long From\r\n\r\nbody\r\n.\r\n`);
        dataReply = first.reply(60000).then((r) => { order.push('data reply'); return r; });
        second = await RawSmtp.connect(inst.ports.smtp);
        order.push('greeting');
      } finally { process.kill(cleanup, 'SIGCONT'); }
      assert.match(second.greeting, /^220 /);
      const reply = await dataReply;
      assert.deepEqual(order, ['greeting', 'data reply']);
      assert.match(reply, /^250 /, 'the message is accepted');
      await second.command('QUIT');
    } finally {
      first.close();
      second?.close();
    }
  });

  it('gives the message dmarc=permerror, its From: too long to parse', async () => {
    const file = await waitFor('the delivered copy', () => inst.delivered(RCPT)[0], 20000);
    const text = fs.readFileSync(file, 'latin1');
    const ar = /^Authentication-Results: [^]*?(?=\r?\n\S)/m.exec(text)?.[0] ?? '';
    assert.match(ar, /dmarc=permerror \(From: header longer than 8192 bytes\)/, ar);
    assert.match(ar, /dkim=permerror \(not verified: From: header longer than 8192 bytes\)/, ar);
    assert.match(ar, /spf=/, 'SPF is still checked');
    const logged = await inst.waitForLog('the authentication line', (e) => e.msg === 'message authentication' && e.from === '<sender@remote.test>');
    assert.equal(logged.dmarc, 'permerror');
  });
});
