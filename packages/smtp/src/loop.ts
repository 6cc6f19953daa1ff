/**
 * "mail for DOMAIN loops back to myself" (Postfix's smtp_find_self and
 * smtp_truncate_self): an MX host that is this very instance is not a place to
 * deliver to. An address counts as ours only with the port: it must be an
 * address AND port one of our smtpd listeners (master.cf) accepts on, or an
 * address in proxy_interfaces (a NAT or proxy in front of us); a listener on
 * a wildcard address (`[::]:25`, `25`) takes every local interface address.
 * Several instances on one host (127.0.0.1 with different ports) are different
 * mail systems.
 */
import * as net from 'node:net';
import * as os from 'node:os';
import { MainConfig, MailHost, loadMasterCf, parseListenAddress } from '@postern/common';

export interface Listener { host?: string; port: number }

/** Canonical text of an IP address (IPv4-mapped IPv6 as IPv4), or null for anything else. */
function canonical(address: string): string | null {
  const a = address.replace(/^\[|\]$/g, '').replace(/%.*$/, '');
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(a);
  if (mapped) return mapped[1];
  if (net.isIPv4(a)) return a;
  return net.isIPv6(a) ? a.toLowerCase() : null;
}

function sameAddress(a: string, b: string): boolean {
  const x = canonical(a);
  const y = canonical(b);
  if (!x || !y) return false;
  if (net.isIPv4(x) || net.isIPv4(y)) return x === y;
  // IPv6 has many spellings: BlockList compares the addresses, not the text
  const list = new net.BlockList();
  list.addAddress(x, 'ipv6');
  return list.check(y, 'ipv6');
}

const WILDCARD = new Set(['', '*', '0.0.0.0', '::']);

/**
 * The test for "this address and port is us": `listeners` from master.cf,
 * `proxy` (proxy_interfaces: ours on any port), `local` (this host's interface
 * addresses, for wildcard listeners).
 */
export function selfTest(listeners: Listener[], proxy: string[], local: string[]): (address: string, port: number) => boolean {
  return (address, port) => {
    if (proxy.some((p) => sameAddress(p, address))) return true;
    return listeners.some((l) => l.port === port
      && (WILDCARD.has(l.host ?? '') ? local.some((x) => sameAddress(x, address)) : sameAddress(l.host!, address)));
  };
}

/**
 * Postfix's rule: if one of the MX hosts is us, only hosts with a better
 * (lower) preference than ours remain; none left means the mail would loop
 * back to us (null).
 */
export function pruneSelf(hosts: MailHost[], port: number, isSelf: (address: string, port: number) => boolean): MailHost[] | null {
  const ours = hosts.filter((h) => h.addresses.some((a) => isSelf(a, port)));
  if (!ours.length) return hosts;
  const best = Math.min(...ours.map((h) => h.priority));
  const left = hosts.filter((h) => h.priority < best);
  return left.length ? left : null;
}

const cache = new WeakMap<MainConfig, (address: string, port: number) => boolean>();

/** This instance's test, read from master.cf and main.cf once per configuration (a reload makes a new one). */
function ownAddresses(config: MainConfig): (address: string, port: number) => boolean {
  let test = cache.get(config);
  if (test) return test;
  let listeners: Listener[] = [];
  try {
    listeners = loadMasterCf(config.get('config_directory'))
      .filter((e) => e.type === 'inet' && e.command === 'smtpd')
      .map((e) => parseListenAddress(e.service))
      .filter((l): l is Listener => !!l);
  } catch {
    // master checked master.cf at start; unreadable now, we know no listener of ours
  }
  const local = ['127.0.0.1', '::1', ...Object.values(os.networkInterfaces()).flatMap((l) => (l ?? []).map((i) => i.address))];
  test = selfTest(listeners, config.list('proxy_interfaces'), local);
  cache.set(config, test);
  return test;
}

/**
 * The MX hosts of `domain` that are not us (remote.ts calls this on every MX
 * list), or the bounce when we are the best of them: 5.4.6, as Postfix.
 */
export function withoutSelf(domain: string, hosts: MailHost[], port: number, config: MainConfig):
  { hosts: MailHost[] } | { bounce: { dsn: string; reason: string } } {
  const left = pruneSelf(hosts, port, ownAddresses(config));
  return left ? { hosts: left } : { bounce: { dsn: '5.4.6', reason: `mail for ${domain} loops back to myself` } };
}
