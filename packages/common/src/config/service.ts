/**
 * What every service program shares: its configuration (main.cf seen through
 * its master.cf -o overrides), its logger, and the conversation with master
 * over the fork IPC channel — listening handles in, reload and stop out.
 * A service whose master goes away exits: it never runs unsupervised.
 */
import * as net from 'node:net';
import { MainConfig } from './config.js';
import { Spool } from '../queue/spool.js';
import { createLogger, Logger } from '../util/log.js';

export interface ServiceContext {
  /** master.cf service name (e.g. `2525`, `cleanup`). */
  name: string;
  command: string;
  configDir: string;
  config: MainConfig;
  spool: Spool;
  log: Logger;
}

export interface RunningService {
  /**
   * A listening handle from master; may be called more than once (one per listener).
   * `info.clients` names who can reach a socket when a service has more than one (cleanup).
   */
  listen(handle: net.Server | object, info?: { clients?: string }): void;
  /** main.cf changed (SIGHUP to master): re-read what can change at run time. */
  reload?(config: MainConfig): void | Promise<void>;
  /** Stop accepting, let work in hand finish (or answer 421), then resolve. */
  stop(): Promise<void>;
}

export function loadServiceConfig(configDir: string, overridesJson: string | undefined): MainConfig {
  const base = MainConfig.load(configDir);
  const overrides = new Map<string, string>(Object.entries(JSON.parse(overridesJson || '{}')));
  return base.withOverrides(overrides);
}

export function runService(command: string, start: (ctx: ServiceContext) => Promise<RunningService>): void {
  const configDir = process.env.POSTERN_CONFIG || '/etc/postern';
  command = process.env.POSTERN_COMMAND || command; // lmtp is the smtp program under another name
  const name = process.env.POSTERN_SERVICE || command;
  process.title = `postern/${command}`;
  const log = createLogger(command === name ? command : `${command}[${name}]`);
  let config: MainConfig;
  try {
    config = loadServiceConfig(configDir, process.env.POSTERN_OVERRIDES);
  } catch (e) {
    log.fatal({ err: (e as Error).message }, 'cannot load configuration');
    process.exit(1);
  }
  const ctx: ServiceContext = { name, command, configDir, config, spool: new Spool(config.get('queue_directory')), log };
  let stopping = false;
  process.on('uncaughtException', (err) => {
    log.fatal({ err: err.stack || String(err) }, 'uncaught exception; exiting so master restarts this service');
    process.exit(70);
  });
  start(ctx).then((svc) => {
    const stop = async (why: string) => {
      if (stopping) return;
      stopping = true;
      log.info({ reason: why }, 'stopping');
      const force = setTimeout(() => process.exit(0), 15000);
      force.unref();
      await svc.stop().catch((e) => log.warn({ err: String(e) }, 'error while stopping'));
      process.exit(0);
    };
    process.on('message', (msg: any, handle: any) => {
      if (msg?.type === 'listen' && handle) {
        svc.listen(handle, typeof msg.clients === 'string' ? { clients: msg.clients } : undefined);
        // master counts the service as up only now: until listen() the socket refuses connections
        process.send?.({ type: 'listening' });
      } else if (msg?.type === 'reload') {
        try {
          ctx.config = loadServiceConfig(configDir, process.env.POSTERN_OVERRIDES);
          Promise.resolve(svc.reload?.(ctx.config)).catch((e) => log.error({ err: String(e) }, 'reload failed'));
          log.info('configuration reloaded');
        } catch (e) {
          log.error({ err: (e as Error).message }, 'reload failed; keeping the old configuration');
        }
      } else if (msg?.type === 'stop') void stop('master asked');
    });
    process.on('disconnect', () => void stop('master went away'));
    process.on('SIGTERM', () => void stop('SIGTERM'));
    process.on('SIGHUP', () => undefined); // reloads come from master, not from the terminal
    process.on('SIGINT', () => undefined); // ^C in a foreground run goes to master, which stops us in order
    process.send?.({ type: 'ready' });
  }, (err) => {
    log.fatal({ err: err?.stack || String(err) }, 'service failed to start');
    process.exit(1);
  });
}
