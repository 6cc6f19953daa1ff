// Group commit of directory fsyncs (common/util/group-commit.ts): a request is only
// ever satisfied by a flush that started after it was made.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { GroupCommit, DirectorySync, syncDirectory } from '../../packages/common/dist/index.js';
import { tempDir, waitFor } from './harness.js';

/** A flush we finish by hand, with the moments (an event counter) it started and ended. */
interface Flush { start: number; end?: number; finish(): void; fail(e: Error): void }

function controlledCommit() {
  let clock = 0;
  const flushes: Flush[] = [];
  const commit = new GroupCommit(() => new Promise<void>((resolve, reject) => {
    const f: Flush = {
      start: ++clock,
      finish: () => { f.end = ++clock; resolve(); },
      fail: (e) => { f.end = ++clock; reject(e); },
    };
    flushes.push(f);
  }));
  return { commit, flushes, tick: () => ++clock };
}

const settle = () => new Promise((r) => setImmediate(r));

test('GroupCommit: requests made while a flush runs wait for the next one, which serves them all', async () => {
  const { commit, flushes } = controlledCommit();
  const done: string[] = [];
  const a = commit.request().then(() => done.push('a'));
  assert.equal(flushes.length, 1, 'the first request starts a flush at once');
  const b = commit.request().then(() => done.push('b'));
  const c = commit.request().then(() => done.push('c'));
  assert.equal(flushes.length, 1, 'b and c do not start flushes of their own');
  await settle();
  assert.deepEqual(done, [], 'nothing resolves before a flush ends');
  flushes[0].finish();
  await a;
  await settle();
  assert.deepEqual(done, ['a'], 'b and c asked after the first flush had started: it does not count for them');
  assert.equal(flushes.length, 2, 'one second flush for both');
  flushes[1].finish();
  await Promise.all([b, c]);
  assert.deepEqual(done.sort(), ['a', 'b', 'c']);
  assert.equal(commit.idle, true);
});

test('GroupCommit: under a random schedule every request is satisfied by a flush that started after it and ended before it resolved', async () => {
  const { commit, flushes, tick } = controlledCommit();
  // a deterministic pseudo-random sequence (no flaky seeds)
  let seed = 12345;
  const rand = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  const requests: { asked: number; resolved?: number }[] = [];
  const pending: Promise<void>[] = [];
  for (let step = 0; step < 400; step++) {
    if (rand() < 0.6) {
      const r: { asked: number; resolved?: number } = { asked: tick() };
      requests.push(r);
      pending.push(commit.request().then(() => { r.resolved = tick(); }));
    } else {
      const running = flushes.find((f) => f.end === undefined);
      running?.finish();
    }
    await settle();
  }
  for (let i = 0; i < 1000 && !commit.idle; i++) { flushes.find((f) => f.end === undefined)?.finish(); await settle(); }
  await Promise.all(pending);
  assert.ok(requests.length > 100 && flushes.length > 10 && flushes.length < requests.length, `requests ${requests.length}, flushes ${flushes.length}: coalesced`);
  for (const r of requests) {
    const covering = flushes.find((f) => f.start > r.asked && f.end !== undefined && f.end < r.resolved!);
    assert.ok(covering, `request asked at ${r.asked}, resolved at ${r.resolved}: no flush started after it and ended before`);
  }
  assert.ok(flushes.every((f, i) => i === 0 || f.start > flushes[i - 1].end!), 'one flush at a time');
});

test('GroupCommit: a failed flush rejects the requests it served; later requests get a new flush', async () => {
  const { commit, flushes } = controlledCommit();
  const a = commit.request();
  const b = commit.request(); // waits for the second flush
  flushes[0].fail(Object.assign(new Error('EIO'), { code: 'EIO' }));
  await assert.rejects(a, /EIO/);
  await settle();
  flushes[1].finish();
  await b;
  const c = commit.request();
  assert.equal(flushes.length, 3);
  flushes[2].finish();
  await c;
});

function openDescriptorsOn(dir: string): number {
  let n = 0;
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    try { if (fs.readlinkSync(`/proc/self/fd/${fd}`) === dir) n++; } catch { /* closed meanwhile */ }
  }
  return n;
}

test('DirectorySync: fsyncs a real directory; a kept descriptor is closed once idle', async () => {
  const dir = fs.realpathSync(tempDir('dirsync'));
  try {
    const ds = new DirectorySync(dir, { keepOpenMs: 50 });
    await Promise.all([ds.sync(), ds.sync(), ds.sync()]);
    assert.equal(openDescriptorsOn(dir), 1, 'kept open between fsyncs');
    await waitFor('the idle descriptor to be closed', () => openDescriptorsOn(dir) === 0, 5000, 20);
    await ds.sync(); // reopens
    const once = new DirectorySync(dir);
    await once.sync();
    assert.equal(openDescriptorsOn(dir), 1, 'only the kept one: keepOpenMs 0 closes after each fsync');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('syncDirectory: a missing directory is an error naming it; the same path works once it exists', async () => {
  const root = tempDir('dirsync');
  const dir = path.join(root, 'later');
  try {
    await assert.rejects(syncDirectory(dir), (e: NodeJS.ErrnoException) => {
      assert.equal(e.code, 'ENOENT');
      assert.match(e.message, /fsync of directory .*later failed/);
      return true;
    });
    fs.mkdirSync(dir);
    await Promise.all([syncDirectory(dir), syncDirectory(`${dir}/`), syncDirectory(dir)]);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});
