/**
 * metrics: Prometheus metrics (/metrics), the read-only status page (/) and
 * its JSON (/status.json), on metrics_listen. Runs as the queue owner, never
 * as root (master's root process serves nothing). Its counters come from the
 * log events master forwards over private/metrics (root-only), so they live
 * here and survive the restart of any other service. Queue gauges come from
 * directory listings (names only), services from master's services.json, the
 * DNS findings from `postern dns check`. See docs/metrics.md.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import { runService, ServiceContext, RunningService, metricsListenAddress, MainConfig } from '@postern/common';
import { Collector, feedReader } from './collector.js';
import { Gauge, CONTENT_TYPE } from './registry.js';
import { QueueScanner, GAUGE_QUEUES } from './queue-scan.js';
import { DnsChecker, cliMainPath } from './dns-findings.js';
import { statusPage, CONTENT_SECURITY_POLICY } from './page.js';

const START = Date.now();

interface ServiceRow { service: string; command: string; user: string; pid: number | null; running: boolean; uptime_seconds: number | null }

/** master's services.json (pid/ is root's, world-readable): who runs, since when. */
function readServices(file: string, now: number): { master: number | null; master_uptime_seconds: number | null; services: ServiceRow[] } {
  let st: any = {};
  try { st = JSON.parse(fs.readFileSync(file, 'utf8')); } catch { return { master: null, master_uptime_seconds: null, services: [] }; }
  const age = (iso: unknown) => (typeof iso === 'string' && !isNaN(Date.parse(iso)) ? Math.max(0, Math.round((now - Date.parse(iso)) / 1000)) : null);
  const services = (Array.isArray(st.services) ? st.services : []).map((s: any): ServiceRow => ({
    service: String(s.service), command: String(s.command), user: String(s.user),
    pid: typeof s.pid === 'number' ? s.pid : null, running: s.running === true, uptime_seconds: s.pid ? age(s.started) : null,
  }));
  return { master: typeof st.master === 'number' ? st.master : null, master_uptime_seconds: age(st.master_started), services };
}

async function start(ctx: ServiceContext): Promise<RunningService> {
  const { log } = ctx;
  const collector = new Collector();
  const scanner = new QueueScanner(ctx.spool);
  const dns = new DnsChecker(() => cliMainPath(ctx.config.get('daemon_directory')), ctx.configDir);
  const queueGauge = collector.registry.add(new Gauge('postern_queue_messages', 'Messages in each queue directory, from its listing at scrape time.'));
  const oldestGauge = collector.registry.add(new Gauge('postern_queue_oldest_message_age_seconds', 'Age of the oldest message in incoming, active, deferred and hold (from its queue id); 0 when they are empty.'));
  const uptimeGauge = collector.registry.add(new Gauge('postern_service_uptime_seconds', 'Seconds since master last started each service process (absent while it is down).'));
  const feeds = new Set<net.Socket>();
  const feedServers: net.Server[] = [];
  let http_: http.Server | null = null;
  let listening = '';

  async function status(): Promise<Record<string, unknown>> {
    const now = Date.now();
    const queue = await scanner.snapshot();
    const svc = readServices(ctx.spool.statusFile(), now);
    return {
      generated_at: new Date(now).toISOString(), hostname: ctx.config.get('myhostname'),
      metrics_uptime_seconds: Math.round((now - START) / 1000),
      queue, totals: collector.totals(), flow: collector.lastHour(), dns: dns.status, ...svc,
    };
  }

  async function metricsText(): Promise<string> {
    const q = await scanner.snapshot();
    queueGauge.set(GAUGE_QUEUES.map((name) => ({ labels: { queue: name }, value: q.counts[name] })));
    oldestGauge.set([{ labels: {}, value: q.oldest_age_seconds }]);
    const svc = readServices(ctx.spool.statusFile(), Date.now());
    uptimeGauge.set(svc.services.filter((s) => s.uptime_seconds !== null)
      .map((s) => ({ labels: { service: s.service, command: s.command }, value: s.uptime_seconds! })));
    return collector.registry.render();
  }

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const send = (code: number, type: string, body: string, extra: Record<string, string> = {}) => {
      res.writeHead(code, { 'Content-Type': type, 'Cache-Control': 'no-store', 'X-Content-Type-Options': 'nosniff',
        'Content-Length': Buffer.byteLength(body), ...extra });
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    // read only: nothing here changes anything
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(405, 'text/plain; charset=utf-8', 'method not allowed\n', { Allow: 'GET, HEAD' });
    const url = (req.url ?? '/').split('?')[0];
    if (url === '/metrics') return send(200, CONTENT_TYPE, await metricsText());
    if (url === '/status.json') return send(200, 'application/json; charset=utf-8', JSON.stringify(await status()) + '\n');
    if (url === '/') return send(200, 'text/html; charset=utf-8', statusPage(await status()), { 'Content-Security-Policy': CONTENT_SECURITY_POLICY });
    return send(404, 'text/plain; charset=utf-8', 'not found\n');
  }

  /** Open (or move, or close) the HTTP listener as metrics_listen says. */
  async function listenHttp(config: MainConfig): Promise<void> {
    const addr = metricsListenAddress(config);
    const want = addr ? `${addr.host}:${addr.port}` : '';
    if (want === listening) return;
    if (http_) { const old = http_; http_ = null; await new Promise<void>((r) => old.close(() => r())); old.closeAllConnections(); }
    listening = '';
    if (!addr) return;
    const server = http.createServer((req, res) => {
      handle(req, res).catch((e) => {
        log.error({ err: (e as Error).message, url: req.url }, 'metrics request failed');
        if (!res.headersSent) res.writeHead(500, { 'Content-Type': 'text/plain; charset=utf-8' });
        res.end('internal error\n');
      });
    });
    server.headersTimeout = 10_000;
    server.requestTimeout = 30_000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(addr.port, addr.host.replace(/^\[|\]$/g, ''), () => { server.off('error', reject); resolve(); });
    });
    server.on('error', (e) => log.error({ err: e.message }, 'metrics listener error'));
    http_ = server;
    listening = want;
    log.info({ metrics_listen: want }, `metrics and status page on http://${want}/`);
  }

  await listenHttp(ctx.config);
  dns.start();

  return {
    listen(h) {
      // master's feed: only master (root) can connect to private/metrics
      const server = net.createServer((conn) => {
        feeds.add(conn);
        conn.on('error', () => undefined);
        conn.on('close', () => feeds.delete(conn));
        conn.on('data', feedReader((rec) => collector.record(rec), () => collector.events.inc({ outcome: 'bad' })));
      });
      server.listen(h as any);
      feedServers.push(server);
    },
    async reload(config) {
      await listenHttp(config).catch((e) => log.error({ err: (e as Error).message }, 'cannot listen on metrics_listen'));
      void dns.run();
    },
    async stop() {
      dns.stop();
      for (const s of feedServers) s.close();
      for (const c of feeds) c.destroy();
      if (http_) { http_.close(); http_.closeAllConnections(); }
    },
  };
}

runService('metrics', start);
