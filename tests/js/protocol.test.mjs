// The client's rules (docs/protocol.md §8, C1–C13) against a scripted hub: an
// in-memory WebSocket class whose "hub" side the test drives frame by frame, for
// what a real hub does not do on demand (4007, a gap, a small window, ...).

import assert from "node:assert/strict";
import { afterEach, describe, test } from "node:test";

import { GenesisClient, backoffDelay, utf8Length } from "../../genesis_trio/static/genesis.js";
import { memoryStorage, within } from "./support.mjs";

const T = { timeout: 10_000 };

/** @typedef {Record<string, any>} Frame */

/** A scripted hub: every socket the client opens is a FakeSocket the test can drive. */
class ScriptedHub {
  /** @type {FakeSocket[]} */
  links = [];
  /** @type {(() => void)[]} */
  #linkWaiters = [];

  /** The WebSocket class to hand to the client. */
  get WebSocket() {
    const hub = this;
    return class extends FakeSocket {
      /** @param {string} url @param {string | string[]} [protocols] */
      constructor(url, protocols) {
        super(url, protocols);
        hub.links.push(this);
        for (const waiter of hub.#linkWaiters.splice(0)) waiter();
      }
    };
  }

  /** The client's `index`th socket, once it is opened. */
  /**
   * @param {number} [index]
   * @returns {Promise<FakeSocket>}
   */
  nextLink(index = 0) {
    if (this.links.length > index) return Promise.resolve(this.links[index]);
    /** @type {Promise<FakeSocket>} */
    const opened = new Promise((resolve) => {
      const check = () => (this.links.length > index ? resolve(this.links[index]) : this.#linkWaiters.push(check));
      this.#linkWaiters.push(check);
    });
    return within(opened, 5000, `link ${index}`);
  }
}

class FakeSocket {
  protocol = "genesis.v1.json";
  readyState = 0;
  binaryType = "blob";
  /** @type {((event: any) => void) | null} */ onopen = null;
  /** @type {((event: any) => void) | null} */ onmessage = null;
  /** @type {((event: any) => void) | null} */ onclose = null;
  /** @type {((event: any) => void) | null} */ onerror = null;
  /** @type {Frame[]} what the client sent */
  sent = [];
  /** @type {{code?: number, reason?: string} | null} */
  closedByClient = null;
  /** @type {(() => void)[]} */
  #waiters = [];

  /** @param {string} url @param {string | string[]} [protocols] */
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    queueMicrotask(() => {
      this.readyState = 1;
      this.onopen?.({});
    });
  }

  /** @param {string} data */
  send(data) {
    this.sent.push(JSON.parse(data));
    for (const waiter of this.#waiters.splice(0)) waiter();
  }

  /** @param {number} [code] @param {string} [reason] */
  close(code, reason) {
    this.closedByClient = { code, reason };
    this.readyState = 3;
  }

  // ---- the hub's side ----

  /** @param {Frame} frame */
  deliver(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  /** @param {number} code @param {string} [reason] */
  drop(code, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /**
   * Wait until the client sent a frame matching `match`; return it.
   * @param {(frame: Frame) => boolean} match
   * @param {string} what
   * @returns {Promise<Frame>}
   */
  waitFor(match, what) {
    const found = () => this.sent.find(match);
    return within(
      new Promise((resolve) => {
        const check = () => {
          const frame = found();
          if (frame) resolve(frame);
          else this.#waiters.push(check);
        };
        check();
      }),
      5000,
      what,
    );
  }

  /** Every message body the client sent, as [seq, body]. */
  bodies() {
    /** @type {[number, Frame][]} */
    const out = [];
    for (const f of this.sent) {
      if (f.t === "msg") out.push([f.seq, f.m]);
      if (f.t === "batch") f.m.forEach((/** @type {Frame} */ m, /** @type {number} */ i) => out.push([f.seq + i, m]));
    }
    return out;
  }

  /**
   * Answer the hello with a welcome.
   * @param {Partial<Frame>} [fields]
   */
  async welcome(fields = {}) {
    const hello = await this.waitFor((f) => f.t === "hello", "hello");
    this.deliver({
      t: "welcome",
      v: 1,
      id: hello.id ?? "anon-1",
      sid: "S1",
      epoch: 1,
      recovered: false,
      ack: 0,
      hb: 5000,
      window: 1000,
      max_size: 1 << 20,
      node: "scripted",
      ...fields,
    });
    return hello;
  }
}

/** @type {GenesisClient[]} */
let opened = [];
afterEach(async () => {
  await Promise.all(opened.map((c) => c.close())); // even after a failure: no timer left running
  opened = [];
});

/**
 * @param {ScriptedHub} hub
 * @param {string | null} id
 * @param {import("../../genesis_trio/static/genesis.js").GenesisOptions} [options]
 */
function scripted(hub, id, options = {}) {
  const c = new GenesisClient("ws://hub.invalid/ws", id, {
    WebSocket: hub.WebSocket,
    backoffBase: 1,
    backoffCap: 5,
    ...options,
  });
  opened.push(c);
  return c;
}

describe("hello and welcome (C1, §2.1)", () => {
  test("the first frame is hello with the subprotocol, id, topics and token", T, async () => {
    const hub = new ScriptedHub();
    const c = scripted(hub, "sensor-1", { topics: ["cmd"], token: "secret", maxSize: 4096 });
    void c.connect();
    const link = await hub.nextLink();
    assert.deepEqual(link.protocols, ["genesis.v1.json"]);
    const hello = await link.welcome();
    assert.deepEqual(hello, {
      t: "hello",
      v: 1,
      id: "sensor-1",
      sid: null,
      epoch: 0,
      ack: 0,
      topics: ["cmd"],
      token: "secret",
      max_size: 4096,
    });
    assert.equal(link.sent.indexOf(hello), 0);
    await c.connect();
    assert.equal(c.state, "connected");
    await c.close();
    assert.deepEqual(link.closedByClient, { code: 1000, reason: "closed by the client" });
  });
});

describe("sequence numbers (C2, C3, C4, C8)", () => {
  test("numbering, the window, duplicates, a lone ack", T, async () => {
    const hub = new ScriptedHub();
    const c = scripted(hub, "w");
    const inbox = c.messages();
    void c.connect();
    const link = await hub.nextLink();
    await link.welcome({ window: 3 });
    for (let n = 1; n <= 7; n++) await c.send("peer", "n", n);
    await link.waitFor((f) => f.t === "msg" || f.t === "batch", "messages");
    await Promise.resolve();
    assert.deepEqual(link.bodies().map(([seq]) => seq), [1, 2, 3]); // C3: window 3
    link.deliver({ t: "ack", seq: 2 });
    await link.waitFor(() => link.bodies().length === 5, "two more after ack 2");
    assert.deepEqual(link.bodies().map(([seq, m]) => [seq, m.data]), [[1, 1], [2, 2], [3, 3], [4, 4], [5, 5]]);

    link.deliver({ t: "msg", seq: 1, m: { type: "x", from: "peer", data: "a" } });
    link.deliver({ t: "msg", seq: 1, m: { type: "x", from: "peer", data: "a" } }); // C4: a duplicate
    link.deliver({ t: "batch", seq: 1, m: [{ type: "x", data: "a" }, { type: "x", data: "b" }] });
    assert.equal((await inbox.next()).value?.data, "a");
    assert.equal((await inbox.next()).value?.data, "b");
    assert.equal(c.stats.duplicates, 2);
    // Nothing to send: a lone ack (C8).
    await link.waitFor((f) => f.t === "ack" && f.seq === 2, "ack 2");
    await c.close();
  });

  test("leaving a for-await loop drops nothing: the next message waits for the next iterator", T, async () => {
    const hub = new ScriptedHub();
    const c = scripted(hub, "loop");
    let events = 0;
    c.listen("message", () => events++);
    const firstLoop = c.messages(); // before connecting: pull mode from the start
    void c.connect();
    const link = await hub.nextLink();
    await link.welcome();
    for (const seq of [1, 2, 3]) link.deliver({ t: "msg", seq, m: { type: "x", data: seq } });
    /** @type {unknown[]} */
    const got = [];
    for await (const m of firstLoop) {
      got.push(m.data);
      break;
    }
    await link.waitFor((f) => f.t === "ack" && f.seq === 1, "ack 1");
    for await (const m of c.messages()) {
      got.push(m.data);
      if (got.length === 3) break;
    }
    assert.deepEqual(got, [1, 2, 3]);
    assert.equal(events, 0);
    assert.ok(link.sent.filter((f) => f.t === "ack").every((f) => f.seq !== 2), "2 was acknowledged only with 3");
  });

  test("acknowledgements ride on outgoing messages, or go alone within ~20 ms (C8)", T, async () => {
    const hub = new ScriptedHub();
    const c = scripted(hub, "ack");
    const inbox = c.messages();
    void c.connect();
    const link = await hub.nextLink();
    await link.welcome({ window: 1000 });
    link.deliver({ t: "msg", seq: 1, m: { type: "x", data: "a" } });
    assert.equal((await inbox.next()).value?.data, "a");
    await c.send("peer", "answer", 1); // in the same task: the ack rides on it
    const riding = await link.waitFor((f) => f.t === "msg", "our message");
    assert.equal(riding.ack, 1);
    assert.equal(link.sent.some((f) => f.t === "ack"), false);

    link.deliver({ t: "batch", seq: 2, m: [{ type: "x", data: "b" }, { type: "x", data: "c" }] });
    const started = performance.now();
    assert.equal((await inbox.next()).value?.data, "b");
    assert.equal((await inbox.next()).value?.data, "c");
    await link.waitFor((f) => f.t === "ack" && f.seq === 3, "ack 3");
    const elapsed = performance.now() - started;
    assert.ok(elapsed >= 15 && elapsed < 500, `acknowledged after ${elapsed} ms`);
    assert.equal(link.sent.filter((f) => f.t === "ack").length, 1, "one ack for both");
  });

  test("resume: hello names sid/epoch/ack; resend after welcome.ack with the same numbers", T, async () => {
    const hub = new ScriptedHub();
    const c = scripted(hub, "r");
    void c.connect();
    const one = await hub.nextLink();
    await one.welcome({ sid: "S", epoch: 4 });
    for (let n = 1; n <= 5; n++) await c.send("peer", "n", n);
    await one.waitFor(() => one.bodies().length === 5, "5 messages");
    one.deliver({ t: "batch", seq: 1, m: [{ type: "x" }, { type: "x" }, { type: "x" }] });
    one.drop(1006);

    const two = await hub.nextLink(1);
    const hello = await two.welcome({ sid: "S", epoch: 4, recovered: true, ack: 2 });
    assert.deepEqual([hello.sid, hello.epoch, hello.ack], ["S", 4, 3]);
    await two.waitFor(() => two.bodies().length === 3, "3 resent");
    assert.deepEqual(two.bodies().map(([seq, m]) => [seq, m.data]), [[3, 3], [4, 4], [5, 5]]);
    await c.close();
  });

  test("recovered: false renumbers the unacknowledged messages from 1", T, async () => {
    const hub = new ScriptedHub();
    const c = scripted(hub, "n");
    const events = /** @type {any[]} */ ([]);
    c.listen("connected", (d) => events.push(d));
    void c.connect();
    const one = await hub.nextLink();
    await one.welcome({ sid: "S", epoch: 1 });
    for (let n = 1; n <= 4; n++) await c.send("peer", "n", n);
    await one.waitFor(() => one.bodies().length === 4, "4 messages");
    one.deliver({ t: "ack", seq: 2 });
    one.drop(1006);
    const two = await hub.nextLink(1);
    await two.welcome({ sid: "S", epoch: 2, recovered: false, reason: "truncated" });
    await two.waitFor(() => two.bodies().length === 2, "renumbered");
    assert.deepEqual(two.bodies().map(([seq, m]) => [seq, m.data]), [[1, 3], [2, 4]]);
    assert.deepEqual(
      events.map((e) => [e.recovered, e.epoch, e.reason, e.resumed]),
      [
        [false, 1, null, false],
        [false, 2, "truncated", true],
      ],
    );
    await c.close();
  });

  test("a gap in the hub's numbers drops the link and resumes from R", T, async () => {
    const hub = new ScriptedHub();
    const c = scripted(hub, "g");
    void c.connect();
    const one = await hub.nextLink();
    await one.welcome({ sid: "S", epoch: 1 });
    one.deliver({ t: "msg", seq: 1, m: { type: "x" } });
    one.deliver({ t: "msg", seq: 3, m: { type: "x" } });
    const two = await hub.nextLink(1);
    const hello = await two.waitFor((f) => f.t === "hello", "hello");
    assert.deepEqual([hello.sid, hello.ack], ["S", 1]);
    assert.equal(one.closedByClient?.code, 1000);
    await c.close();
  });

  test("a resume's smaller window: send welcome.ack + window, the rest as acks arrive", T, async () => {
    const hub = new ScriptedHub();
    const c = scripted(hub, "sw");
    void c.connect();
    const one = await hub.nextLink();
    await one.welcome({ sid: "S", window: 100 });
    for (let n = 1; n <= 10; n++) await c.send("peer", "n", n);
    await one.waitFor(() => one.bodies().length === 10, "10 sent");
    one.drop(1011);
    const two = await hub.nextLink(1);
    await two.welcome({ sid: "S", recovered: true, ack: 3, window: 2 });
    await two.waitFor(() => two.bodies().length === 2, "2 resent");
    await Promise.resolve();
    assert.deepEqual(two.bodies().map(([seq]) => seq), [4, 5]);
    two.deliver({ t: "ack", seq: 5 });
    await two.waitFor(() => two.bodies().length === 4, "2 more");
    assert.deepEqual(two.bodies().map(([seq]) => seq), [4, 5, 6, 7]);
    await c.close();
  });
});

describe("close codes (§5, C7) and reconnecting (C10)", () => {
  for (const code of [1002, 1008, 4000, 4001, 4008]) {
    test(`${code}: closed, no reconnect`, T, async () => {
      const hub = new ScriptedHub();
      const c = scripted(hub, "cc");
      const pending = c.request("peer", "q", null, { timeout: 5000 });
      void c.connect();
      const link = await hub.nextLink();
      await link.welcome();
      const closed = c.once("closed", { timeout: 5000 });
      link.drop(code, "because");
      const detail = await closed;
      assert.equal(detail.code, code);
      assert.equal(detail.error?.code, "closed");
      assert.equal(c.state, "closed");
      await assert.rejects(pending, { name: "ClosedError", closeCode: code });
      assert.equal(hub.links.length, 1);
    });
  }

  test("4007: reconnect without sid; the queue is renumbered", T, async () => {
    const hub = new ScriptedHub();
    const c = scripted(hub, "sv");
    void c.connect();
    const one = await hub.nextLink();
    await one.welcome({ sid: "S", epoch: 3 });
    for (let n = 1; n <= 3; n++) await c.send("peer", "n", n);
    await one.waitFor(() => one.bodies().length === 3, "3 sent");
    one.deliver({ t: "msg", seq: 1, m: { type: "x" } });
    one.deliver({ t: "ack", seq: 1 });
    one.drop(4007, "sequence");
    const two = await hub.nextLink(1);
    const hello = await two.welcome({ sid: "T", epoch: 1 });
    assert.deepEqual([hello.sid, hello.epoch, hello.ack], [null, 0, 0]);
    await two.waitFor(() => two.bodies().length === 2, "renumbered");
    assert.deepEqual(two.bodies().map(([seq, m]) => [seq, m.data]), [[1, 2], [2, 3]]);
    await c.close();
  });

  test("4009: a fresh credential from the token provider, and resume", T, async () => {
    const hub = new ScriptedHub();
    let n = 0;
    const c = scripted(hub, "tk", { token: async () => `token-${++n}` });
    void c.connect();
    const one = await hub.nextLink();
    assert.equal((await one.welcome({ sid: "S" })).token, "token-1");
    one.drop(4009, "credential expired");
    const two = await hub.nextLink(1);
    const hello = await two.welcome({ sid: "S", recovered: true });
    assert.deepEqual([hello.token, hello.sid], ["token-2", "S"]);
    await c.close();
  });

  for (const code of [1000, 1001, 1006, 1011, 1013, 4003, 4004, 4005, 4006]) {
    test(`${code}: reconnect and resume`, T, async () => {
      const hub = new ScriptedHub();
      const c = scripted(hub, "rc");
      void c.connect();
      const one = await hub.nextLink();
      await one.welcome({ sid: "S" });
      const down = c.once("disconnected", { timeout: 5000 });
      one.drop(code, "x");
      const detail = await down;
      assert.deepEqual([detail.code, detail.reconnect], [code, true]);
      assert.ok(detail.delay !== null && detail.delay >= 0 && detail.delay <= 5);
      const two = await hub.nextLink(1);
      assert.equal((await two.welcome({ sid: "S", recovered: true })).sid, "S");
      await c.close();
    });
  }

  test("backoff: exponential, full jitter, capped", () => {
    const half = () => 0.5;
    assert.deepEqual(
      [0, 1, 2, 3, 7, 8, 50].map((attempt) => backoffDelay(attempt, 100, 10_000, half)),
      [50, 100, 200, 400, 5000, 5000, 5000],
    );
    assert.equal(backoffDelay(3, 100, 10_000, () => 0), 0);
  });
});

describe("heartbeats (C5, C9)", () => {
  test("pongs, a ping when silent for hb, and a silent hub is dropped", T, async () => {
    const hub = new ScriptedHub();
    const c = scripted(hub, "hb", { silenceGrace: 100 });
    void c.connect();
    const one = await hub.nextLink();
    await one.welcome({ sid: "S", hb: 40 });
    one.deliver({ t: "ping", id: 2 ** 53 - 1 });
    await one.waitFor((f) => f.t === "pong" && f.id === 2 ** 53 - 1, "pong");
    await one.waitFor((f) => f.t === "ping", "the client's ping");
    const two = await hub.nextLink(1); // nothing came back for hb + grace
    assert.equal(one.closedByClient?.code, 1000);
    assert.equal((await two.welcome({ sid: "S", recovered: true })).sid, "S");
    await c.close();
  });
});

describe("requests and leaving", () => {
  test("a request without a handler is answered no_handler (C11); error frames fail requests", T, async () => {
    const hub = new ScriptedHub();
    const c = scripted(hub, "rq");
    void c.connect();
    const link = await hub.nextLink();
    await link.welcome();
    link.deliver({ t: "msg", seq: 1, m: { type: "ask", from: "other", id: "q1", data: 1 } });
    const reply = await link.waitFor((f) => f.t === "msg" && f.m.re === "q1", "reply");
    assert.deepEqual(reply.m, { type: "ask", to: "other", re: "q1", error: { code: "no_handler", msg: "no handler for 'ask'" } });
    assert.equal(reply.ack, 1);
    const asking = c.request("ghost", "q");
    const sent = await link.waitFor((f) => f.t === "msg" && f.m.type === "q", "request");
    assert.equal(sent.m.from, undefined); // C6
    link.deliver({ t: "error", code: "unknown_target", msg: "no component 'ghost'", seq: sent.seq, id: sent.m.id });
    await assert.rejects(asking, { name: "RemoteError", code: "unknown_target" });
    await c.close();
  });

  test("close({endSession}): the queue, then bye (§2.8); storage is cleared", T, async () => {
    const hub = new ScriptedHub();
    const storage = memoryStorage();
    const c = scripted(hub, "bye", { storage });
    await c.send("peer", "last", 1); // queued before connecting: kept in storage
    await c.send("peer", "last", 2);
    assert.match(String(storage.getItem("genesis:bye")), /last/);
    void c.connect();
    const link = await hub.nextLink();
    await link.welcome({ window: 1 });
    const closing = c.close({ endSession: true });
    await assert.rejects(c.send("peer", "late", 3), { name: "ClosedError" });
    await link.waitFor((f) => f.t === "msg", "the first queued message");
    assert.equal(link.sent.some((f) => f.t === "bye"), false); // the second waits for the window
    link.deliver({ t: "ack", seq: 1 });
    await link.waitFor((f) => f.t === "bye", "bye");
    assert.deepEqual(link.sent.slice(-2).map((f) => [f.t, f.seq]), [["msg", 2], ["bye", undefined]]);
    link.drop(1000, "bye");
    await closing;
    assert.equal(storage.getItem("genesis:bye"), null);
    assert.equal(c.state, "closed");
  });
});

test("utf8Length counts bytes as the hub does", () => {
  for (const text of ["", "abc", "é", "✓", "𝄞", "a\u{1F600}b", JSON.stringify("\ud800")]) {
    assert.equal(utf8Length(text), Buffer.byteLength(text, "utf8"), text);
  }
});
