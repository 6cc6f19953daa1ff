#!/usr/bin/env node
// bench/hold-load.js: many idle SMTP sessions held open at once, while a probe checks
// that new sessions are still served promptly (bench/concurrency.sh).
//
//   node bench/hold-load.js --port P --sessions N [--host H] [--parallel K]
//        [--hold SECONDS] [--connect-timeout SECONDS] [--timeout SECONDS]
//        [--helo NAME] [--root PID] [--from F --to T [--size BYTES]]
//
// Opens N sessions, at most K connection attempts in flight at a time (default 200):
// each connects, reads the greeting, sends EHLO, reads the 250, and then holds the
// connection without a word. A session that gets no greeting within --connect-timeout
// (default 10) is given up. Once every session has been tried, holds them --hold
// seconds (default 30), then closes them. All along, once a second, a probe opens one
// more session and times connect to 220 greeting (then, with --to, sends one message of
// --size body bytes from --from and times the end of DATA to the 250; then QUIT):
// whether new clients are still served. With --root, the total memory (RSS and PSS) of the process tree below
// PID is read once a second; the peak is reported. Bounded by --timeout (default 600).
//
// Prints one JSON object: how many sessions were held (EHLO answered), refused (a
// 4xx/5xx greeting or EHLO reply: by reply), failed (by error), closed by the server
// while held; time to open them all; the probes' greeting latency (p50/p99/max) and
// failures; peak memory. Exit 0 when the run completed (whatever the server did).
'use strict';
const net = require('node:net');
const { argsOrExit, makeBody, mxMessage, sendOne, greetAndEhlo, latencySummary, nowMs, treeMemory, SmtpWire } = require('./load-lib');

const opts = argsOrExit('hold-load', process.argv.slice(2),
  { host: '127.0.0.1', parallel: 200, hold: 30, 'connect-timeout': 10, timeout: 600, helo: 'client.remote.test',
    root: undefined, from: undefined, to: undefined, size: 4096 },
  { numeric: ['port', 'sessions', 'parallel', 'hold', 'connect-timeout', 'timeout', 'root', 'size'], required: ['port', 'sessions'] });
const body = makeBody(opts.size);

const held = new Set(); // sockets of sessions past EHLO
const refused = new Map(); // reply text (code and enhanced code) -> count
const failures = new Map(); // error -> count
let closedWhileHeld = 0;
let holding = true;
const greetingMs = []; // of the held sessions, connect to greeting
const probeMs = [];
const probeHoldMs = []; // the probes that started once every session was open: the figure of a loaded server
const probeDataMs = []; // the probes' messages: end of DATA to 250
let probeMessages = 0;
let probeFailures = 0;
const probeErrors = new Map();
let peak = null;
let memorySamples = 0;

const bump = (m, k) => m.set(k, (m.get(k) || 0) + 1);

/** Connect, greeting, EHLO within the connect timeout: resolves {socket, wire, greetingMs}. */
function openSession() {
  const t0 = nowMs();
  const socket = net.connect({ host: opts.host, port: opts.port });
  const wire = new SmtpWire(socket);
  const limit = new Promise((_, reject) => {
    const t = setTimeout(() => reject(new Error(`no greeting and EHLO reply within ${opts['connect-timeout']} s`)), opts['connect-timeout'] * 1000);
    socket.once('close', () => clearTimeout(t));
    wire.timer = t;
  });
  limit.catch(() => undefined);
  const steps = (async () => {
    const greeted = await greetAndEhlo(wire, opts.helo);
    clearTimeout(wire.timer);
    return { socket, wire, greetingMs: greeted - t0 };
  })();
  return Promise.race([steps, limit]).catch((e) => {
    socket.destroy();
    throw e;
  });
}

function classify(e) {
  if (e.reply) bump(refused, e.reply.text.slice(0, 60));
  else bump(failures, e.code || e.message);
}

async function opener() {
  while (next < opts.sessions && !stopped) {
    next++;
    try {
      const s = await openSession();
      greetingMs.push(s.greetingMs);
      held.add(s.socket);
      s.socket.once('close', () => { if (held.delete(s.socket) && holding) closedWhileHeld++; });
    } catch (e) {
      classify(e);
    }
  }
}

async function probe() {
  let s = null;
  try {
    const duringHold = openSeconds !== null;
    s = await openSession();
    probeMs.push(s.greetingMs);
    if (duringHold) probeHoldMs.push(s.greetingMs);
    if (opts.to) {
      probeMessages++;
      probeDataMs.push(await sendOne(s.wire, s.socket, opts.from || '', opts.to, mxMessage('hold-probe', probeMessages, opts.from || '', opts.to, body)));
    }
    const done = s.socket;
    s.wire.command('QUIT').catch(() => undefined).finally(() => done.destroy());
  } catch (e) {
    if (s) s.socket.destroy();
    probeFailures++;
    bump(probeErrors, e.reply ? e.reply.text.slice(0, 60) : e.code || e.message);
  }
}

function sampleMemory() {
  if (!opts.root) return;
  const m = treeMemory(opts.root);
  memorySamples++;
  if (!peak || m.pss_mib > peak.pss_mib) peak = m;
}

let next = 0;
let stopped = false;
const start = Date.now();
let openSeconds = null;

const probeTimer = setInterval(() => { void probe(); sampleMemory(); }, 1000);
const deadline = setTimeout(() => finish('time limit reached'), opts.timeout * 1000);

async function main() {
  await Promise.all(Array.from({ length: Math.min(opts.parallel, opts.sessions) }, opener));
  openSeconds = (Date.now() - start) / 1000;
  const heldAfterOpening = held.size;
  await new Promise((resolve) => setTimeout(resolve, opts.hold * 1000));
  finish(null, heldAfterOpening);
}

function finish(why, heldAfterOpening) {
  if (stopped) return;
  stopped = true;
  holding = false;
  clearInterval(probeTimer);
  clearTimeout(deadline);
  sampleMemory();
  const heldAtEnd = held.size;
  for (const s of held) s.destroy();
  const obj = (m) => Object.fromEntries([...m].sort((a, b) => b[1] - a[1]).slice(0, 10));
  console.log(JSON.stringify({
    requested: opts.sessions, parallel_connects: opts.parallel, hold_seconds: opts.hold,
    held_after_opening: heldAfterOpening ?? held.size, held_at_end: heldAtEnd, closed_by_server_while_held: closedWhileHeld,
    refused: [...refused.values()].reduce((a, b) => a + b, 0), refused_by_reply: obj(refused),
    failed: [...failures.values()].reduce((a, b) => a + b, 0), failed_by_error: obj(failures),
    open_seconds: openSeconds, greeting_of_held: latencySummary(greetingMs),
    probe_greeting: latencySummary(probeMs), probe_greeting_during_hold: latencySummary(probeHoldMs), probe_data_to_250: latencySummary(probeDataMs), probe_failures: probeFailures, probe_errors: obj(probeErrors),
    peak_memory: peak, memory_samples: memorySamples, stopped_early: why,
  }));
  // give the QUITs and closes a moment, bounded
  setTimeout(() => process.exit(0), 500);
}

main().catch((e) => { console.error(`hold-load: ${e.stack || e}`); finish(String(e)); });
