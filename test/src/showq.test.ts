/**
 * showq: an ordinary user, who may not read the spool, still sees the queue
 * (mailq, sendmail -bp) through the public/showq socket, and the listing
 * equals the one root reads from the spool directly.
 */
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import { Instance, IS_ROOT, run, waitFor, ROOT, requireTool } from './harness.js';

describe('showq for users who cannot read the spool', () => {
  let inst: Instance;
  before(async () => {
    assert.ok(IS_ROOT, 'this test runs as root (CI does): it switches to the unprivileged user nobody');
    // a closed relayhost keeps the message deferred, and long back-offs keep it (and its reason) still while the
    // two listings are compared: a retry between them would change the delay reason
    inst = await Instance.create({ users: [{ address: 'ann@example.test' }],
      main: { relayhost: '[127.0.0.1]:9', minimal_backoff_time: '1h', maximal_backoff_time: '2h', queue_run_delay: '1h' } });
    await inst.start();
    const r = run(path.join(ROOT, 'bin', 'sendmail'), ['-C', inst.etc, 'someone@far.test'], { input: 'Subject: waits\n\nbody\n' });
    assert.equal(r.code, 0, r.stderr);
    await waitFor('a deferred message', () => inst.queued('deferred').length === 1, 20000);
  });
  after(async () => { await inst?.destroy(); });

  it('nobody gets the same listing through public/showq as root from the spool', () => {
    const setpriv = requireTool('setpriv');
    const asNobody = (args: string[]) => run(setpriv, ['--reuid=nobody', '--regid=nogroup', '--clear-groups', process.execPath, ...args]);
    const ls = run(setpriv, ['--reuid=nobody', '--regid=nogroup', '--clear-groups', 'ls', path.join(inst.spool, 'deferred')]);
    assert.notEqual(ls.code, 0, 'nobody cannot read the spool itself');
    const mine = inst.cli(['queue', 'list', '--json']).stdout;
    const theirs = asNobody([path.join(ROOT, 'bin', 'postern'), '-c', inst.etc, 'queue', 'list', '--json']);
    assert.equal(theirs.code, 0, theirs.stderr);
    assert.equal(theirs.stdout, mine);
    assert.match(mine, /"recipients":\[\{"address":"someone@far\.test","delay_reason":/);
    const mailq = asNobody([path.join(ROOT, 'bin', 'sendmail'), '-C', inst.etc, '-bp']);
    assert.equal(mailq.code, 0, mailq.stderr);
    assert.equal(mailq.stdout, inst.cli(['queue', 'list']).stdout);
  });
});
