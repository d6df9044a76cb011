// The browser client when things break: links cut mid-stream, a hub restart, a
// page reload (a new client over the same storage), a hub that goes silent.
// Numbered messages are checked for anything lost, duplicated or reordered.

import assert from "node:assert/strict";
import path from "node:path";
import { after, before, test } from "node:test";

import { client, memoryStorage, sendNumbered, sequenceProblem, startHub, startProxy, take, tempDir, within } from "./support.mjs";

const tmp = tempDir();
/** @type {import("./support.mjs").Hub} */
let hub;
/** @type {{close(): Promise<void>}[]} */
const cleanups = [];

before(async () => {
  // A short heartbeat, so that a silent hub is noticed in about a second.
  hub = await startHub({ store: path.join(tmp.dir, "shared.sqlite3"), args: ["--heartbeat-interval", "0.5"] });
});

after(async () => {
  for (const thing of cleanups.reverse()) await thing.close();
  await hub.stop();
  tmp.cleanup();
});

/**
 * @template {{close(): Promise<void>}} T
 * @param {T} thing
 * @returns {T}
 */
function closeLater(thing) {
  cleanups.push(thing);
  return thing;
}

test("links cut repeatedly mid-stream: exactly once, in order, both ways", { timeout: 45_000 }, async () => {
  const N = 1500; // per direction
  const proxy = closeLater(await startProxy(hub.port));
  let tokens = 0;
  const token = () => `t${++tokens}`; // asked on every link (no auth here: only counted)
  const a = closeLater(client(proxy.url, "cut-a", { token }));
  const b = closeLater(client(proxy.url, "cut-b"));
  let recovered = 0;
  let fresh = 0;
  let attemptsA = 0;
  a.listen("connecting", () => attemptsA++);
  for (const c of [a, b]) c.listen("connected", (d) => (d.recovered ? recovered++ : fresh++));
  const inA = a.messages();
  const inB = b.messages();
  await Promise.all([a.connect(), b.connect()]);
  assert.equal(fresh, 2);

  // Progress, counted per receiver; waiting for it never sleeps.
  const arrived = { a: 0, b: 0 };
  /** @type {Set<() => void>} */
  const watchers = new Set();
  /** @param {() => boolean} condition @param {string} what */
  const until = (condition, what) =>
    within(
      new Promise((resolve) => {
        const check = () => {
          if (!condition()) return;
          watchers.delete(check);
          resolve(undefined);
        };
        watchers.add(check);
        check();
      }),
      30_000,
      `${what} (arrived: a ${arrived.a}, b ${arrived.b})`,
    );
  /**
   * @param {AsyncIterator<import("../../genesis_trio/static/genesis.js").Message>} inbox
   * @param {"a" | "b"} name
   */
  const receive = async (inbox, name) => {
    /** @type {import("../../genesis_trio/static/genesis.js").Message[]} */
    const got = [];
    while (got.length < N) {
      got.push(...(await take(inbox, 1, 30_000)));
      arrived[name]++;
      poke();
    }
    return got;
  };
  // Senders keep at most 150 messages in flight, so the stream lasts while the links are cut,
  // and send only what the cutter has released: it releases 100 more per direction each time
  // it is ready to cut, so the stream cannot outrun it however fast the hub is (13 cuts or more).
  let released = 150;
  const poke = () => {
    for (const check of [...watchers]) check();
  };
  /**
   * @param {import("../../genesis_trio/static/genesis.js").GenesisClient} sender
   * @param {string} to
   * @param {"a" | "b"} receiver
   */
  const stream = async (sender, to, receiver) => {
    for (let n = 0; n < N; n += 50) {
      await until(() => n < released, `the cutter to release ${n}`);
      await sendNumbered(sender, to, n, 50);
      await until(() => arrived[receiver] >= n - 100, `${receiver} got ${n - 100}`);
    }
  };
  // The cutter: whenever both links pass through the proxy again and 100 more messages
  // arrived, cut them all. (A client's state still reads "connected" for a moment after a
  // cut, and arrivals are counted as the application takes them, so it watches the proxy.)
  let cuts = 0;
  const total = () => arrived.a + arrived.b;
  for (const c of [a, b]) c.listen("connected", poke);
  const cutter = async () => {
    while (total() < 2 * N) {
      await until(
        () => proxy.links >= 2 && a.state === "connected" && b.state === "connected",
        "both links back through the proxy",
      );
      const mark = total();
      released += 100;
      poke();
      await until(() => total() >= Math.min(mark + 100, 2 * N), "100 more messages");
      if (total() < 2 * N && proxy.cut() > 0) cuts++;
    }
  };
  const [gotA, gotB] = await Promise.all([
    receive(inA, "a"),
    receive(inB, "b"),
    stream(a, "cut-b", "b"),
    stream(b, "cut-a", "a"),
    cutter(),
  ]);

  assert.equal(sequenceProblem(gotB, 0, N), "", "a → b");
  assert.equal(sequenceProblem(gotA, 0, N), "", "b → a");
  assert.ok(cuts >= 10, `only ${cuts} cuts`);
  assert.ok(recovered >= cuts, `${recovered} recovered resumes for ${cuts} cuts`);
  assert.equal(fresh, 2, "every resume continued the session exactly");
  assert.equal(tokens, attemptsA, "the token provider is asked on every link");
  assert.ok(a.stats.connects <= attemptsA);
  await within(Promise.all([a.flush(), b.flush()]), 10_000, "everything acknowledged");
});

test("a silent hub is detected (C9) and the session resumes on a new link", { timeout: 20_000 }, async () => {
  const proxy = closeLater(await startProxy(hub.port));
  const c = closeLater(client(proxy.url, "silent", { silenceGrace: 500 }));
  const inbox = c.messages();
  await c.connect();
  const dropped = c.once("disconnected", { timeout: 10_000 });
  const resumed = c.once("connected", { timeout: 15_000 });
  proxy.freeze(); // the link stays open, nothing passes: no frame from the hub
  const detail = await dropped;
  assert.equal(detail.code, 1006);
  assert.match(detail.reason, /nothing from the hub/);
  assert.equal(detail.reconnect, true);
  assert.equal((await resumed).recovered, true);
  await c.send("silent", "after", 1);
  assert.equal((await take(inbox, 1, 5000))[0].type, "after");
});

test("resume after a page reload: a new client over the same storage", { timeout: 30_000 }, async () => {
  const N = 400;
  const storeA = memoryStorage();
  const storeB = memoryStorage();
  const proxy = closeLater(await startProxy(hub.port));

  // The receiver, page 1: takes the first 150 messages, then the page goes away.
  const b1 = closeLater(client(hub.url, "reload-b", { storage: storeB }));
  const inB1 = b1.messages();
  await b1.connect();

  // The sender, page 1, on a link that goes silent: what it sends stays unacknowledged.
  const a1 = closeLater(client(proxy.url, "reload-a", { storage: storeA }));
  await a1.connect();
  await sendNumbered(a1, "reload-b", 0, 200);
  await within(a1.flush(), 10_000, "the first 200 acknowledged");
  proxy.freeze();
  await sendNumbered(a1, "reload-b", 200, N - 200);
  assert.equal(a1.pending, N - 200);
  await a1.close(); // a reload: no bye; the stored outbox survives
  await proxy.close();
  assert.ok(storeA.getItem("genesis:reload-a"), "the sender's session is stored");

  const firstPart = await take(inB1, 150, 10_000);
  await b1.close(); // right after taking the 150th: the rest was never handed over
  const stored = JSON.parse(/** @type {string} */ (storeB.getItem("genesis:reload-b")));
  assert.equal(stored.in, 150);

  // Page 2 of both.
  const a2 = closeLater(client(hub.url, "reload-a", { storage: storeA }));
  const b2 = closeLater(client(hub.url, "reload-b", { storage: storeB }));
  assert.equal(a2.pending, N - 200);
  const resumes = Promise.all([a2.once("connected", { timeout: 10_000 }), b2.once("connected", { timeout: 10_000 })]);
  const inB2 = b2.messages();
  await Promise.all([a2.connect(), b2.connect()]);
  const [ca, cb] = await resumes;
  assert.deepEqual([ca.recovered, ca.resumed, cb.recovered, cb.resumed], [true, true, true, true]);
  assert.equal(b2.sid, stored.sid);

  const secondPart = await take(inB2, N - 150, 15_000);
  assert.equal(sequenceProblem([...firstPart, ...secondPart], 0, N), "");
  await within(a2.flush(), 10_000, "the resent messages acknowledged");

  // Leaving for good clears the stored session.
  await b2.close({ endSession: true });
  assert.equal(storeB.getItem("genesis:reload-b"), null);
});

test("a hub restart (SIGTERM, same port and store): exactly once, in order", { timeout: 45_000 }, async () => {
  const store = path.join(tmp.dir, "restart.sqlite3");
  let own = await startHub({ store });
  const port = own.port;
  const a = client(own.url, "rs-a", { backoffCap: 200 });
  const b = client(own.url, "rs-b", { backoffCap: 200 });
  try {
    const inA = a.messages();
    const inB = b.messages();
    await Promise.all([a.connect(), b.connect()]);
    await Promise.all([sendNumbered(a, "rs-b", 0, 300), sendNumbered(b, "rs-a", 0, 300)]);
    const early = await Promise.all([take(inA, 100, 10_000), take(inB, 100, 10_000)]);

    const aDown = a.once("disconnected", { timeout: 10_000 });
    await own.stop(); // graceful: links are closed with 1001
    assert.equal((await aDown).code, 1001);
    // Sent while the hub is down: queued.
    await Promise.all([sendNumbered(a, "rs-b", 300, 200), sendNumbered(b, "rs-a", 300, 200)]);

    const back = Promise.all([a.once("connected", { timeout: 20_000 }), b.once("connected", { timeout: 20_000 })]);
    own = await startHub({ store, port });
    const [ca, cb] = await back;
    assert.deepEqual([ca.recovered, cb.recovered], [true, true], "resumed from the hub's store");

    const late = await Promise.all([take(inA, 400, 20_000), take(inB, 400, 20_000)]);
    assert.equal(sequenceProblem([...early[1], ...late[1]], 0, 500), "", "a → b");
    assert.equal(sequenceProblem([...early[0], ...late[0]], 0, 500), "", "b → a");
  } finally {
    await Promise.all([a.close(), b.close()]);
    await own.stop();
  }
});
