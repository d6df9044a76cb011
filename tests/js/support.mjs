// Test support for the browser client's tests: a real hub (the CLI, as a child
// process on 127.0.0.1), a TCP proxy that can cut or freeze links, and waiting
// helpers that never sleep: they wait for events, each bounded by a timeout.

import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";

import { GenesisClient } from "../../genesis_trio/static/genesis.js";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

/** The Python that runs the hub: $GENESIS_PYTHON, else the nox tests venv, else python3. */
function python() {
  if (process.env.GENESIS_PYTHON) return process.env.GENESIS_PYTHON;
  const venv = path.join(ROOT, ".nox", "tests", "bin", "python");
  return existsSync(venv) ? venv : "python3";
}

/** @type {Set<import("node:child_process").ChildProcess>} */
const children = new Set();
process.on("exit", () => {
  for (const child of children) child.kill("SIGKILL"); // never leave a hub behind
});

// `python -m genesis_trio serve ...`, plus one thing: the hub stops (SIGTERM, as
// `stop()` does) when its stdin, a pipe from this process, closes, so that no hub
// outlives a test process that was killed (a timeout, Ctrl-C).
const BOOTSTRAP = `
import os, runpy, signal, sys, threading
def orphaned():
    sys.stdin.buffer.read()
    os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=orphaned, daemon=True).start()
sys.argv[0] = "genesis_trio"
runpy.run_module("genesis_trio", run_name="__main__", alter_sys=True)
`;

/**
 * Reject after `ms` unless `promise` settles first.
 * @template T
 * @param {Promise<T>} promise
 * @param {number} ms
 * @param {string} what
 * @returns {Promise<T>}
 */
export function within(promise, ms, what) {
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return /** @type {Promise<T>} */ (Promise.race([promise, timeout]).finally(() => clearTimeout(timer)));
}

/** A temporary directory, removed by `cleanup()`. */
export function tempDir() {
  const dir = mkdtempSync(path.join(tmpdir(), "genesis-js-"));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * @typedef {object} Hub
 * @property {string} url ws://127.0.0.1:PORT/ws
 * @property {number} port
 * @property {number} pid
 * @property {() => string} log what the hub wrote on stderr
 * @property {() => Promise<number | null>} stop SIGTERM (graceful: links close 1001), then wait
 */

/**
 * Start `python -m genesis_trio serve` on 127.0.0.1 and wait for its ready line.
 * @param {{store: string, port?: number, args?: string[], timeout?: number}} options
 *   `store`: a SQLite file path, or a `redis://` URL; `port`: 0 (default) for a free one
 * @returns {Promise<Hub>}
 */
export async function startHub({ store, port = 0, args = [], timeout = 15_000 }) {
  const argv = ["-c", BOOTSTRAP, "serve", "--host", "127.0.0.1", "--port", String(port)];
  const spec = store.startsWith("redis://") ? store : `sqlite:${store}`;
  argv.push("--store", spec, "--log-level", "warning", ...args);
  const child = spawn(python(), argv, { cwd: ROOT, stdio: ["pipe", "pipe", "pipe"] });
  children.add(child);
  let stdout = "";
  let stderr = "";
  child.stderr.setEncoding("utf8").on("data", (chunk) => {
    stderr += chunk;
  });
  const exited = new Promise((resolve) => child.once("exit", (code) => resolve(code)));
  const ready = new Promise((resolve, reject) => {
    child.stdout.setEncoding("utf8").on("data", (chunk) => {
      stdout += chunk;
      const match = /hub ready at (ws:\/\/127\.0\.0\.1:(\d+)\/ws)/.exec(stdout);
      if (match) resolve({ url: match[1], port: Number(match[2]) });
    });
    child.once("exit", (code) => reject(new Error(`the hub exited (${code}) before it was ready:\n${stderr}`)));
    child.once("error", reject);
  });
  /** @type {{url: string, port: number}} */
  const where = await within(ready, timeout, "the hub's ready line").catch((error) => {
    child.kill("SIGKILL");
    throw error;
  });
  return {
    ...where,
    pid: /** @type {number} */ (child.pid),
    log: () => stderr,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        process.kill(/** @type {number} */ (child.pid), "SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
        await exited;
        clearTimeout(timer);
      }
      children.delete(child);
      return child.exitCode;
    },
  };
}

/** A free TCP port on 127.0.0.1 (asked of the kernel, then let go). */
async function freePort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(undefined)));
  const port = /** @type {net.AddressInfo} */ (server.address()).port;
  await new Promise((resolve) => server.close(() => resolve(undefined)));
  return port;
}

/**
 * A `redis-server` on a free 127.0.0.1 port (no persistence), stopped by `stop()`.
 * Without one on PATH this fails under CI=true and returns null elsewhere (skip).
 * @returns {Promise<{url: string, stop: () => Promise<void>} | null>}
 */
export async function startRedis() {
  const port = await freePort();
  const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  const started = await new Promise((resolve) => {
    let out = "";
    child.once("error", () => resolve(false));
    child.once("exit", () => resolve(false));
    child.stdout.setEncoding("utf8").on("data", (chunk) => {
      out += chunk;
      if (out.includes("Ready to accept connections")) resolve(true);
    });
  });
  if (!started) {
    if (process.env.CI === "true") throw new Error("redis-server is needed (on PATH) for the cluster test");
    return null;
  }
  children.add(child);
  const exited = new Promise((resolve) => child.once("exit", () => resolve(undefined)));
  return {
    url: `redis://127.0.0.1:${port}/0`,
    async stop() {
      child.kill("SIGTERM");
      await exited;
      children.delete(child);
    },
  };
}

/**
 * A TCP proxy on 127.0.0.1 in front of `targetPort`: `cut()` drops every link
 * through it (the client sees 1006), `freeze()` stops forwarding on the links
 * it has (a silent hub) while new ones still pass.
 * @param {number} targetPort
 */
export async function startProxy(targetPort) {
  /** @type {Set<{client: net.Socket, upstream: net.Socket, frozen: boolean}>} */
  const pairs = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, "127.0.0.1");
    const pair = { client, upstream, frozen: false };
    pairs.add(pair);
    const forward = (/** @type {net.Socket} */ from, /** @type {net.Socket} */ to) => {
      from.on("data", (chunk) => {
        if (!pair.frozen) to.write(chunk);
      });
    };
    forward(client, upstream);
    forward(upstream, client);
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("close", end).on("error", end);
    upstream.on("close", end).on("error", end);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(undefined)));
  const port = /** @type {net.AddressInfo} */ (server.address()).port;
  return {
    port,
    url: `ws://127.0.0.1:${port}/ws`,
    /** How many links pass through now. */
    get links() {
      return pairs.size;
    },
    /** Drop every link now (no close frame: a cut cable). */
    cut() {
      const n = pairs.size;
      for (const pair of [...pairs]) {
        pair.client.destroy();
        pair.upstream.destroy();
      }
      pairs.clear();
      return n;
    },
    /** Stop forwarding on the current links, silently. */
    freeze() {
      for (const pair of pairs) pair.frozen = true;
    },
    async close() {
      this.cut();
      await new Promise((resolve) => server.close(() => resolve(undefined)));
    },
  };
}

/**
 * A client on Node's `ws`, with a quick backoff for tests.
 * @param {string | string[]} url
 * @param {string | null} id
 * @param {import("../../genesis_trio/static/genesis.js").GenesisOptions} [options]
 */
export function client(url, id, options = {}) {
  return new GenesisClient(url, id, { WebSocket, backoffBase: 20, backoffCap: 300, ...options });
}

/** An in-memory `storage` (what sessionStorage offers), that survives the client. */
export function memoryStorage() {
  const items = new Map();
  return {
    items,
    /** @param {string} key */
    getItem: (key) => items.get(key) ?? null,
    /** @param {string} key @param {string} value */
    setItem: (key, value) => void items.set(key, String(value)),
    /** @param {string} key */
    removeItem: (key) => void items.delete(key),
  };
}

/**
 * Read `count` messages from an iterator, within `ms`.
 * @param {AsyncIterator<import("../../genesis_trio/static/genesis.js").Message>} iterator
 * @param {number} count
 * @param {number} ms
 * @param {string} [what]
 */
export async function take(iterator, count, ms, what = "messages") {
  /** @type {import("../../genesis_trio/static/genesis.js").Message[]} */
  const got = [];
  const reading = (async () => {
    while (got.length < count) {
      const next = await iterator.next();
      if (next.done) throw new Error(`the iterator ended after ${got.length} of ${count} ${what}`);
      got.push(next.value);
    }
    return got;
  })();
  return within(reading, ms, `${count} ${what} (got ${got.length})`).catch((error) => {
    error.message += ` (got ${got.length})`;
    throw error;
  });
}

/**
 * Check that `messages` are `{n: first}`, `{n: first + 1}`, ...: nothing lost,
 * duplicated or reordered. Returns a description of the first problem, or "".
 * @param {import("../../genesis_trio/static/genesis.js").Message[]} messages
 * @param {number} first
 * @param {number} count
 */
export function sequenceProblem(messages, first, count) {
  const numbers = messages.map((m) => /** @type {{n: number}} */ (m.data).n);
  if (numbers.length !== count) return `got ${numbers.length} messages, expected ${count}`;
  for (let i = 0; i < count; i++) {
    if (numbers[i] !== first + i) {
      const seen = new Set(numbers);
      const lost = [];
      for (let n = first; n < first + count; n++) if (!seen.has(n)) lost.push(n);
      return `position ${i} holds ${numbers[i]}, expected ${first + i} (lost: ${lost.slice(0, 10)}; around: ${numbers.slice(Math.max(0, i - 3), i + 4)})`;
    }
  }
  return "";
}

/**
 * Queue `count` numbered messages `{n}` from `sender` to `to`.
 * @param {GenesisClient} sender
 * @param {string} to
 * @param {number} first
 * @param {number} count
 */
export async function sendNumbered(sender, to, first, count) {
  for (let n = first; n < first + count; n++) await sender.send(to, "num", { n });
}
