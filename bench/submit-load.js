#!/usr/bin/env node
// bench/submit-load.js: a submission load generator (what a busy mail client or a
// webmail does), since smtp-source speaks neither STARTTLS nor AUTH.
//
//   node bench/submit-load.js --port P --user U --from F --to T [--host H]
//        [--messages N] [--sessions S] [--size BYTES] [--timeout SECONDS] [--helo NAME]
//   (the password comes from $BENCH_PASSWORD, not from the command line)
//
// S parallel sessions, each: connect, EHLO, STARTTLS (required), EHLO, AUTH PLAIN,
// then messages one after another on that connection, RSET between them, QUIT. The
// sessions take messages from one shared count, so N is the total (as smtp-source -m)
// and a session that fails leaves its share to the others. Bounded in count (N) and
// in time (--timeout: every connection is closed and the run ends).
//
// Prints one JSON object: sent, failed, wall time from the first connect to the last
// 250 (start_ms/end_ms, epoch milliseconds), the TLS version and cipher negotiated,
// the first errors, the client's own CPU time, and the latency from the end of DATA to
// the 250 (p50/p90/p99/max over the accepted messages: from the moment nodemailer has
// taken the last byte of the message, after which it writes the final dot, to its
// reply). Exit status 0 when all N were accepted, 1 otherwise.
'use strict';
const os = require('node:os');
const { PassThrough } = require('node:stream');
const { argsOrExit, makeBody, rfcDate, nowMs, newRun, runLoad } = require('./load-lib');

// The repository's node_modules (found from bench/ by Node's usual lookup).
const SMTPConnection = require('nodemailer/lib/smtp-connection');

const opts = argsOrExit('submit-load', process.argv.slice(2),
  { host: '127.0.0.1', messages: 2000, sessions: 20, size: 4096, timeout: 600, helo: 'client.bench.test' },
  { numeric: ['port', 'messages', 'sessions', 'size', 'timeout'], required: ['port', 'user', 'from', 'to'] });
opts.pass = process.env.BENCH_PASSWORD;
if (!opts.pass) {
  console.error('submit-load: $BENCH_PASSWORD is not set');
  process.exit(2);
}

const body = makeBody(opts.size);
const host = os.hostname();

// Complete headers (Date, Message-ID) so neither server has to add any: the same work for both.
function message(n) {
  const headers = [
    `From: <${opts.from}>`,
    `To: <${opts.to}>`,
    `Subject: submission benchmark message ${n}`,
    `Date: ${rfcDate()}`,
    `Message-ID: <bench.${process.pid}.${n}@${host}>`,
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=us-ascii',
  ];
  return headers.join('\r\n') + '\r\n\r\n' + body;
}

const run = newRun(opts);
let tls = null;

const call = (fn) => new Promise((resolve, reject) => fn((err, v) => (err ? reject(err) : resolve(v))));

async function session(id) {
  if (run.remaining <= 0 || run.timedOut) return;
  const ms = opts.timeout * 1000;
  const conn = new SMTPConnection({
    host: opts.host, port: opts.port, name: opts.helo, secure: false, requireTLS: true,
    tls: { rejectUnauthorized: false, minVersion: 'TLSv1.2' },
    connectionTimeout: ms, greetingTimeout: ms, socketTimeout: ms, logger: false,
  });
  run.open.add(conn);
  // A connection that fails or closes ends whatever step the session is waiting for
  // (connect() in particular calls back only on success).
  const broken = new Promise((_, reject) => {
    conn.once('error', reject);
    conn.once('end', () => reject(new Error('connection closed')));
  });
  broken.catch(() => undefined);
  const step = (fn) => Promise.race([call(fn), broken]);
  try {
    if (run.firstConnect === null) run.firstConnect = Date.now();
    await step((cb) => conn.connect(() => cb()));
    if (!tls && conn._socket && conn._socket.getCipher) {
      tls = { version: conn._socket.getProtocol(), cipher: conn._socket.getCipher().name };
    }
    await step((cb) => conn.login({ user: opts.user, pass: opts.pass, method: 'PLAIN' }, cb));
    let first = true;
    while (run.remaining > 0 && !run.timedOut) {
      const n = opts.messages - run.remaining-- + 1;
      if (!first) await step((cb) => conn.reset(cb));
      first = false;
      try {
        // a stream, to know when nodemailer has taken the whole message (the end of DATA)
        const source = new PassThrough();
        let dataEnd = null;
        source.on('end', () => { dataEnd = nowMs(); });
        source.end(message(n));
        const info = await step((cb) => conn.send({ from: opts.from, to: [opts.to] }, source, cb));
        if (info.accepted && info.accepted.length) {
          run.sent++;
          run.lastAccepted = Date.now();
          if (dataEnd !== null) run.latencies.push(nowMs() - dataEnd);
        } else { run.failed++; run.noteError(`message ${n}`, info.response); }
      } catch (e) {
        run.failed++;
        run.noteError(`message ${n}`, e);
        if (!e.responseCode) break; // the connection is gone
      }
    }
    conn.quit();
  } catch (e) {
    run.noteError(`session ${id}`, e);
    conn.close();
  } finally {
    run.open.delete(conn);
  }
}

runLoad(opts, run, session, (c) => c.close(), () => ({ tls }));
