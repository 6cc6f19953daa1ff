/**
 * Password checks off smtpd's event loop: a SHA-512-crypt check costs
 * milliseconds of CPU (here, with a million rounds, seconds), and run in line
 * it stopped every other session of the process until it ended. The checks
 * now run in a worker thread (common/tables/password-check.ts): another
 * session is answered while one AUTH is being checked, the slow check still
 * gives the right answer, and what waits for the worker is bounded.
 */
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { PasswordChecker, PasswordCheckUnavailable, hashPassword, sha512Crypt } from '@postern/common';
import { Instance, RawSmtp } from './harness.js';

const SLOW = 'slow@example.test';
const PASS = 'correct horse';
const plain = (user: string, pass: string) => Buffer.from(`\0${user}\0${pass}`).toString('base64');

describe('PasswordChecker', () => {
  it('answers right and wrong passwords from its worker, and refuses at once beyond its waiting bound', async () => {
    const checker = new PasswordChecker(2);
    try {
      const stored = hashPassword(PASS);
      assert.equal(await checker.check(PASS, stored), true);
      assert.equal(await checker.check('wrong', stored), false);
      assert.equal(await checker.check(PASS, '{PLAIN}correct horse'), true);
      const three = await Promise.allSettled([checker.check(PASS, stored), checker.check(PASS, stored), checker.check(PASS, stored)]);
      assert.deepEqual(three.map((r) => r.status), ['fulfilled', 'fulfilled', 'rejected']);
      assert.ok((three[2] as PromiseRejectedResult).reason instanceof PasswordCheckUnavailable);
      // closed while a check waits: that check fails as unavailable, and the next one starts a new worker
      const waiting = checker.check(PASS, stored);
      await checker.close();
      await assert.rejects(waiting, PasswordCheckUnavailable);
      assert.equal(await checker.check(PASS, stored), true);
    } finally {
      await checker.close();
    }
  });
});

describe('smtpd checks passwords off its event loop', () => {
  let inst: Instance;
  before(async () => {
    inst = await Instance.create({ users: [{ address: SLOW, password: PASS }, { address: 'bob@example.test' }] });
    // a million rounds: seconds of CPU for one check (crypt(3) and Dovecot accept rounds= up to 999,999,999)
    const users = path.join(inst.etc, 'users');
    const slowHash = `{SHA512-CRYPT}${sha512Crypt(PASS, undefined, 1_000_000)}`;
    const text = fs.readFileSync(users, 'utf8').split('\n')
      .map((l) => (l.startsWith(`${SLOW}:`) ? l.replace(/^([^:]*):[^:]*:/, `$1:${slowHash}:`) : l)).join('\n');
    assert.ok(text.includes(slowHash), 'the slow hash is in the users file');
    fs.writeFileSync(users, text);
    await inst.start();
  });
  after(async () => { await inst.destroy(); });

  it('another session is answered while one AUTH is checked, and the slow AUTH still succeeds', async () => {
    const a = await RawSmtp.connectTls(inst.ports.submissions);
    const b = await RawSmtp.connectTls(inst.ports.submissions);
    try {
      assert.match(await a.command('EHLO a.example.test'), /^250/);
      assert.match(await b.command('EHLO b.example.test'), /^250/);
      const order: string[] = [];
      await a.send(`AUTH PLAIN ${plain(SLOW, PASS)}\r\n`);
      const auth = a.reply(60000).then((r) => { order.push('auth'); return r; });
      await sleep(500); // the AUTH has reached smtpd and its check is under way
      const noop = await b.command('NOOP');
      order.push('noop');
      assert.match(noop, /^250/);
      const authReply = await auth;
      assert.match(authReply, /^235 2\.7\.0/);
      assert.deepEqual(order, ['noop', 'auth'], 'the NOOP of the other session was answered before the AUTH check ended');
    } finally {
      a.close();
      b.close();
    }
  });
});
