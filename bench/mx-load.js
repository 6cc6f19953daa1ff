#!/usr/bin/env node
// bench/mx-load.js: an inbound MX load generator that times every message, since
// smtp-source does not: what a remote MTA delivering to us does, in plain SMTP.
//
//   node bench/mx-load.js --port P --from F --to T [--host H] [--messages N]
//        [--sessions S] [--size BYTES] [--timeout SECONDS] [--helo NAME]
//
// S parallel sessions, each: connect, EHLO, then message after message on that
// connection (MAIL, RCPT, DATA, the message, the final dot; as smtp-source -d, no
// pipelining), QUIT. The sessions take messages from one shared count, so N is the
// total (as smtp-source -m), and a session whose connection fails leaves its share to
// the others. Bounded in count (N) and in time (--timeout closes every connection).
//
// Prints one JSON object: sent, failed, first connect and last 250 (start_ms/end_ms,
// epoch ms), the first errors, the client's own CPU time, and data_to_250: p50, p90,
// p99, max and mean of the time from writing the final "." to reading the 250 (the
// server's whole commit: queue file written and fsynced). Exit 0 when all N were accepted.
'use strict';
const { argsOrExit, makeBody, mxMessage, sendOne, newRun, runLoad, withSession } = require('./load-lib');

const opts = argsOrExit('mx-load', process.argv.slice(2),
  { host: '127.0.0.1', messages: 5000, sessions: 20, size: 4096, timeout: 600, helo: 'client.remote.test' },
  { numeric: ['port', 'messages', 'sessions', 'size', 'timeout'], required: ['port', 'from', 'to'] });

const body = makeBody(opts.size);

const run = newRun(opts);

function session(id) {
  return withSession(opts, run, id, async (wire, socket) => {
    while (run.remaining > 0 && !run.timedOut) {
      const n = opts.messages - run.remaining-- + 1;
      try {
        run.latencies.push(await sendOne(wire, socket, opts.from, opts.to, mxMessage('mx-bench', n, opts.from, opts.to, body)));
        run.sent++;
        run.lastAccepted = Date.now();
      } catch (e) {
        run.failed++;
        run.noteError(`message ${n}`, e);
        if (!e.reply) break; // the connection is gone
        await wire.command('RSET');
      }
    }
  });
}

runLoad(opts, run, session, (s) => s.destroy());
