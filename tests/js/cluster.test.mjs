// The browser client on a cluster: given every node's address, it moves to
// another node when its own stops, and resumes there exactly (numbered
// messages checked for anything lost, duplicated or reordered).

import assert from "node:assert/strict";
import { test } from "node:test";

import { client, sendNumbered, sequenceProblem, startHub, startRedis, take } from "./support.mjs";

test("a node stops: the client moves to the next address and resumes exactly", { timeout: 40_000 }, async (t) => {
  const redis = await startRedis();
  if (redis === null) {
    t.skip("no redis-server on PATH");
    return;
  }
  const cluster = (/** @type {string} */ id) => ({ store: redis.url, args: ["--cluster", "--node-id", id, "--node-lease", "2"] });
  const n0 = await startHub(cluster("n0"));
  const n1 = await startHub(cluster("n1"));
  const a = client([n0.url, n1.url], "cl-a");
  const b = client([n1.url], "cl-b");
  try {
    const inA = a.messages();
    const inB = b.messages();
    const first = a.once("connected", { timeout: 10_000 });
    await Promise.all([a.connect(), b.connect()]);
    assert.equal((await first).recovered, false);
    await Promise.all([sendNumbered(a, "cl-b", 0, 200), sendNumbered(b, "cl-a", 0, 200)]);
    const early = await Promise.all([take(inA, 200, 10_000), take(inB, 200, 10_000)]);

    const moved = a.once("connected", { timeout: 20_000 });
    await n0.stop(); // graceful: its links close with 1001, its sessions are free at once
    await Promise.all([sendNumbered(a, "cl-b", 200, 200), sendNumbered(b, "cl-a", 200, 200)]);
    assert.equal((await moved).recovered, true, "resumed on n1");

    const late = await Promise.all([take(inA, 200, 20_000), take(inB, 200, 20_000)]);
    assert.equal(sequenceProblem([...early[1], ...late[1]], 0, 400), "", "a → b");
    assert.equal(sequenceProblem([...early[0], ...late[0]], 0, 400), "", "b → a");
  } finally {
    await Promise.all([a.close(), b.close()]);
    await Promise.all([n0.stop(), n1.stop()]);
    await redis.stop();
  }
});
