#!/usr/bin/env node
// bench/dns-server.js: the tests' authoritative DNS server (test/dist/dns-server.js,
// built by `make build`) on loopback, for the benchmarks to point Postern's
// dns_servers at.
//
//   node bench/dns-server.js HOST RECORDS-JSON
//
// RECORDS-JSON is an array of TestRecord ({name, type, value[, ttl]}). Prints the
// port it listens on (UDP and TCP) on one line once it answers, then serves until
// SIGTERM or SIGINT.
'use strict';
const path = require('node:path');

const [host, recordsJson] = process.argv.slice(2);
if (!host || !recordsJson) {
  console.error('usage: node bench/dns-server.js HOST RECORDS-JSON');
  process.exit(2);
}
const built = path.join(__dirname, '..', 'test', 'dist', 'dns-server.js');
let TestDnsServer;
try {
  ({ TestDnsServer } = require(built));
} catch (e) {
  console.error(`bench/dns-server.js: cannot load ${built} (run \`make build\` first): ${e.message}`);
  process.exit(1);
}

const server = new TestDnsServer({ host, records: JSON.parse(recordsJson) });
server.start().then(() => {
  console.log(server.port);
  const stop = () => server.close().then(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}, (e) => {
  console.error(`bench/dns-server.js: ${e.message}`);
  process.exit(1);
});
