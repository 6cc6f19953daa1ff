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
// and the first errors. Exit status 0 when all N were accepted, 1 otherwise.
'use strict';
const os = require('node:os');

// The repository's node_modules (found from bench/ by Node's usual lookup).
const SMTPConnection = require('nodemailer/lib/smtp-connection');

function parseArgs(argv) {
  const o = { host: '127.0.0.1', messages: 2000, sessions: 20, size: 4096, timeout: 600, helo: 'client.bench.test' };
  const numeric = new Set(['port', 'messages', 'sessions', 'size', 'timeout']);
  for (let i = 0; i < argv.length; i += 2) {
    const name = (argv[i] || '').replace(/^--/, '');
    const value = argv[i + 1];
    if (!['host', 'port', 'user', 'from', 'to', 'messages', 'sessions', 'size', 'timeout', 'helo'].includes(name) || value === undefined) {
      throw new Error(`bad argument ${argv[i]}${value === undefined ? ' (no value)' : ''}`);
    }
    if (numeric.has(name) && !/^[1-9][0-9]*$/.test(value)) throw new Error(`--${name} must be a positive whole number, not "${value}"`);
    o[name] = numeric.has(name) ? parseInt(value, 10) : value;
  }
  for (const k of ['port', 'user', 'from', 'to']) if (o[k] === undefined) throw new Error(`--${k} is required`);
  o.pass = process.env.BENCH_PASSWORD;
  if (!o.pass) throw new Error('$BENCH_PASSWORD is not set');
  return o;
}

let opts;
try {
  opts = parseArgs(process.argv.slice(2));
} catch (e) {
  console.error(`submit-load: ${e.message}`);
  process.exit(2);
}

// The body: SIZE bytes of 78-character lines (CRLF included), as smtp-source -l makes.
const line = 'X'.repeat(76) + '\r\n';
let body = line.repeat(Math.floor(opts.size / line.length));
const rest = opts.size - body.length;
if (rest > 0) body += rest > 2 ? 'X'.repeat(rest - 2) + '\r\n' : '\r\n'.slice(0, rest);
const host = os.hostname();

// Complete headers (Date, Message-ID) so neither server has to add any: the same work for both.
function message(n) {
  const headers = [
    `From: <${opts.from}>`,
    `To: <${opts.to}>`,
    `Subject: submission benchmark message ${n}`,
    `Date: ${new Date().toUTCString().replace(/GMT$/, '+0000')}`,
    `Message-ID: <bench.${process.pid}.${n}@${host}>`,
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=us-ascii',
  ];
  return headers.join('\r\n') + '\r\n\r\n' + body;
}

let remaining = opts.messages;
let sent = 0;
let failed = 0;
const errors = [];
let tls = null;
let firstConnect = null;
let lastAccepted = null;
const open = new Set();
let timedOut = false;

function noteError(where, e) {
  if (errors.length < 5) errors.push(`${where}: ${String((e && (e.response || e.message)) || e).replace(/\s+/g, ' ')}`);
}

const call = (fn) => new Promise((resolve, reject) => fn((err, v) => (err ? reject(err) : resolve(v))));
// Exit non-zero whatever way the process ends, unless report() says all went well.
process.exitCode = 1;

async function session(id) {
  if (remaining <= 0 || timedOut) return;
  const ms = opts.timeout * 1000;
  const conn = new SMTPConnection({
    host: opts.host, port: opts.port, name: opts.helo, secure: false, requireTLS: true,
    tls: { rejectUnauthorized: false, minVersion: 'TLSv1.2' },
    connectionTimeout: ms, greetingTimeout: ms, socketTimeout: ms, logger: false,
  });
  open.add(conn);
  // A connection that fails or closes ends whatever step the session is waiting for
  // (connect() in particular calls back only on success).
  const broken = new Promise((_, reject) => {
    conn.once('error', reject);
    conn.once('end', () => reject(new Error('connection closed')));
  });
  broken.catch(() => undefined);
  const step = (fn) => Promise.race([call(fn), broken]);
  try {
    if (firstConnect === null) firstConnect = Date.now();
    await step((cb) => conn.connect(() => cb()));
    if (!tls && conn._socket && conn._socket.getCipher) {
      tls = { version: conn._socket.getProtocol(), cipher: conn._socket.getCipher().name };
    }
    await step((cb) => conn.login({ user: opts.user, pass: opts.pass, method: 'PLAIN' }, cb));
    let first = true;
    while (remaining > 0 && !timedOut) {
      const n = opts.messages - remaining-- + 1;
      if (!first) await step((cb) => conn.reset(cb));
      first = false;
      try {
        const info = await step((cb) => conn.send({ from: opts.from, to: [opts.to] }, message(n), cb));
        if (info.accepted && info.accepted.length) { sent++; lastAccepted = Date.now(); } else { failed++; noteError(`message ${n}`, info.response); }
      } catch (e) {
        failed++;
        noteError(`message ${n}`, e);
        if (!e.responseCode) break; // the connection is gone
      }
    }
    conn.quit();
  } catch (e) {
    noteError(`session ${id}`, e);
    conn.close();
  } finally {
    open.delete(conn);
  }
}

const start = Date.now();
let reported = false;
function report() {
  if (reported) return;
  reported = true;
  clearTimeout(timer);
  const t0 = firstConnect ?? start;
  const t1 = lastAccepted ?? Date.now();
  console.log(JSON.stringify({
    requested: opts.messages, sent, failed, sessions: opts.sessions, body_bytes: opts.size,
    start_ms: t0, end_ms: t1, seconds: (t1 - t0) / 1000, timed_out: timedOut, tls, errors,
  }));
  process.exit(sent === opts.messages ? 0 : 1);
}
const timer = setTimeout(() => {
  timedOut = true;
  noteError('run', `time limit of ${opts.timeout} s reached`);
  for (const c of open) c.close();
  setTimeout(report, 5000); // should the sessions not wind up by themselves
}, opts.timeout * 1000);

Promise.all(Array.from({ length: opts.sessions }, (_, i) => session(i + 1))).then(report);
