/**
 * Every message one Postern program sends another over a Unix socket, as one
 * TypeScript type each (Postfix keeps this contract in deliver_request.h and
 * friends; OpenSMTPD in one imsg_type enum). docs/ipc.md describes the same
 * types. Every request is derived from the schema its server checks it
 * against (schema.ts); replies are declared here.
 */
import type { RecipientStatus } from '../queue/queuefile.js';
import type { QueueEntry } from '../queue/queue-list.js';
import type { QueueOpOutcome } from '../queue/queue-ops.js';
import type {
  LocalMessageRequest, SmtpdMessageRequest, AfterBodyRequest, QmgrRequest, PickupTrigger, ShowqRequest, AnvilRequest,
  DeliveryRequest, LocalDeliveryRequest, ProxymapRequest,
} from './schema.js';

export type {
  LocalMessageRequest, SmtpdMessageRequest, AfterBodyRequest, QmgrRequest, PickupTrigger, ShowqRequest, AnvilRequest,
  DeliveryRequest, LocalDeliveryRequest, ProxymapRequest,
};

/** The answer of a service that could not do what it was asked. */
export interface ErrorReply { ok: false; error: string }
export interface OkReply { ok: true }

// ---------------------------------------------------------------- cleanup (private/cleanup, private/cleanup.local)

/** The envelope a local client (pickup, qmgr's notifications) submits. */
export type LocalEnvelope = LocalMessageRequest['envelope'];
/** The envelope smtpd submits. */
export type SmtpdEnvelope = SmtpdMessageRequest['envelope'];

/**
 * cleanup's answer once the message is on stable storage, or why it is not:
 * `code`/`dsn` when it refused the content (smtpd passes them on as they are),
 * `storage` when the spool is full (452 4.3.1).
 */
export type CleanupReply =
  | { ok: true; queue_id: string }
  | { ok: false; error: string; code?: number | string; dsn?: string; storage?: boolean };

// ---------------------------------------------------------------- triggers

/** cleanup -> qmgr (private/qmgr): a new file is in incoming/. */
export type QmgrTrigger = Extract<QmgrRequest, { type: 'trigger' }>;
// PickupTrigger (sendmail, the CLI -> private/pickup: maildrop has a new file) comes from its schema
export type TriggerReply = OkReply | ErrorReply;

// ---------------------------------------------------------------- delivery (qmgr -> smtp / lmtp)

/**
 * DeliveryRequest (schema.ts): one recipient group of one queue file for one
 * next hop; the agent reads the file itself. `skip`: hosts ("address:port")
 * qmgr's dead-destination table says to skip.
 */
export type DeliveryRecipient = DeliveryRequest['recipients'][number];

/** One recipient's result: the same values a queue file's status record keeps. */
export interface DeliveryResult {
  index: number;
  status: RecipientStatus;
  dsn: string;
  reason: string;
  relay?: string;
  /**
   * smtp only, for a recipient sent: `passed` when the next hop offers DSN and took NOTIFY (it reports success
   * itself, so no notice here), `relayed` when it does not (a "relayed" success notice). Absent: final delivery.
   */
  dsnAction?: 'passed' | 'relayed';
  /** The TLS of the session that gave this result (smtp only): policy, trust, whether verified (DANE or MTA-STS). */
  tls?: DeliveryTls;
}

/** What smtp learnt of a session's TLS (smtp/src/tls-policy.ts fills it in; TLS-RPT and REQUIRETLS read it). */
export interface DeliveryTls {
  policy: string;
  /** STARTTLS was done. */
  tls: boolean;
  trust?: string;
  /** The certificate was authenticated by DANE, or by PKIX with the MX name checked under MTA-STS. */
  verified: boolean;
  protocol?: string;
  cipher?: string;
  failure?: string;
}

/** The agent's answer: a result per recipient and the hosts it found dead, or why it could not try. */
export type DeliveryReply =
  | { results: DeliveryResult[]; dead: string[]; error?: undefined }
  | { error: string; results?: undefined; dead?: undefined };

// ---------------------------------------------------------------- anvil (smtpd -> private/anvil)

// AnvilRequest comes from its schema: {type, service, client} (auth: and peek?)

/** Rates are events per anvil_rate_time_unit; counts are connections open now. */
export type AnvilReply =
  | { ok: true; count?: number; rate?: number; rates?: Record<string, number> }
  | ErrorReply;

// ---------------------------------------------------------------- showq (anyone -> public/showq)

export type ShowqReply = { ok: true; entries: QueueEntry[] } | ErrorReply;

// ---------------------------------------------------------------- queue administration (postern queue -> private/qmgr)

export type QueueAdminRequest = Exclude<QmgrRequest, QmgrTrigger>;

export type QueueAdminReply =
  | { ok: true; results?: QueueOpOutcome[]; scheduled?: string[] }
  | ErrorReply;

// ---------------------------------------------------------------- proxymap (smtpd, cleanup, local, smtp -> private/proxymap)

/** A table's answer (`value` undefined: no such key), or why not; `unavailable`: try again later. */
export type ProxymapReply =
  | { ok: true; value?: unknown }
  | { ok: false; error: string; unavailable?: boolean };
