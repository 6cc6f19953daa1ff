#!/usr/bin/env node
// bench/rcpt-load.js: RCPT checks per second and the latency of each, the cost of the
// user lookup smtpd makes for every recipient (bench/tables.sh runs it against
// passwd-file:, sqlite: and pgsql: users).
//
//   node bench/rcpt-load.js --port P --from F --users N [--prefix rcpt] [--domain D]
//        [--host H] [--rcpts N] [--sessions S] [--per-mail K] [--timeout SECONDS]
//
// S parallel sessions, each: connect, EHLO, MAIL FROM, then RCPT TO after RCPT TO
// (PREFIXi@D, i cycling through 1..USERS, so every recipient exists), a RSET and a new
// MAIL every K recipients, QUIT; no message is sent. The sessions take RCPTs from one
// shared count, so N is the total. Bounded in count (N) and time (--timeout).
//
// Prints one JSON object (as mx-load.js: sent = RCPTs accepted) with rcpt_latency: p50,
// p90, p99, max and mean of the time from writing RCPT to reading its 250.
'use strict';
const { argsOrExit, newRun, runLoad, withSession, nowMs, latencySummary } = require('./load-lib');

const opts = argsOrExit('rcpt-load', process.argv.slice(2),
  { host: '127.0.0.1', rcpts: 20000, sessions: 20, 'per-mail': 100, timeout: 600, prefix: 'rcpt', domain: 'example.test', helo: 'client.remote.test' },
  { numeric: ['port', 'rcpts', 'sessions', 'per-mail', 'timeout', 'users'], required: ['port', 'from', 'users'] });
opts.messages = opts.rcpts; // runLoad's count
opts.size = 0;

const run = newRun(opts);
const rcptMs = [];

async function command(wire, line, code) {
  const r = await wire.command(line);
  if (r.code !== code) throw Object.assign(new Error(`${line.split(':')[0]}: ${r.text}`), { reply: r });
  return r;
}

function session(id) {
  return withSession(opts, run, id, async (wire) => {
    let inMail = 0;
    while (run.remaining > 0 && !run.timedOut) {
      if (inMail === 0) await command(wire, `MAIL FROM:<${opts.from}>`, 250);
      // the other sessions may have taken the last RCPTs while this one waited for MAIL's reply
      if (run.remaining <= 0 || run.timedOut) break;
      const n = opts.rcpts - run.remaining-- + 1;
      const t0 = nowMs();
      try {
        await command(wire, `RCPT TO:<${opts.prefix}${1 + ((n - 1) % opts.users)}@${opts.domain}>`, 250);
        rcptMs.push(nowMs() - t0);
        run.sent++;
        run.lastAccepted = Date.now();
      } catch (e) {
        run.failed++;
        run.noteError(`rcpt ${n}`, e);
        if (!e.reply) break; // the connection is gone
      }
      if (++inMail === opts['per-mail']) { await command(wire, 'RSET', 250); inMail = 0; }
    }
  });
}

runLoad(opts, run, session, (s) => s.destroy(), () => ({ rcpt_latency: latencySummary(rcptMs) }));
