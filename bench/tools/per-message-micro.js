#!/usr/bin/env node
// bench/tools/per-message-micro.js [ROOT]: CPU µs (user + system, thread pool included) of
// small per-message steps of cleanup and smtpd, each alone in a loop, against the build in
// ROOT (default: this checkout). Run it against a copy of an older commit for a before/after.
// Prints one JSON line.
'use strict';
const path = require('node:path');
const root = path.resolve(process.argv[2] ?? path.join(__dirname, '..', '..'));
const common = require(path.join(root, 'packages/common/dist/index.js'));
const { DkimKeyStore } = require(path.join(root, 'packages/cleanup/dist/dkim.js'));
const { queueSpaceShort } = require(path.join(root, 'packages/smtpd/dist/queue-space.js'));

const cpu = () => { const u = process.cpuUsage(); return u.user + u.system; };
async function measure(n, fn) {
  for (let i = 0; i < Math.ceil(n / 10); i++) await fn(); // warm up
  const t = cpu();
  for (let i = 0; i < n; i++) await fn();
  return +((cpu() - t) / n).toFixed(2);
}

const request = { type: 'message', envelope: { sender: 'a@example.test', recipients: [{ address: 'b@example.test' }],
  client: { address: '192.0.2.1', name: 'c.example.test', helo: 'c.example.test' }, protocol: 'ESMTP', tls: null } };
const config = common.MainConfig.parse('myhostname = mx.example.test\nmydomain = example.test\n' +
  'mydestination = $myhostname, localhost.$mydomain, $mydomain\nalias_maps = texthash:/nonexistent/aliases\n', '/etc/postern/main.cf');
const names = ['myhostname', 'myorigin', 'mydestination', 'smtpd_recipient_limit', 'header_size_limit',
  'message_size_limit', 'mynetworks', 'dkim_signing_table', 'virtual_alias_maps', 'alias_maps'];
const quiet = { warn() {}, info() {}, error() {} };
const store = new DkimKeyStore(quiet);

(async () => {
  console.log(JSON.stringify({
    root,
    // cleanup: smtpd's request checked against its schema (built per message before)
    request_schema_us: await measure(20000, () => common.validate(common.smtpdMessageRequest(1000), request)),
    // cleanup, submitted mail: the signing table looked up where there is none
    absent_signing_table_us: await measure(5000, () => store.keysFor('/nonexistent/dkim/signing.table', 'example.test', 'Q')),
    // smtpd at MAIL: the spool's free space
    queue_space_us: await measure(10000, () => queueSpaceShort(require('node:os').tmpdir(), 0, config, quiet)),
    // any service: 30 parameter reads
    config_30_gets_us: await measure(20000, () => { for (let k = 0; k < 3; k++) for (const n of names) config.get(n); }),
    // cleanup: its alias maps, built per message before
    alias_maps_us: await measure(20000, () => new common.AliasMaps(config)),
  }));
})();
