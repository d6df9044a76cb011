// genesis.js: a browser client of genesis_trio's wire protocol v1.
//
// Written from docs/protocol.md alone. One ES module, no dependencies, no build
// step; typed with JSDoc (`tsc --noEmit --checkJs`, strict). The sections below
// follow the document: §1 connection, §2 frames, §3 sequence numbers, acks and
// flow control, §4 resume, §5 close codes, §8 the client's rules C1–C13.
//
//     import { GenesisClient } from "/static/genesis.js";
//     const client = new GenesisClient("wss://example.org/ws", "dashboard", {
//       storage: sessionStorage,       // resume survives a page reload
//       topics: ["$presence"],
//     });
//     client.on("quote", (message) => ({ price: 42 }));   // answers requests
//     client.listen("connected", ({ recovered, epoch }) => console.log(recovered, epoch));
//     await client.connect();
//     await client.send("pricing", "order", { qty: 1 });
//     const answer = await client.request("pricing", "quote", { sku: "x" }, { timeout: 5000 });
//     for await (const message of client.messages()) console.log(message);
//
// What the application sees
// * Every message arrives exactly once and in order, across dropped links, hub
//   restarts and (with `storage`) page reloads. The only exceptions are the
//   protocol's own at-least-once cases, which `connected` reports with
//   `recovered: false` (§4: a session the hub could not continue) and takeover.
// * An incoming message is handed to, in this order: the pending `request()` it
//   replies to (`re`); the handler registered with `on(type)`, else `on("*")`,
//   whose return value (or thrown error) answers a request; for a request that no
//   handler takes, an automatic `no_handler` error reply (C11); for a plain
//   message, the `messages()` iterators once `messages()` has been called
//   (pull), else the `message` event (push).
// * A message is acknowledged (C8) once it has been handed over. In pull mode a
//   plain message waits until an iterator asks for it (also between two
//   `for await` loops, and with no iterator open: nothing is dropped), the
//   messages after it wait too (replies to your requests do not), their
//   acknowledgement waits, and the hub slows the senders down: backpressure.
// * `send`, `publish` and `request` queue the message and return at once; the
//   queue is kept across links (and reloads). When `maxPending` messages are
//   unacknowledged, `send` and `publish` REJECT with `QueueFullError` (they do
//   not wait): check `pending`, or `await client.flush()`, and try again.
// * A message too large for the hub's `max_size` is refused by `send` with a
//   `RangeError` before it gets a number (a skipped number would be a gap).
//
// Resume across reloads (`storage`)
// * The stored state is one key: sid, epoch, the highest hub number handed to
//   the application, our next number, the unacknowledged outgoing messages and
//   the subscriptions. It is written in a microtask after each change, and
//   always before a frame that depends on it goes out.
// * With `storage`, `hello.ack` is that handed-over mark rather than the highest
//   number received (C4): a reload loses what was received but not handed over,
//   so the hub must keep it. Messages received again are dropped as duplicates.
// * `sessionStorage` is per tab: two tabs are two sessions. Two clients with one
//   id and no shared session take each other over (4001 ends the older one).
//
// In a browser
// * A refused upgrade (HTTP 400/403/429/503) is indistinguishable from a lost
//   connection (1006): the client keeps retrying with its backoff.
// * Links the client abandons itself (silent hub, a gap in the hub's numbers, no
//   welcome in time) are closed with 1000 and no `bye`: the session stays.

/** The subprotocol this client speaks (§1): UTF-8 JSON in text messages. */
export const SUBPROTOCOL = "genesis.v1.json";
/** Protocol version sent in `hello.v` (§2.1). */
export const PROTOCOL_VERSION = 1;

// §5: close codes after which the client must not reconnect (C7).
const NO_RECONNECT = new Set([1002, 1008, 4000, 4001, 4008]);
const SESSION_VIOLATION = 4007; // C7: reconnect without sid
const ACK_DELAY_MS = 20; // C8: acknowledge within ~20 ms
const MAX_PING_ID = 2 ** 53 - 1; // §2: ping ids are ints in 0 .. 2^53 - 1
const MAX_TOPICS_PER_FRAME = 1024; // §2.7
const BATCH_BYTES = 256 * 1024; // our own cap on one batch frame (the hub's max_size also applies)
// Room for `{"t":"batch","seq":N,"ack":N,"m":[...]}` around the bodies, N < 2^53.
const FRAME_OVERHEAD = 80;
const DEFAULT_HUB_MAX_SIZE = 1024 * 1024; // until a welcome says otherwise
const STATE_VERSION = 1; // the format of what `storage` holds

const COMPONENT_ID = /^[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,127}$/; // §2.1
const TOPIC = /^[A-Za-z0-9_][A-Za-z0-9_.:/@-]{0,255}$/; // §2.3
const SYSTEM_TOPIC = /^\$[A-Za-z0-9_][A-Za-z0-9_.:/@-]{0,254}$/; // §2.7: `$presence`, ...

// ---- Types ----------------------------------------------------------------------------

/**
 * A message body (§2.3). `from` is stamped by the hub.
 * @typedef {{
 *   type: string,
 *   data?: unknown,
 *   to?: string,
 *   topic?: string,
 *   id?: string,
 *   re?: string,
 *   error?: {code: string, msg?: string},
 *   from?: string,
 *   [field: string]: unknown,
 * }} Message
 */

/**
 * A handler: its return value (or a Promise of it) is the reply's `data` when
 * the message is a request; a thrown error becomes an error reply with the
 * error's string `code` if it has one, else `handler_error`.
 * @typedef {(message: Message) => unknown} Handler
 */

/**
 * The subset of the WebSocket API this client uses: the browser's class, or
 * the `ws` package's in Node (`new GenesisClient(url, id, {WebSocket})`).
 * @typedef {object} WebSocketLike
 * @property {string} protocol
 * @property {number} readyState
 * @property {string} binaryType
 * @property {(data: string) => void} send
 * @property {(code?: number, reason?: string) => void} close
 * @property {((event: any) => void) | null} onopen
 * @property {((event: any) => void) | null} onmessage
 * @property {((event: any) => void) | null} onclose
 * @property {((event: any) => void) | null} onerror
 */
/** @typedef {new (url: string, protocols?: string | string[]) => WebSocketLike} WebSocketConstructor */

/**
 * Where the session is kept across page reloads: `sessionStorage` (one tab,
 * one session; recommended), `localStorage`, or anything alike.
 * @typedef {{
 *   getItem(key: string): string | null,
 *   setItem(key: string, value: string): void,
 *   removeItem(key: string): void,
 * }} StorageLike
 */

/**
 * @typedef {object} GenesisOptions
 * @property {WebSocketConstructor} [WebSocket] the WebSocket class (default: `globalThis.WebSocket`)
 * @property {StorageLike | null} [storage] keep the session here so that it resumes after a reload
 * @property {string} [storageKey] the key in `storage` (default `genesis:<id>`, `genesis:*` when anonymous)
 * @property {Iterable<string>} [topics] subscriptions, restated in every `hello` (§2.7)
 * @property {string | (() => string | Promise<string>) | null} [token] a credential, or a function asked on every link (4009 wants a fresh one)
 * @property {number} [maxPending] most unacknowledged outgoing messages (default 1000)
 * @property {number} [requestTimeout] default `request()` timeout, ms (default 30 000)
 * @property {number} [backoffBase] first reconnect delay bound, ms (default 100; C10)
 * @property {number} [backoffCap] largest reconnect delay bound, ms (default 10 000)
 * @property {number} [silenceGrace] a hub silent for `hb` + this many ms is dead (default 5000; C9)
 * @property {number} [connectTimeout] ms from opening a socket to the `welcome` (default 10 000)
 * @property {number} [maxSize] announce `hello.max_size`: the largest message this client accepts (C13)
 * @property {() => number} [random] a source of [0, 1) for the jitter (default `Math.random`)
 */

/**
 * The events, by name, with their `detail` (`client.listen(name, fn)` hands
 * `fn` the detail; `addEventListener` hands a CustomEvent).
 * @typedef {object} GenesisEvents
 * @property {{attempt: number}} connecting a link is being opened
 * @property {{recovered: boolean, epoch: number, sid: string, id: string, node: string, reason: string | null, resumed: boolean}} connected a `welcome` arrived; `resumed`: a sid was offered; `reason`: why it was not recovered (§2.2)
 * @property {{code: number, reason: string, reconnect: boolean, delay: number | null}} disconnected a link ended; `delay`: ms until the next attempt
 * @property {{code: number, reason: string, error: GenesisError | null}} closed the client stopped for good (`close()`, or a close code of C7)
 * @property {Message} message a plain message no handler took, until `messages()` is first called
 * @property {{code: string, msg: string, seq?: number, id?: string}} error an `error` frame from the hub (§2.9), or a local failure (`handler_error`, `storage`, `token`)
 */

/** @typedef {"idle" | "connecting" | "connected" | "disconnected" | "closed"} ClientState */

/**
 * An outgoing message, kept until the hub acknowledges it (C2). `json` is the
 * body, encoded once when it was queued.
 * @typedef {{seq: number, json: string, size: number, bounded: boolean}} OutEntry
 */

/**
 * A received message not yet handed to the application. `key` names the
 * session and epoch its number belongs to (§4: numbers restart per epoch).
 * @typedef {{key: string, seq: number, body: Message, done: boolean}} InEntry
 */

/**
 * One WebSocket link (§6): from the upgrade to its close.
 * @typedef {{
 *   sock: WebSocketLike,
 *   welcomed: boolean,
 *   helloAck: number,
 *   timer: ReturnType<typeof setTimeout> | undefined,
 *   byeSent: boolean,
 * }} Link
 */

/**
 * @typedef {{
 *   resolve: (data: unknown) => void,
 *   reject: (error: Error) => void,
 *   timer: ReturnType<typeof setTimeout>,
 * }} PendingRequest
 */

// ---- Errors ---------------------------------------------------------------------------

/** Base class of this module's errors; `code` is a stable string. */
export class GenesisError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   */
  constructor(code, message) {
    super(message);
    this.name = "GenesisError";
    this.code = code;
  }
}

/** The other side answered with an error: an error reply, or an `error` frame naming the request. */
export class RemoteError extends GenesisError {
  /**
   * @param {string} code
   * @param {string} message
   * @param {Message | null} [reply] the error reply, when it was one
   */
  constructor(code, message, reply = null) {
    super(code, message);
    this.name = "RemoteError";
    this.reply = reply;
  }
}

/** A `request()`, `flush()` or `once()` that did not complete in time. */
export class TimeoutError extends GenesisError {
  /** @param {string} message */
  constructor(message) {
    super("timeout", message);
    this.name = "TimeoutError";
  }
}

/** `send`/`publish`/`request` while `maxPending` messages wait for acknowledgement. */
export class QueueFullError extends GenesisError {
  /** @param {number} limit */
  constructor(limit) {
    super(
      "queue_full",
      `${limit} messages are waiting for the hub's acknowledgement (maxPending): ` +
        "wait (await client.flush()) and send again",
    );
    this.name = "QueueFullError";
    this.limit = limit;
  }
}

/** The client stopped: `close()` was called, or the hub closed with a code of C7. */
export class ClosedError extends GenesisError {
  /**
   * @param {number} closeCode
   * @param {string} reason
   */
  constructor(closeCode, reason) {
    super("closed", `the client is closed (${closeCode}${reason ? `: ${reason}` : ""})`);
    this.name = "ClosedError";
    this.closeCode = closeCode;
    this.reason = reason;
  }
}

// ---- Small helpers --------------------------------------------------------------------

/**
 * The length in bytes of `text` encoded as UTF-8 (§1: `max_size` counts bytes).
 * @param {string} text
 * @returns {number}
 */
export function utf8Length(text) {
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) bytes += 1;
    else if (c < 0x800) bytes += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) {
        bytes += 4;
        i++;
      } else bytes += 3;
    } else bytes += 3;
  }
  return bytes;
}

/**
 * C10: exponential backoff with full jitter: uniform in [0, min(cap, base·2^attempt)).
 * @param {number} attempt 0 for the first retry
 * @param {number} base ms
 * @param {number} cap ms
 * @param {() => number} [random]
 * @returns {number} ms
 */
export function backoffDelay(attempt, base, cap, random = Math.random) {
  return random() * Math.min(cap, base * 2 ** Math.min(attempt, 30));
}

/**
 * @param {unknown} value
 * @returns {value is Record<string, unknown>}
 */
function isObject(value) {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * @param {unknown} value
 * @param {number} [min]
 * @returns {value is number}
 */
function isInt(value, min = 0) {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= min;
}

/** @returns {number} a monotonic clock, ms */
function now() {
  return performance.now();
}

/** @returns {string} 16 random hex digits, for request ids */
function randomHex() {
  const bytes = new Uint8Array(8);
  if (globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * @param {unknown} error
 * @returns {{code: string, msg: string}} the `error` of an error reply
 */
function errorReply(error) {
  const code =
    isObject(error) && typeof error.code === "string" && error.code ? error.code : "handler_error";
  const msg = error instanceof Error ? error.message : String(error);
  return { code, msg };
}

/** @param {string} type */
function checkType(type) {
  if (typeof type !== "string" || type.length < 1 || type.length > 128) {
    throw new TypeError(`a message type is a string of 1 to 128 characters, not ${JSON.stringify(type)}`);
  }
}

/**
 * @param {string} topic
 * @param {boolean} system whether `$` topics are allowed (to subscribe, not to publish)
 */
function checkTopic(topic, system) {
  if (typeof topic === "string" && (TOPIC.test(topic) || (system && SYSTEM_TOPIC.test(topic)))) return;
  throw new TypeError(`not a valid topic${system ? "" : " to publish to"}: ${JSON.stringify(topic)}`);
}

// ---- The client -----------------------------------------------------------------------

/**
 * One component's session with a hub, kept across links, hub restarts and,
 * with `storage`, page reloads. Emits the events of `GenesisEvents`.
 */
export class GenesisClient extends EventTarget {
  // configuration
  /** @type {string[]} */ #urls;
  #urlIndex = 0;
  /** @type {WebSocketConstructor} */ #WebSocket;
  /** @type {StorageLike | null} */ #storage;
  /** @type {string} */ #storageKey;
  /** @type {GenesisOptions["token"]} */ #token;
  /** @type {number} */ #maxPending;
  /** @type {number} */ #requestTimeout;
  /** @type {number} */ #backoffBase;
  /** @type {number} */ #backoffCap;
  /** @type {number} */ #silenceGrace;
  /** @type {number} */ #connectTimeout;
  /** @type {number | null} */ #maxSize;
  /** @type {() => number} */ #random;

  // the session (§4); what `storage` keeps
  /** @type {string | null} */ #id;
  /** @type {string | null} */ #sid = null;
  #epoch = 0;
  /** @type {Set<string>} */ #topics = new Set();
  /** @type {OutEntry[]} unacknowledged, consecutive numbers (C2) */ #outbox = [];
  #bounded = 0; // how many of them count against maxPending
  #nextSeq = 1;
  #received = 0; // R: the highest contiguous hub number received (§3, C4)
  #taken = 0; // the highest hub number handed to the application (C8)
  #ackSent = 0; // the highest number we acknowledged
  #hubAck = 0; // the highest of our numbers the hub has stored
  #sentUpTo = 0; // the highest of our numbers sent on this link
  #epochKey = ""; // `${sid}/${epoch}`: which epoch the numbers above count in

  // the link (§6)
  /** @type {Link | null} */ #link = null;
  #opening = false; // between `connecting` and the socket (the token provider may be async)
  /** @type {ClientState} */ #state = "idle";
  #window = 1;
  #hb = 5000;
  #hubMaxSize = DEFAULT_HUB_MAX_SIZE;
  #attempt = 0;
  /** @type {ReturnType<typeof setTimeout> | undefined} */ #reconnectTimer;
  /** @type {ReturnType<typeof setTimeout> | undefined} */ #heartbeatTimer;
  /** @type {ReturnType<typeof setTimeout> | undefined} */ #ackTimer;
  #ackDue = false;
  #lastSent = 0;
  #lastReceived = 0;
  /** @type {number[]} */ #pongs = [];
  /** @type {Record<string, unknown>[]} */ #control = [];
  #pingId = 0;
  /** @type {{id: number, resolve: () => void, reject: (error: Error) => void}[]} */ #confirms = [];
  #pumpScheduled = false;
  #saveScheduled = false;
  #dirty = false;

  // the application's side
  /** @type {Map<string, Handler>} */ #handlers = new Map();
  /** @type {Map<string, PendingRequest>} */ #requests = new Map();
  #requestPrefix = randomHex();
  #requestCounter = 0;
  /** @type {InEntry[]} */ #inbox = [];
  #dispatching = false;
  #pull = false; // `messages()` was called: plain messages wait for an iterator
  /** @type {((result: IteratorResult<Message, undefined>) => void)[]} */ #waiters = [];
  /** @type {{resolve: () => void, reject: (error: Error) => void}[]} */ #connectWaiters = [];
  /** @type {{resolve: () => void, reject: (error: Error) => void}[]} */ #flushWaiters = [];
  /** @type {{endSession: boolean, deadline: number} | null} */ #closing = null;
  /** @type {Promise<void> | null} */ #closePromise = null;
  /** @type {ReturnType<typeof setTimeout> | undefined} */ #closeTimer;
  /** @type {() => void} */ #closeResolve = () => {};
  /** @type {ClosedError | null} */ #closedError = null;

  /** Counters, for tests and dashboards. */
  #stats = {
    connects: 0,
    recovered: 0,
    newEpochs: 0,
    sent: 0,
    received: 0,
    duplicates: 0,
    lateReplies: 0,
    errors: 0,
  };

  /**
   * @param {string | string[]} url the hub's endpoint, `ws://host:port/ws` or `wss://...`;
   *   or several (the nodes of a cluster): a link that fails before its welcome makes the
   *   next attempt use the next one
   * @param {string | null} id the component id (§2.1), or null for an anonymous session
   * @param {GenesisOptions} [options]
   */
  constructor(url, id, options = {}) {
    super();
    const urls = typeof url === "string" ? [url] : [...url];
    if (urls.length === 0) throw new TypeError("at least one hub URL is needed");
    for (const each of urls) {
      const parsed = new URL(each);
      if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") {
        throw new TypeError(`the hub's URL must be ws:// or wss://, not ${each}`);
      }
    }
    if (id !== null && (typeof id !== "string" || !COMPONENT_ID.test(id))) {
      throw new TypeError(`not a valid component id: ${JSON.stringify(id)}`);
    }
    const WebSocketClass = options.WebSocket ?? /** @type {WebSocketConstructor | undefined} */ (globalThis.WebSocket);
    if (!WebSocketClass) throw new TypeError("no WebSocket class: pass options.WebSocket");
    this.#urls = urls;
    this.#id = id;
    this.#WebSocket = WebSocketClass;
    this.#storage = options.storage ?? null;
    this.#storageKey = options.storageKey ?? `genesis:${id ?? "*"}`;
    this.#token = options.token ?? null;
    this.#maxPending = options.maxPending ?? 1000;
    this.#requestTimeout = options.requestTimeout ?? 30_000;
    this.#backoffBase = options.backoffBase ?? 100;
    this.#backoffCap = options.backoffCap ?? 10_000;
    this.#silenceGrace = options.silenceGrace ?? 5000;
    this.#connectTimeout = options.connectTimeout ?? 10_000;
    this.#maxSize = options.maxSize ?? null;
    this.#random = options.random ?? Math.random;
    for (const topic of options.topics ?? []) {
      checkTopic(topic, true);
      this.#topics.add(topic);
    }
    this.#load();
  }

  // ---- Public state -------------------------------------------------------------------

  /** @returns {ClientState} */
  get state() {
    return this.#state;
  }

  /** The component id: as given, or the one the hub assigned (`anon-...`). */
  get id() {
    return this.#id;
  }

  /** The session id from the last `welcome`, or null. */
  get sid() {
    return this.#sid;
  }

  /** The session's epoch from the last `welcome` (0 before the first). */
  get epoch() {
    return this.#epoch;
  }

  /** How many of your messages wait for the hub's acknowledgement (what `maxPending` bounds). */
  get pending() {
    return this.#bounded;
  }

  /** The current subscriptions. */
  get topics() {
    return [...this.#topics];
  }

  /** A copy of the counters. */
  get stats() {
    return { ...this.#stats };
  }

  // ---- Public API ---------------------------------------------------------------------

  /**
   * Start connecting (and reconnecting, C10); resolves at the first `welcome`,
   * rejects if the client is closed before.
   * @returns {Promise<void>}
   */
  connect() {
    if (this.#state === "closed") {
      return Promise.reject(this.#closedError ?? new ClosedError(1000, "closed"));
    }
    if (this.#state === "idle") void this.#openLink();
    if (this.#state === "connected") return Promise.resolve();
    return new Promise((resolve, reject) => this.#connectWaiters.push({ resolve, reject }));
  }

  /**
   * Queue a message to one component (or `$hub`). Resolves once queued; it is
   * then delivered exactly once, now or after a reconnect.
   * @param {string} to
   * @param {string} type
   * @param {unknown} [data]
   * @returns {Promise<void>} rejects with QueueFullError, RangeError (too large) or TypeError
   */
  async send(to, type, data = null) {
    this.#enqueue(this.#body({ to, type, data }), true);
  }

  /**
   * Queue a message to every subscriber of `topic` (§2.3).
   * @param {string} topic
   * @param {string} type
   * @param {unknown} [data]
   * @returns {Promise<void>}
   */
  async publish(topic, type, data = null) {
    this.#enqueue(this.#body({ topic, type, data }), true);
  }

  /**
   * Send a request and wait for its reply's `data` (§2.3). Rejects with
   * RemoteError (an error reply, or an error frame such as `unknown_target`),
   * TimeoutError, QueueFullError or ClosedError. The timeout runs from the call,
   * offline time included.
   * @param {string} to
   * @param {string} type
   * @param {unknown} [data]
   * @param {{timeout?: number}} [options] ms (default: the `requestTimeout` option)
   * @returns {Promise<any>}
   */
  request(to, type, data = null, { timeout = this.#requestTimeout } = {}) {
    const id = `${this.#requestPrefix}.${++this.#requestCounter}`;
    try {
      this.#enqueue(this.#body({ to, type, data, id }), true);
    } catch (error) {
      return Promise.reject(error);
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#requests.delete(id);
        reject(new TimeoutError(`no reply to '${type}' from '${to}' within ${timeout} ms`));
      }, timeout);
      this.#requests.set(id, { resolve, reject, timer });
    });
  }

  /**
   * Who is subscribed to `topic` now: the hub's `presence` request, every page (§2.7).
   * @param {string} topic
   * @param {{timeout?: number}} [options]
   * @returns {Promise<{id: string, connected: boolean, node: string}[]>}
   */
  async presence(topic, options = {}) {
    /** @type {{id: string, connected: boolean, node: string}[]} */
    const members = [];
    /** @type {unknown} */
    let after = null;
    do {
      const query = after === null ? { topic } : { topic, after };
      const page = await this.request("$hub", "presence", query, options);
      if (!isObject(page) || !Array.isArray(page.members)) {
        throw new GenesisError("bad_reply", "the hub's presence reply has no members list");
      }
      members.push(...page.members);
      after = page.next ?? null;
    } while (after !== null);
    return members;
  }

  /**
   * Add subscriptions (§2.7). Allowed before `connect()`: every `hello` restates
   * the whole set. Resolves once the hub applied them (a `pong` after the `sub`,
   * §2.6), or at once while there is no link.
   * @param {...string} topics
   * @returns {Promise<void>}
   */
  subscribe(...topics) {
    for (const topic of topics) checkTopic(topic, true);
    const added = topics.filter((topic) => !this.#topics.has(topic));
    for (const topic of added) this.#topics.add(topic);
    return this.#changeTopics("sub", added);
  }

  /**
   * Remove subscriptions (§2.7); resolves like `subscribe`.
   * @param {...string} topics
   * @returns {Promise<void>}
   */
  unsubscribe(...topics) {
    const removed = topics.filter((topic) => this.#topics.has(topic));
    for (const topic of removed) this.#topics.delete(topic);
    return this.#changeTopics("unsub", removed);
  }

  /**
   * Handle messages of `type` (`"*"`: every type without its own handler). The
   * handler's return value answers a request. One handler per type.
   * @param {string} type
   * @param {Handler} handler
   * @returns {() => void} removes the handler
   */
  on(type, handler) {
    if (type !== "*") checkType(type);
    this.#handlers.set(type, handler);
    this.#dispatch(); // messages waiting for a reader may have a handler now
    return () => {
      if (this.#handlers.get(type) === handler) this.#handlers.delete(type);
    };
  }

  /**
   * The plain messages no handler takes, in order. From the first call on, such
   * messages wait for an iterator to ask for them (and so does their
   * acknowledgement), instead of going to the `message` event: call it before
   * `connect()` to miss none. Leaving a `for await` loop closes that iterator;
   * the next message waits for the next one.
   * @returns {AsyncIterableIterator<Message>}
   */
  messages() {
    let open = true;
    this.#pull = true;
    /** @type {((result: IteratorResult<Message, undefined>) => void)[]} */
    const mine = [];
    /** @type {AsyncIterableIterator<Message>} */
    const iterator = {
      next: () => {
        if (!open || this.#state === "closed") return Promise.resolve({ done: true, value: undefined });
        return new Promise((resolve) => {
          /** @param {IteratorResult<Message, undefined>} result */
          const waiter = (result) => {
            mine.splice(mine.indexOf(waiter), 1);
            resolve(result);
          };
          mine.push(waiter);
          this.#waiters.push(waiter);
          this.#dispatch();
        });
      },
      return: () => {
        if (open) {
          open = false;
          for (const waiter of [...mine]) {
            this.#waiters.splice(this.#waiters.indexOf(waiter), 1);
            waiter({ done: true, value: undefined });
          }
        }
        return Promise.resolve({ done: true, value: undefined });
      },
      [Symbol.asyncIterator]: () => iterator,
    };
    return iterator;
  }

  /**
   * Wait until the hub has stored every message queued so far (the outbox is empty).
   * @param {{timeout?: number}} [options] ms (default: no limit)
   * @returns {Promise<void>}
   */
  flush({ timeout } = {}) {
    if (this.#outbox.length === 0) return Promise.resolve();
    if (this.#state === "closed") return Promise.reject(this.#closedError ?? new ClosedError(1000, ""));
    return new Promise((resolve, reject) => {
      /** @type {ReturnType<typeof setTimeout> | undefined} */
      let timer;
      const waiter = {
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
        /** @param {Error} error */
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      };
      if (timeout !== undefined) {
        timer = setTimeout(() => {
          this.#flushWaiters.splice(this.#flushWaiters.indexOf(waiter), 1);
          reject(new TimeoutError(`${this.#outbox.length} messages still unacknowledged after ${timeout} ms`));
        }, timeout);
      }
      this.#flushWaiters.push(waiter);
    });
  }

  /**
   * Stop. Without `endSession` the link is closed (1000) and the session stays
   * on the hub (and in `storage`) for a later resume. With `endSession`, every
   * queued message is sent, then `bye` (§2.8): the hub forgets the session and
   * closes with 1000; `storage` is cleared.
   * @param {{endSession?: boolean, timeout?: number}} [options] `timeout`: ms to wait for the bye's close (default 5000)
   * @returns {Promise<void>}
   */
  close({ endSession = false, timeout = 5000 } = {}) {
    if (this.#closePromise) return this.#closePromise;
    this.#closePromise = new Promise((resolve) => {
      this.#closeResolve = resolve;
    });
    if (this.#state === "closed") {
      this.#closeResolve();
      return this.#closePromise;
    }
    this.#closing = { endSession, deadline: now() + timeout };
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = undefined;
    const link = this.#link;
    const nothingToEnd = this.#state === "idle" && this.#sid === null && this.#outbox.length === 0;
    if (!endSession || nothingToEnd) {
      const reason = "closed by the client";
      if (endSession) this.#forgetSession();
      if (link) {
        this.#link = null;
        clearTimeout(link.timer);
        this.#dropSocket(link, false, reason);
        this.#emit("disconnected", { code: 1000, reason, reconnect: false, delay: null });
      }
      this.#finish(1000, reason, null);
    } else {
      // §2.8: bye after what was queued; the hub answers with 1000.
      this.#closeTimer = setTimeout(() => {
        const reason = "no close after bye in time";
        const last = this.#link;
        if (last) {
          this.#link = null;
          clearTimeout(last.timer);
          this.#dropSocket(last, true, reason);
          this.#emit("disconnected", { code: 1006, reason, reconnect: false, delay: null });
        }
        this.#finish(1006, reason, null);
      }, timeout);
      if (link?.welcomed) this.#pump();
      else if (!link && !this.#opening) void this.#openLink();
    }
    return this.#closePromise;
  }

  /**
   * Listen to an event with its detail (a typed `addEventListener`).
   * @template {keyof GenesisEvents} K
   * @param {K} name
   * @param {(detail: GenesisEvents[K]) => void} listener
   * @returns {() => void} removes the listener
   */
  listen(name, listener) {
    /** @param {Event} event */
    const wrapped = (event) => listener(/** @type {CustomEvent<GenesisEvents[K]>} */ (event).detail);
    this.addEventListener(name, wrapped);
    return () => this.removeEventListener(name, wrapped);
  }

  /**
   * The next event `name`'s detail.
   * @template {keyof GenesisEvents} K
   * @param {K} name
   * @param {{timeout?: number}} [options] ms (default: no limit)
   * @returns {Promise<GenesisEvents[K]>}
   */
  once(name, { timeout } = {}) {
    return new Promise((resolve, reject) => {
      /** @type {ReturnType<typeof setTimeout> | undefined} */
      let timer;
      const off = this.listen(name, (detail) => {
        clearTimeout(timer);
        off();
        resolve(detail);
      });
      if (timeout !== undefined) {
        timer = setTimeout(() => {
          off();
          reject(new TimeoutError(`no '${name}' event within ${timeout} ms`));
        }, timeout);
      }
    });
  }

  // ---- §1, §6: links ------------------------------------------------------------------

  /** Open a link: socket, upgrade, `hello` (C1). */
  async #openLink() {
    this.#opening = true;
    this.#setState("connecting");
    this.#emit("connecting", { attempt: this.#attempt });
    /** @type {string | null} */
    let token = null;
    try {
      const source = this.#token;
      token = (typeof source === "function" ? await source() : source) ?? null; // 4009: fresh on every link
    } catch (error) {
      this.#opening = false;
      this.#emit("error", { code: "token", msg: `the token provider failed: ${String(error)}` });
      this.#retry(1006, "no credential");
      return;
    }
    this.#opening = false;
    if (this.#state === "closed" || this.#link) return;
    /** @type {WebSocketLike} */
    let sock;
    try {
      sock = new this.#WebSocket(this.#urls[this.#urlIndex], [SUBPROTOCOL]);
    } catch (error) {
      this.#nextUrl();
      this.#retry(1006, `cannot open a WebSocket: ${String(error)}`);
      return;
    }
    /** @type {Link} */
    const link = { sock, welcomed: false, helloAck: 0, timer: undefined, byeSent: false };
    this.#link = link;
    sock.binaryType = "arraybuffer";
    sock.onopen = () => {
      if (link === this.#link) this.#sendHello(link, token);
    };
    sock.onmessage = (/** @type {{data: unknown}} */ event) => {
      if (link === this.#link) this.#onData(link, event.data);
    };
    sock.onclose = (/** @type {{code?: number, reason?: string}} */ event) => {
      this.#linkEnded(link, event.code ?? 1006, event.reason ?? "");
    };
    sock.onerror = () => {}; // a close event follows
    link.timer = setTimeout(
      () => this.#abandon(link, `no welcome within ${this.#connectTimeout} ms`),
      this.#connectTimeout,
    );
  }

  /**
   * §2.1: the first frame; names the session to resume.
   * @param {Link} link
   * @param {string | null} token
   */
  #sendHello(link, token) {
    const protocol = link.sock.protocol;
    if (protocol !== "" && protocol !== SUBPROTOCOL) {
      this.#abandon(link, `the hub chose the subprotocol ${JSON.stringify(protocol)}`);
      return;
    }
    // C4: hello.ack is the highest contiguous number received. With `storage`
    // it is the highest number handed to the application instead: that is what
    // a reload keeps, and a hello.ack above it would let the hub drop messages
    // a reloaded page never saw (either is correct: "Questions ... answered").
    link.helloAck = this.#storage ? this.#taken : this.#received;
    /** @type {Record<string, unknown>} */
    const hello = {
      t: "hello",
      v: PROTOCOL_VERSION,
      id: this.#id,
      sid: this.#sid,
      epoch: this.#epoch,
      ack: link.helloAck,
      topics: [...this.#topics],
    };
    if (token !== null && token !== undefined) hello.token = token;
    if (this.#maxSize !== null) hello.max_size = this.#maxSize;
    this.#write(link, [JSON.stringify(hello)]);
  }

  /**
   * Every frame from the hub.
   * @param {Link} link
   * @param {unknown} data
   */
  #onData(link, data) {
    this.#lastReceived = now(); // C9: any frame proves the hub alive
    /** @type {unknown} */
    let frame;
    try {
      const text =
        typeof data === "string"
          ? data
          : new TextDecoder().decode(/** @type {ArrayBuffer | ArrayBufferView} */ (data));
      frame = JSON.parse(text);
    } catch {
      this.#emit("error", { code: "bad_frame", msg: "a frame from the hub is not JSON; ignored" });
      return;
    }
    if (!isObject(frame) || typeof frame.t !== "string") return; // §2: fields we do not know are ignored
    if (!link.welcomed) {
      if (frame.t === "welcome") this.#onWelcome(link, frame);
      else if (frame.t === "error") this.#onError(frame);
      return;
    }
    switch (frame.t) {
      case "msg":
      case "batch":
        this.#onSequenced(link, frame);
        break;
      case "ack":
        if (isInt(frame.seq)) this.#onHubAck(frame.seq);
        break;
      case "ping": // C5
        if (isInt(frame.id)) {
          this.#pongs.push(frame.id);
          this.#pump();
        }
        break;
      case "pong":
        if (isInt(frame.id)) this.#onPong(frame.id);
        break;
      case "error":
        this.#onError(frame);
        break;
    }
  }

  // ---- §2.2, §4: welcome and resume ---------------------------------------------------

  /**
   * @param {Link} link
   * @param {Record<string, unknown>} w
   */
  #onWelcome(link, w) {
    const { id, sid, epoch, recovered, ack, hb, window, max_size: maxSize, node } = w;
    if (
      typeof id !== "string" ||
      typeof sid !== "string" ||
      !isInt(epoch, 1) ||
      typeof recovered !== "boolean" ||
      !isInt(ack) ||
      !isInt(hb, 1) ||
      !isInt(window, 1) ||
      !isInt(maxSize, 1)
    ) {
      this.#abandon(link, "the welcome lacks a field of §2.2");
      return;
    }
    clearTimeout(link.timer);
    link.welcomed = true;
    const resumed = this.#sid !== null;
    if (recovered) {
      // The same epoch: hello.ack acknowledged everything up to it.
      this.#ackSent = Math.max(this.#ackSent, link.helloAck);
      if (resumed) this.#stats.recovered++;
    } else {
      // A new session or epoch: both streams restart at 1; ours is renumbered (C2).
      this.#outbox.forEach((entry, index) => {
        entry.seq = index + 1;
      });
      this.#nextSeq = this.#outbox.length + 1;
      this.#received = this.#taken = this.#ackSent = 0;
      if (resumed) this.#stats.newEpochs++;
    }
    this.#id = id;
    this.#sid = sid;
    this.#epoch = epoch;
    this.#epochKey = `${sid}/${epoch}`;
    // Send again everything after welcome.ack, with the same numbers (C2).
    this.#hubAck = this.#sentUpTo = ack;
    this.#dropAcknowledged();
    this.#window = window;
    this.#hb = hb;
    this.#hubMaxSize = maxSize;
    this.#attempt = 0;
    this.#lastReceived = this.#lastSent = now();
    this.#stats.connects++;
    this.#setState("connected");
    this.#saveSoon();
    for (const confirm of this.#confirms.splice(0)) confirm.resolve(); // hello.topics restated them
    for (const waiter of this.#connectWaiters.splice(0)) waiter.resolve();
    this.#emit("connected", {
      recovered,
      epoch,
      sid,
      id,
      node: typeof node === "string" ? node : "",
      reason: typeof w.reason === "string" ? w.reason : null,
      resumed,
    });
    this.#heartbeat();
    this.#pump();
  }

  // ---- §2.4, §3: sequenced messages in ------------------------------------------------

  /**
   * @param {Link} link
   * @param {Record<string, unknown>} frame
   */
  #onSequenced(link, frame) {
    const bodies = frame.t === "msg" ? [frame.m] : frame.m;
    if (!isInt(frame.seq, 1) || !Array.isArray(bodies) || bodies.length === 0) return;
    let seq = frame.seq;
    for (const body of bodies) {
      if (seq <= this.#received) {
        this.#stats.duplicates++; // C4: already handled
      } else if (seq > this.#received + 1) {
        // A gap never happens on a correct link: drop it and resume (§8, Q&A).
        this.#abandon(link, `sequence gap: ${seq} after ${this.#received}`);
        return;
      } else {
        this.#received = seq;
        this.#stats.received++;
        const message = isObject(body) ? /** @type {Message} */ (body) : { type: "", data: body };
        this.#inbox.push({ key: this.#epochKey, seq, body: message, done: false });
      }
      seq++;
    }
    if (isInt(frame.ack)) this.#onHubAck(frame.ack);
    this.#dispatch();
  }

  /** Hand received messages to the application, in order (see the header). */
  #dispatch() {
    if (this.#dispatching) return;
    this.#dispatching = true;
    try {
      while (this.#inbox.length > 0 && this.#state !== "closed") {
        const entry = this.#inbox[0];
        if (!entry.done && !this.#handOver(entry.body)) {
          this.#settleRepliesAhead(); // a reader is busy: never let it block our replies
          break;
        }
        this.#inbox.shift();
        if (entry.key === this.#epochKey && entry.seq > this.#taken) {
          this.#taken = entry.seq;
          this.#ackOwed();
        }
      }
    } finally {
      this.#dispatching = false;
    }
  }

  /**
   * @param {Message} body
   * @returns {boolean} false when it must wait for a `messages()` reader
   */
  #handOver(body) {
    if (typeof body.re === "string") {
      this.#settleReply(body);
      return true;
    }
    const notice = body.error !== undefined; // too_large / not_representable (§2.3)
    const handler = notice ? undefined : (this.#handlers.get(body.type) ?? this.#handlers.get("*"));
    if (handler) {
      this.#runHandler(handler, body);
      return true;
    }
    if (typeof body.id === "string" && !notice) {
      this.#reply(body, null, { code: "no_handler", msg: `no handler for '${body.type}'` }); // C11
      return true;
    }
    if (!this.#pull) {
      this.#emit("message", body);
      return true;
    }
    const waiter = this.#waiters.shift();
    if (!waiter) return false; // no iterator asks now: it waits (and the ones after it)
    waiter({ done: false, value: body });
    return true;
  }

  #settleRepliesAhead() {
    for (const entry of this.#inbox) {
      if (!entry.done && typeof entry.body.re === "string") {
        this.#settleReply(entry.body);
        entry.done = true;
      }
    }
  }

  /** @param {Message} body a reply (§2.3) */
  #settleReply(body) {
    const pending = this.#requests.get(/** @type {string} */ (body.re));
    if (!pending) {
      this.#stats.lateReplies++; // timed out, or asked before a reload
      return;
    }
    this.#requests.delete(/** @type {string} */ (body.re));
    clearTimeout(pending.timer);
    if (isObject(body.error)) {
      const code = typeof body.error.code === "string" ? body.error.code : "error";
      const msg = typeof body.error.msg === "string" ? body.error.msg : code;
      pending.reject(new RemoteError(code, msg, body));
    } else {
      pending.resolve(body.data ?? null);
    }
  }

  /**
   * @param {Handler} handler
   * @param {Message} body
   */
  #runHandler(handler, body) {
    /** @type {Promise<unknown>} */
    let result;
    try {
      result = Promise.resolve(handler(body));
    } catch (error) {
      result = Promise.reject(error);
    }
    if (typeof body.id === "string") {
      result.then(
        (data) => this.#reply(body, data, null),
        (error) => this.#reply(body, null, errorReply(error)),
      );
    } else {
      result.catch((error) => this.#emit("error", errorReply(error)));
    }
  }

  /**
   * Answer a request (§2.3): `{type, to: from, re: id, data}` or `{..., error}`.
   * @param {Message} request
   * @param {unknown} data
   * @param {{code: string, msg: string} | null} error
   */
  #reply(request, data, error) {
    if (typeof request.from !== "string" || this.#state === "closed") return;
    /** @type {Message} */
    const body = { type: request.type, to: request.from, re: request.id };
    if (error) body.error = error;
    else body.data = data === undefined ? null : data;
    try {
      this.#enqueue(body, false);
    } catch (failure) {
      if (error) return;
      this.#reply(request, null, { code: "handler_error", msg: `the reply cannot be sent: ${String(failure)}` });
    }
  }

  // ---- §2.3, §3: messages out ---------------------------------------------------------

  /**
   * A body of §2.3, checked (C6: `to` or `topic`, never `from`).
   * @param {{to?: string, topic?: string, type: string, data: unknown, id?: string}} fields
   * @returns {Message}
   */
  #body({ to, topic, type, data, id }) {
    checkType(type);
    /** @type {Message} */
    const body = { type, data };
    if (topic !== undefined) {
      checkTopic(topic, false);
      body.topic = topic;
    } else if (to === "$hub" || (typeof to === "string" && COMPONENT_ID.test(to))) {
      body.to = to;
    } else {
      throw new TypeError(`not a valid component id to send to: ${JSON.stringify(to)}`);
    }
    if (id !== undefined) body.id = id;
    return body;
  }

  /**
   * Number a body and keep it until acknowledged (C2).
   * @param {Message} body
   * @param {boolean} bounded counted against maxPending (replies are not)
   */
  #enqueue(body, bounded) {
    if (this.#state === "closed" || this.#closing) {
      throw this.#closedError ?? new ClosedError(1000, "the client is closing");
    }
    const json = JSON.stringify(body); // throws on cycles and BigInt
    const size = utf8Length(json);
    if (size + FRAME_OVERHEAD > this.#hubMaxSize) {
      // Too large to send: refused before it gets a number (Q&A, "Too large to send").
      throw new RangeError(`the message takes ${size} bytes; the hub accepts at most ${this.#hubMaxSize}`);
    }
    if (bounded && this.#bounded >= this.#maxPending) throw new QueueFullError(this.#maxPending);
    this.#outbox.push({ seq: this.#nextSeq++, json, size, bounded });
    if (bounded) this.#bounded++;
    this.#saveSoon();
    this.#schedulePump();
  }

  /**
   * An acknowledgement from the hub, in an `ack` frame or a msg/batch (§2.5).
   * @param {number} seq
   */
  #onHubAck(seq) {
    if (seq <= this.#hubAck || seq >= this.#nextSeq) return; // stale, or never sent
    this.#hubAck = seq;
    this.#sentUpTo = Math.max(this.#sentUpTo, seq);
    this.#dropAcknowledged();
    this.#saveSoon();
    this.#schedulePump(); // the window opened (C3)
  }

  #dropAcknowledged() {
    let n = 0;
    while (n < this.#outbox.length && this.#outbox[n].seq <= this.#hubAck) {
      if (this.#outbox[n].bounded) this.#bounded--;
      n++;
    }
    if (n > 0) this.#outbox.splice(0, n);
    if (this.#outbox.length === 0) for (const waiter of this.#flushWaiters.splice(0)) waiter.resolve();
  }

  /** C8: a message was handed to the application; acknowledge it soon. */
  #ackOwed() {
    this.#saveSoon();
    if (this.#taken - this.#ackSent >= Math.max(1, this.#window >> 1)) this.#schedulePump();
    else if (this.#ackTimer === undefined) {
      this.#ackTimer = setTimeout(() => {
        this.#ackTimer = undefined;
        this.#ackDue = true;
        this.#pump();
      }, ACK_DELAY_MS);
    }
  }

  #schedulePump() {
    if (this.#pumpScheduled) return;
    this.#pumpScheduled = true;
    queueMicrotask(() => {
      this.#pumpScheduled = false;
      this.#pump();
    });
  }

  /**
   * The writer: pongs (C5), sub/unsub/ping, messages within the window (C3) with
   * the acknowledgement riding on them (C8), a lone `ack` when due, `bye` (§2.8).
   */
  #pump() {
    const link = this.#link;
    if (!link?.welcomed || link.byeSent) return;
    this.#saveNow(); // a number on the wire must be in `storage` first (reload)
    /** @type {string[]} */
    const frames = this.#pongs.map((id) => `{"t":"pong","id":${id}}`);
    this.#pongs = [];
    for (const frame of this.#control.splice(0)) frames.push(JSON.stringify(frame));

    const first = this.#outbox.length > 0 ? this.#outbox[0].seq : this.#nextSeq;
    const start = Math.max(0, this.#sentUpTo + 1 - first);
    const stop = Math.min(this.#outbox.length, this.#hubAck + this.#window + 1 - first); // C3
    const owed = this.#epochKey !== "" && this.#taken > this.#ackSent;
    const ackNow = owed && (start < stop || this.#ackDue || this.#taken - this.#ackSent >= this.#window >> 1);
    let ackField = ackNow ? `,"ack":${this.#taken}` : "";
    if (ackNow) {
      this.#ackSent = this.#taken;
      this.#ackDue = false;
      clearTimeout(this.#ackTimer);
      this.#ackTimer = undefined;
    }
    const limit = Math.min(this.#hubMaxSize, BATCH_BYTES) - FRAME_OVERHEAD;
    for (let i = start; i < stop; ) {
      // One msg, or a batch of consecutive bodies within the size limit (§2.4).
      let j = i + 1;
      let bytes = this.#outbox[i].size;
      while (j < stop && bytes + this.#outbox[j].size + 1 <= limit) bytes += this.#outbox[j++].size + 1;
      const seq = this.#outbox[i].seq;
      if (j === i + 1) frames.push(`{"t":"msg","seq":${seq}${ackField},"m":${this.#outbox[i].json}}`);
      else {
        const bodies = this.#outbox.slice(i, j).map((entry) => entry.json);
        frames.push(`{"t":"batch","seq":${seq}${ackField},"m":[${bodies.join(",")}]}`);
      }
      ackField = "";
      this.#stats.sent += j - i;
      this.#sentUpTo = this.#outbox[j - 1].seq;
      i = j;
    }
    if (ackField) frames.push(`{"t":"ack","seq":${this.#taken}}`);
    if (this.#closing?.endSession && this.#sentUpTo >= this.#nextSeq - 1) {
      frames.push('{"t":"bye"}');
      link.byeSent = true;
    }
    if (frames.length > 0) this.#write(link, frames);
  }

  /**
   * @param {Link} link
   * @param {string[]} frames
   */
  #write(link, frames) {
    try {
      for (const frame of frames) link.sock.send(frame);
      this.#lastSent = now();
    } catch (error) {
      this.#abandon(link, `cannot send: ${String(error)}`);
    }
  }

  // ---- §2.6: heartbeats ---------------------------------------------------------------

  /** C9: ping when we were silent for `hb`; a hub silent for `hb` + grace is dead. */
  #heartbeat() {
    clearTimeout(this.#heartbeatTimer);
    const link = this.#link;
    if (!link?.welcomed) return;
    const t = now();
    const dead = this.#lastReceived + this.#hb + this.#silenceGrace;
    if (t >= dead) {
      this.#abandon(link, `nothing from the hub for ${Math.round(t - this.#lastReceived)} ms`);
      return;
    }
    if (t - this.#lastSent >= this.#hb) {
      this.#control.push({ t: "ping", id: this.#nextPingId() });
      this.#pump();
    }
    const next = Math.min(this.#lastSent + this.#hb, dead);
    this.#heartbeatTimer = setTimeout(() => this.#heartbeat(), Math.max(5, next - now()));
  }

  #nextPingId() {
    this.#pingId = this.#pingId >= MAX_PING_ID ? 0 : this.#pingId + 1;
    return this.#pingId;
  }

  /** @param {number} id a pong proves every sub/unsub before its ping applied (§2.6) */
  #onPong(id) {
    const done = this.#confirms.filter((confirm) => confirm.id <= id);
    this.#confirms = this.#confirms.filter((confirm) => confirm.id > id);
    for (const confirm of done) confirm.resolve();
  }

  // ---- §2.7: subscriptions ------------------------------------------------------------

  /**
   * @param {"sub" | "unsub"} t
   * @param {string[]} topics
   * @returns {Promise<void>}
   */
  #changeTopics(t, topics) {
    if (this.#state === "closed") return Promise.reject(this.#closedError ?? new ClosedError(1000, ""));
    this.#saveSoon();
    if (topics.length === 0 || !this.#link?.welcomed) return Promise.resolve(); // the next hello restates the set
    for (let i = 0; i < topics.length; i += MAX_TOPICS_PER_FRAME) {
      this.#control.push({ t, topics: topics.slice(i, i + MAX_TOPICS_PER_FRAME) });
    }
    const id = this.#nextPingId();
    this.#control.push({ t: "ping", id });
    this.#schedulePump();
    return new Promise((resolve, reject) => this.#confirms.push({ id, resolve, reject }));
  }

  // ---- §2.9: errors -------------------------------------------------------------------

  /** @param {Record<string, unknown>} frame */
  #onError(frame) {
    this.#stats.errors++;
    const code = typeof frame.code === "string" ? frame.code : "error";
    const msg = typeof frame.msg === "string" ? frame.msg : code;
    const id = typeof frame.id === "string" ? frame.id : undefined;
    const pending = id === undefined ? undefined : this.#requests.get(id);
    if (id !== undefined && pending) {
      // e.g. unknown_target: the request fails at once (§2.9).
      this.#requests.delete(id);
      clearTimeout(pending.timer);
      pending.reject(new RemoteError(code, msg));
    }
    this.#emit("error", { code, msg, seq: isInt(frame.seq) ? frame.seq : undefined, id });
  }

  // ---- §5: close codes and reconnecting -----------------------------------------------

  /**
   * We give up on a link ourselves (silent hub, gap, no welcome): close it
   * without `bye` (the session stays, Q&A "Leaving without bye") and reconnect.
   * @param {Link} link
   * @param {string} reason
   */
  #abandon(link, reason) {
    if (link !== this.#link) return;
    this.#dropSocket(link, true, reason);
    this.#linkEnded(link, 1006, reason);
  }

  /**
   * Close a socket we no longer listen to: with a close frame (1000, no `bye`:
   * the session stays), or `abrupt`ly when the link is dead (Node's `ws` has
   * `terminate()`; a browser's `close()` does not wait either).
   * @param {Link} link
   * @param {boolean} abrupt
   * @param {string} reason
   */
  #dropSocket(link, abrupt, reason) {
    const sock = link.sock;
    sock.onopen = sock.onmessage = sock.onclose = null; // onerror stays: `ws` throws an error nobody listens to
    try {
      const terminate = /** @type {{terminate?: unknown}} */ (/** @type {unknown} */ (sock)).terminate;
      if (abrupt && typeof terminate === "function") terminate.call(sock);
      else sock.close(1000, reason.slice(0, 100));
    } catch {
      // already closed
    }
  }

  /**
   * A link ended: decide by its close code (§5, C7).
   * @param {Link} link
   * @param {number} code
   * @param {string} reason
   */
  #linkEnded(link, code, reason) {
    if (link !== this.#link) return;
    this.#link = null;
    if (!link.welcomed) this.#nextUrl(); // that node is down, or refused us: try another
    clearTimeout(link.timer);
    this.#stopLinkTimers();
    if (this.#closing) {
      // A bye answered (1000), or no bye wanted: done. A cut while leaving: try again.
      if (!this.#closing.endSession || code === 1000 || now() >= this.#closing.deadline) {
        if (this.#closing.endSession && code === 1000 && link.byeSent) this.#forgetSession();
        this.#emit("disconnected", { code, reason, reconnect: false, delay: null });
        this.#finish(code, reason, null);
      } else {
        this.#retry(code, reason);
      }
      return;
    }
    if (NO_RECONNECT.has(code)) {
      this.#emit("disconnected", { code, reason, reconnect: false, delay: null });
      this.#finish(code, reason, new ClosedError(code, reason));
      return;
    }
    if (code === SESSION_VIOLATION) {
      // C7: the session is broken; start a new one (our unacknowledged messages
      // are renumbered after the next welcome).
      this.#sid = null;
      this.#epoch = 0;
      this.#epochKey = "";
      this.#received = this.#taken = this.#ackSent = 0;
      this.#saveSoon();
    }
    this.#retry(code, reason);
  }

  /** The next of several hub URLs (a cluster's nodes) for the next attempt. */
  #nextUrl() {
    this.#urlIndex = (this.#urlIndex + 1) % this.#urls.length;
  }

  /**
   * C10: reconnect after an exponential backoff with full jitter.
   * @param {number} code
   * @param {string} reason
   */
  #retry(code, reason) {
    if (this.#state === "closed") return;
    const delay = backoffDelay(this.#attempt++, this.#backoffBase, this.#backoffCap, this.#random);
    this.#setState("disconnected");
    this.#emit("disconnected", { code, reason, reconnect: true, delay });
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = undefined;
      void this.#openLink();
    }, delay);
  }

  #stopLinkTimers() {
    clearTimeout(this.#heartbeatTimer);
    clearTimeout(this.#ackTimer);
    this.#heartbeatTimer = this.#ackTimer = undefined;
    this.#ackDue = false;
    this.#pongs = [];
    this.#control = []; // sub/unsub are restated by the next hello
  }

  /**
   * Stop for good (the caller has emitted `disconnected` if a link was up).
   * @param {number} code
   * @param {string} reason
   * @param {ClosedError | null} error
   */
  #finish(code, reason, error) {
    if (this.#state === "closed") return;
    const link = this.#link;
    if (link) {
      this.#link = null;
      clearTimeout(link.timer);
    }
    if (link) this.#dropSocket(link, true, reason);
    clearTimeout(this.#reconnectTimer);
    clearTimeout(this.#closeTimer);
    this.#stopLinkTimers();
    this.#setState("closed");
    this.#saveNow();
    const closed = error ?? new ClosedError(code, reason);
    this.#closedError = closed;
    for (const [, pending] of this.#requests) {
      clearTimeout(pending.timer);
      pending.reject(closed);
    }
    this.#requests.clear();
    for (const waiter of this.#connectWaiters.splice(0)) waiter.reject(closed);
    for (const waiter of this.#flushWaiters.splice(0)) waiter.reject(closed);
    for (const confirm of this.#confirms.splice(0)) confirm.reject(closed);
    for (const waiter of this.#waiters.splice(0)) waiter({ done: true, value: undefined });
    this.#emit("closed", { code, reason, error });
    this.#closeResolve();
  }

  // ---- §4: what survives a reload -----------------------------------------------------

  /** Read the session from `storage` (sid, epoch, hand-over mark, outbox, topics). */
  #load() {
    if (!this.#storage) return;
    try {
      const raw = this.#storage.getItem(this.#storageKey);
      if (!raw) return;
      const s = JSON.parse(raw);
      if (!isObject(s) || s.v !== STATE_VERSION) return;
      if (this.#id !== null && s.id !== this.#id) return;
      if (!isInt(s.epoch) || !isInt(s.in) || !isInt(s.next, 1) || !Array.isArray(s.out)) return;
      const sid = typeof s.sid === "string" ? s.sid : null;
      this.#id = typeof s.id === "string" ? s.id : this.#id;
      this.#sid = sid;
      this.#epoch = sid === null ? 0 : s.epoch;
      this.#epochKey = sid === null ? "" : `${sid}/${s.epoch}`;
      this.#received = this.#taken = sid === null ? 0 : s.in;
      this.#nextSeq = s.next;
      this.#outbox = s.out.map((/** @type {[number, string, boolean?]} */ [seq, json, bounded]) => ({
        seq,
        json,
        size: utf8Length(json),
        bounded: bounded !== false,
      }));
      this.#bounded = this.#outbox.filter((entry) => entry.bounded).length;
      if (isInt(s.max_size, 1)) this.#hubMaxSize = s.max_size;
      if (Array.isArray(s.topics)) for (const topic of s.topics) this.#topics.add(String(topic));
    } catch (error) {
      this.#emit("error", { code: "storage", msg: `the stored session is unreadable: ${String(error)}` });
    }
  }

  #saveSoon() {
    if (!this.#storage) return;
    this.#dirty = true;
    if (this.#saveScheduled) return;
    this.#saveScheduled = true;
    queueMicrotask(() => {
      this.#saveScheduled = false;
      this.#saveNow();
    });
  }

  #saveNow() {
    if (!this.#storage || !this.#dirty) return;
    this.#dirty = false;
    const state = {
      v: STATE_VERSION,
      id: this.#id,
      sid: this.#sid,
      epoch: this.#epoch,
      in: this.#taken, // what the application took: the next hello.ack
      next: this.#nextSeq,
      out: this.#outbox.map((entry) => (entry.bounded ? [entry.seq, entry.json] : [entry.seq, entry.json, false])),
      topics: [...this.#topics],
      max_size: this.#hubMaxSize,
    };
    try {
      this.#storage.setItem(this.#storageKey, JSON.stringify(state));
    } catch (error) {
      this.#emit("error", { code: "storage", msg: `cannot save the session: ${String(error)}` });
    }
  }

  /** After `bye` (§2.8): the session is gone on the hub; forget it here too. */
  #forgetSession() {
    this.#sid = null;
    this.#epoch = 0;
    this.#dirty = false;
    try {
      this.#storage?.removeItem(this.#storageKey);
    } catch {
      // nothing to forget
    }
  }

  // ---- Events -------------------------------------------------------------------------

  /** @param {ClientState} state */
  #setState(state) {
    this.#state = state;
  }

  /**
   * @template {keyof GenesisEvents} K
   * @param {K} name
   * @param {GenesisEvents[K]} detail
   */
  #emit(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }
}
