/**
 * Which delivery agent handles which recipient: transport_maps first (Postfix's
 * transport(5): `smtp:[host]:port`, `lmtp:unix:…`, `local`, looked up as the
 * address, the domain, then `.parent` domains); else local domains go to the
 * lmtp client, to the LMTP server their transport names (`mailbox_transport`
 * for mydestination, `virtual_transport` for virtual_mailbox_domains: `local`
 * is Postern's own mailbox service, `lmtp:unix:…`/`lmtp:inet:…` another server
 * such as Dovecot); everything else to smtp, one group per destination domain
 * (or one for all when a relayhost is set). Both the domain lists and
 * transport_maps may be database tables: a lookup that fails defers the
 * recipient (4.3.0), it never bounces.
 */
import { MainConfig, splitAddress, transportNexthop, parseLmtpNexthop, LocalDomains, openTable, Table, LOCAL_QMGR } from '@postern/common';

export interface DeliveryGroup {
  /** Socket name under private/ of the delivery agent (smtp, lmtp, or local.qmgr for Postern's own mailboxes). */
  transport: string;
  /** For lmtp: `local`, `unix:PATH` or `inet:HOST:PORT`; for smtp: the destination domain, or `[host]:port` / `host` from transport_maps. */
  nexthop: string;
  concurrency: number;
  recipients: { index: number; address: string }[];
}

export interface DeliveryPlan {
  groups: DeliveryGroup[];
  /** Recipients whose route could not be looked up now: deferred with this reason. */
  deferred: { index: number; address: string; dsn: string; reason: string }[];
}

type Route = { transport: 'lmtp' | 'smtp' | typeof LOCAL_QMGR; nexthop: string; limit: string };

/** An LMTP next hop: `local` is Postern's mailbox service, asked directly (no LMTP client in between). */
function lmtpRoute(nexthop: string): Route {
  return nexthop === 'local' ? { transport: LOCAL_QMGR, nexthop, limit: 'local_destination_concurrency_limit' }
    : { transport: 'lmtp', nexthop, limit: 'lmtp_destination_concurrency_limit' };
}

/** A transport_maps value as a route, or a string saying what is wrong with it. */
export function parseTransportValue(value: string, domain: string): Route | string {
  const v = value.trim();
  const i = v.indexOf(':');
  const name = i < 0 ? v : v.slice(0, i);
  const nexthop = i < 0 ? '' : v.slice(i + 1);
  if (name === 'local') return lmtpRoute('local');
  if (name === 'lmtp') {
    try { parseLmtpNexthop(nexthop); } catch (e) { return (e as Error).message; }
    return lmtpRoute(nexthop);
  }
  if (name === 'smtp' || name === 'relay' || name === '') {
    if (nexthop && !/^(?:\[[^\]\s]+\]|[A-Za-z0-9.-]+)(?::\d{1,5})?$/.test(nexthop)) return `"${v}": "${nexthop}" is not host, [host] or [host]:port`;
    return { transport: 'smtp', nexthop: nexthop || domain, limit: 'default_destination_concurrency_limit' };
  }
  return `"${v}": unknown transport "${name}" (smtp, relay, lmtp, local)`;
}

/** The transport_maps entry for an address: the address, its domain, then `.parent` domains, as Postfix. */
async function transportEntry(tables: Table[], address: string, domain: string): Promise<string | undefined> {
  const keys = [address.toLowerCase(), domain];
  const labels = domain.split('.');
  for (let n = 1; n < labels.length; n++) keys.push(`.${labels.slice(n).join('.')}`);
  for (const key of keys) {
    for (const t of tables) {
      const v = await t.lookup(key);
      if (v !== undefined) return v;
    }
  }
  return undefined;
}

export async function planDeliveries(recipients: { index: number; address: string }[], config: MainConfig): Promise<DeliveryPlan> {
  const groups = new Map<string, DeliveryGroup>();
  const deferred: DeliveryPlan['deferred'] = [];
  const domains = new LocalDomains(config);
  const transports = config.list('transport_maps').map((s) => openTable(s, 'transport_maps')!);
  for (const r of recipients) {
    const domain = splitAddress(r.address).domain.toLowerCase();
    let route: Route;
    try {
      // mydestination first, as Postfix: a domain in both lists is a local domain
      const byClass = async (): Promise<Route> => {
        const cls = await domains.classOf(domain);
        if (!cls) return { transport: 'smtp', nexthop: domain, limit: 'default_destination_concurrency_limit' };
        const nexthop = transportNexthop(config.get(cls === 'mydestination' ? 'mailbox_transport' : 'virtual_transport'));
        return lmtpRoute(nexthop);
      };
      const entry = transports.length ? await transportEntry(transports, r.address, domain) : undefined;
      // no entry, or an empty one (":"), keeps the domain's own transport
      if (entry === undefined || /^\s*:?\s*$/.test(entry)) route = await byClass();
      else {
        const parsed = parseTransportValue(entry, domain);
        if (typeof parsed === 'string') {
          // a configuration error waits for the administrator (Postfix: 4.3.5), it does not bounce
          deferred.push({ ...r, dsn: '4.3.5', reason: `mail transport unavailable: transport_maps: ${parsed}` });
          continue;
        }
        route = parsed;
      }
    } catch (e) {
      deferred.push({ ...r, dsn: '4.3.0', reason: `Temporary lookup failure: ${(e as Error).message}` });
      continue;
    }
    const key = `${route.transport}:${route.nexthop}`;
    let g = groups.get(key);
    if (!g) {
      g = { transport: route.transport, nexthop: route.nexthop, recipients: [], concurrency: config.int(route.limit) };
      groups.set(key, g);
    }
    g.recipients.push(r);
  }
  return { groups: [...groups.values()], deferred };
}
