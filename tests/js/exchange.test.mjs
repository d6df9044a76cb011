// The browser client against a real hub: messaging, request/reply, pub/sub and
// presence, the offline queue's bound, takeover, errors. One hub for the file.

import assert from "node:assert/strict";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";

import {
  ClosedError,
  GenesisClient,
  QueueFullError,
  RemoteError,
  TimeoutError,
} from "../../genesis_trio/static/genesis.js";
import { client, sendNumbered, sequenceProblem, startHub, take, tempDir, within } from "./support.mjs";

const T = { timeout: 30_000 }; // every test is bounded

/** @type {import("./support.mjs").Hub} */
let hub;
const tmp = tempDir();
/** @type {GenesisClient[]} */
const clients = [];

/**
 * A client of this file's hub, closed after the file.
 * @param {string | null} id
 * @param {import("../../genesis_trio/static/genesis.js").GenesisOptions} [options]
 */
function open(id, options) {
  const c = client(hub.url, id, options);
  clients.push(c);
  return c;
}

before(async () => {
  hub = await startHub({ store: path.join(tmp.dir, "hub.sqlite3"), args: ["--heartbeat-interval", "0.5"] });
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await hub.stop();
  tmp.cleanup();
});

describe("messaging", () => {
  test("two clients exchange 500 messages each way, exactly once and in order", T, async () => {
    const a = open("ex-a");
    const b = open("ex-b");
    const inA = a.messages();
    const inB = b.messages();
    await Promise.all([a.connect(), b.connect()]);
    await Promise.all([sendNumbered(a, "ex-b", 0, 500), sendNumbered(b, "ex-a", 0, 500)]);
    const [gotA, gotB] = await Promise.all([take(inA, 500, 20_000), take(inB, 500, 20_000)]);
    assert.equal(sequenceProblem(gotB, 0, 500), "");
    assert.equal(sequenceProblem(gotA, 0, 500), "");
    assert.deepEqual(
      { type: gotB[0].type, from: gotB[0].from, to: gotB[0].to },
      { type: "num", from: "ex-a", to: "ex-b" },
    );
    await within(Promise.all([a.flush(), b.flush()]), 5000, "every message acknowledged");
    assert.equal(a.pending, 0);
    assert.equal(a.stats.duplicates + b.stats.duplicates, 0);
  });

  test("connected reports a new session; a message to oneself comes back", T, async () => {
    const c = open("ex-self");
    const connected = c.once("connected", { timeout: 5000 });
    const inbox = c.messages();
    await c.connect();
    const detail = await connected;
    assert.equal(detail.recovered, false);
    assert.equal(detail.epoch, 1);
    assert.equal(detail.resumed, false);
    assert.equal(typeof c.sid, "string");
    await c.send("ex-self", "note", { text: "héllo ✓" });
    const [note] = await take(inbox, 1, 5000);
    assert.deepEqual(note, { type: "note", to: "ex-self", data: { text: "héllo ✓" }, from: "ex-self" });
  });

  test("an anonymous client gets an id from the hub", T, async () => {
    const c = open(null);
    await c.connect();
    assert.match(String(c.id), /^anon-/);
  });

  test("without messages(), plain messages no handler takes go to the `message` event", T, async () => {
    const c = open("ex-event");
    await c.connect();
    const got = c.once("message", { timeout: 5000 });
    await c.send("ex-event", "plain", 7);
    assert.deepEqual(await got, { type: "plain", to: "ex-event", data: 7, from: "ex-event" });
  });

  test("a message to an unknown component: an error event naming its seq; the number is consumed", T, async () => {
    const c = open("ex-unknown");
    await c.connect();
    const error = c.once("error", { timeout: 5000 });
    await c.send("nobody-here", "x", 1);
    const detail = await error;
    assert.equal(detail.code, "unknown_target");
    assert.equal(detail.seq, 1);
    await within(c.flush(), 5000, "the consumed number acknowledged");
  });

  test("a message too large for the hub is refused before it gets a number", T, async () => {
    const c = open("ex-large");
    await c.connect();
    await assert.rejects(c.send("ex-large", "big", "x".repeat(1024 * 1024)), RangeError);
    await assert.rejects(c.send("ex-large", "", 1), TypeError);
    await assert.rejects(c.send("-bad", "t", 1), TypeError);
    await assert.rejects(c.publish("$presence", "t", 1), TypeError);
    assert.equal(c.pending, 0);
  });
});

describe("request/reply", () => {
  test("both ways, with handlers' return values, errors and no_handler", T, async () => {
    const a = open("rr-a");
    const b = open("rr-b");
    a.on("add", (m) => {
      const { x, y } = /** @type {{x: number, y: number}} */ (m.data);
      return x + y;
    });
    b.on("upper", async (m) => String(m.data).toUpperCase());
    b.on("fail", () => {
      throw Object.assign(new Error("no can do"), { code: "refused" });
    });
    b.on("crash", async () => {
      throw new Error("boom");
    });
    await Promise.all([a.connect(), b.connect()]);

    assert.equal(await b.request("rr-a", "add", { x: 2, y: 3 }), 5);
    assert.equal(await a.request("rr-b", "upper", "abc"), "ABC");
    const [p, q] = await Promise.all([a.request("rr-b", "upper", "p"), b.request("rr-a", "add", { x: 1, y: 1 })]);
    assert.deepEqual([p, q], ["P", 2]);

    await assert.rejects(a.request("rr-b", "fail"), (error) => {
      assert.ok(error instanceof RemoteError);
      assert.equal(error.code, "refused");
      assert.equal(error.message, "no can do");
      return true;
    });
    await assert.rejects(a.request("rr-b", "crash"), { name: "RemoteError", code: "handler_error", message: "boom" });
    // C11: nothing on b handles "unknown": b answers no_handler itself.
    await assert.rejects(a.request("rr-b", "unknown"), { name: "RemoteError", code: "no_handler" });
    // The hub's own no_handler reply, and the error frame for an unknown component.
    await assert.rejects(a.request("$hub", "no-such-thing"), { name: "RemoteError", code: "no_handler" });
    await assert.rejects(a.request("rr-nobody", "add", {}), { name: "RemoteError", code: "unknown_target" });
  });

  test("timeouts, and a late reply is dropped", T, async () => {
    const a = open("to-a");
    const b = open("to-b");
    /** @type {(value: string) => void} */
    let release = () => {};
    const held = new Promise((resolve) => {
      release = resolve;
    });
    b.on("slow", () => held);
    b.on("fast", () => "fast");
    await Promise.all([a.connect(), b.connect()]);

    const started = performance.now();
    await assert.rejects(a.request("to-b", "slow", null, { timeout: 200 }), TimeoutError);
    assert.ok(performance.now() - started >= 190);
    release("too late");
    // b's late reply is in b's stream before the reply to "fast": once that
    // arrives, the late one has been seen (and dropped).
    assert.equal(await a.request("to-b", "fast"), "fast");
    assert.equal(a.stats.lateReplies, 1);
  });

  test("a reader busy elsewhere does not hold replies back", T, async () => {
    const a = open("rd-a");
    const b = open("rd-b");
    b.on("echo", (m) => m.data);
    const inbox = a.messages();
    await Promise.all([a.connect(), b.connect()]);
    await b.send("rd-a", "plain", 1);
    await b.send("rd-a", "plain", 2);
    const [first] = await take(inbox, 1, 5000);
    assert.equal(first.data, 1);
    // The iterator is not reading (plain 2 waits for it), yet the reply arrives.
    assert.equal(await a.request("rd-b", "echo", "hi", { timeout: 5000 }), "hi");
    const [second] = await take(inbox, 1, 5000);
    assert.equal(second.data, 2);
  });
});

describe("pub/sub and presence", () => {
  test("subscribe, publish, $presence events, the presence request, unsubscribe", T, async () => {
    const watcher = open("ps-watch", { topics: ["$presence"] });
    await watcher.subscribe("room.1");
    assert.deepEqual(watcher.topics.sort(), ["$presence", "room.1"]);
    const watched = watcher.messages();
    await watcher.connect();

    const member = open("ps-member");
    const memberInbox = member.messages();
    await member.connect();
    /** @param {string} event */
    const presenceOf = async (event) => {
      for (;;) {
        const [m] = await take(watched, 1, 5000, `presence '${event}'`);
        const data = /** @type {{event: string, id?: string}} */ (m.data);
        if (m.type === "presence" && m.topic === "$presence" && data.id === "ps-member" && data.event === event) {
          return data;
        }
      }
    };
    assert.deepEqual((await presenceOf("connected")).id, "ps-member");

    await member.subscribe("room.1"); // resolves once the hub applied it (ping/pong)
    await watcher.publish("room.1", "chat", { text: "hi" });
    const [chat] = await take(memberInbox, 1, 5000);
    assert.deepEqual(chat, { type: "chat", topic: "room.1", data: { text: "hi" }, from: "ps-watch" });
    const own = await take(watched, 1, 5000); // a subscribed publisher gets its own message
    assert.equal(own[0].type, "chat");

    const members = await watcher.presence("room.1");
    assert.deepEqual(
      members.map((m) => [m.id, m.connected]).sort(),
      [
        ["ps-member", true],
        ["ps-watch", true],
      ],
    );

    await member.unsubscribe("room.1");
    await watcher.publish("room.1", "chat", { text: "not for member" });
    await watcher.send("ps-member", "direct", 1);
    const [next] = await take(memberInbox, 1, 5000);
    assert.equal(next.type, "direct"); // the publish after unsubscribe did not reach it

    await member.close({ endSession: true });
    assert.equal((await presenceOf("left")).event, "left");
    const after = await watcher.presence("room.1");
    assert.deepEqual(after.map((m) => m.id), ["ps-watch"]);
  });
});

describe("queue bound, takeover, heartbeats", () => {
  test("the offline queue holds maxPending messages; send rejects beyond", T, async () => {
    const sender = open("q-send", { maxPending: 5 });
    const receiver = open("q-recv");
    const inbox = receiver.messages();
    await receiver.connect();
    await sendNumbered(sender, "q-recv", 0, 5); // not connected yet: queued
    assert.equal(sender.pending, 5);
    await assert.rejects(sender.send("q-recv", "num", { n: 5 }), QueueFullError);
    await assert.rejects(sender.publish("topic", "num", 1), { code: "queue_full" });
    await assert.rejects(sender.request("q-recv", "num", 1), QueueFullError);
    await sender.connect();
    await within(sender.flush(), 5000, "the queue drained");
    assert.equal(sender.pending, 0);
    await sendNumbered(sender, "q-recv", 5, 5);
    assert.equal(sequenceProblem(await take(inbox, 10, 5000), 0, 10), "");
  });

  test("takeover: the replaced client gets 4001 and does not reconnect", T, async () => {
    const first = open("tk");
    await first.connect();
    const closed = first.once("closed", { timeout: 5000 });
    let reconnecting = 0;
    first.listen("connecting", () => reconnecting++);
    const second = open("tk");
    const inbox = second.messages();
    await second.connect();
    const detail = await closed;
    assert.equal(detail.code, 4001);
    assert.ok(detail.error instanceof ClosedError);
    assert.equal(first.state, "closed");
    await assert.rejects(first.send("tk", "x"), ClosedError);
    await assert.rejects(first.connect(), { closeCode: 4001 });
    await second.send("tk", "mine", 1);
    assert.equal((await take(inbox, 1, 5000))[0].type, "mine");
    assert.equal(reconnecting, 0);
    assert.equal(second.state, "connected");
  });

  test("the hub's pings are answered with pongs of the same id (C5)", T, async () => {
    /** @type {{dir: string, frame: {t: string, id?: number}}[]} */
    const seen = [];
    /** @type {() => void} */
    let onSeen = () => {};
    class SpyWebSocket extends WebSocket {
      /** @param {string} url @param {string | string[]} [protocols] */
      constructor(url, protocols) {
        super(url, protocols);
        this.addEventListener("message", (event) => {
          seen.push({ dir: "in", frame: JSON.parse(String(event.data)) });
          onSeen();
        });
      }
      /** @param {string} data */
      send(data) {
        seen.push({ dir: "out", frame: JSON.parse(data) });
        onSeen();
        super.send(data);
      }
    }
    const c = new GenesisClient(hub.url, "hb-spy", { WebSocket: SpyWebSocket });
    clients.push(c);
    await c.connect();
    const answered = new Promise((resolve) => {
      onSeen = () => {
        const ping = seen.find((s) => s.dir === "in" && s.frame.t === "ping");
        if (ping && seen.some((s) => s.dir === "out" && s.frame.t === "pong" && s.frame.id === ping.frame.id)) {
          resolve(ping.frame.id);
        }
      };
    });
    assert.equal(typeof (await within(answered, 5000, "a ping and its pong")), "number");
    assert.equal(seen[0].frame.t, "hello");
  });
});
