// common.js: small helpers shared by the demo pages (chat, telemetry, dashboard).
//
// Plain ES module, no dependencies beyond the browser client; typed with JSDoc
// (`tsc --noEmit --checkJs --strict`).

/** @typedef {import("../genesis.js").GenesisClient} GenesisClient */

/**
 * The hub's WebSocket endpoint, on the origin that served the page
 * (`?hub=ws://host:port/ws` overrides it).
 * @returns {string}
 */
export function hubUrl() {
  const override = new URLSearchParams(location.search).get("hub");
  if (override) return override;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

/**
 * The element with this id, checked to be of class `type`.
 * @template {HTMLElement} T
 * @param {string} id
 * @param {new () => T} type
 * @returns {T}
 */
export function byId(id, type) {
  const element = document.getElementById(id);
  if (!(element instanceof type)) throw new Error(`no <${type.name}> #${id} in the page`);
  return element;
}

/**
 * Build an element: `h("li", {class: "msg", "data-id": id}, "text", child)`.
 * Attributes with `null`/`undefined`/`false` values are left out.
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Record<string, string | number | boolean | null | undefined>} [attributes]
 * @param {...(Node | string)} children
 * @returns {HTMLElementTagNameMap[K]}
 */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    element.setAttribute(name, value === true ? "" : String(value));
  }
  element.append(...children);
  return element;
}

/**
 * A random identifier: `prefix` and 16 hex digits (crypto.getRandomValues works
 * on plain http pages too, unlike crypto.randomUUID).
 * @param {string} [prefix]
 * @returns {string}
 */
export function randomId(prefix = "") {
  const bytes = new Uint8Array(8);
  crypto.getRandomValues(bytes);
  return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * `HH:MM:SS` of a Unix time in seconds (local time).
 * @param {number} seconds
 * @returns {string}
 */
export function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });
}

/**
 * @typedef {"connected" | "reconnecting" | "offline"} Connectivity
 */

/**
 * Keep a badge element showing the client's connection state:
 * `connected`, `reconnecting` (a link is being (re)opened) or `offline` (the
 * browser is offline, or the client stopped for good). The state is also in the
 * badge's `data-state` attribute.
 * @param {GenesisClient} client
 * @param {HTMLElement} badge
 * @param {(state: Connectivity, detail: string) => void} [onChange]
 * @returns {() => Connectivity} the current state
 */
export function connectionBadge(client, badge, onChange) {
  /** @type {Connectivity} */
  let shown = "offline";
  let detail = "";
  let stopped = false;
  const render = () => {
    /** @type {Connectivity} */
    let state;
    if (stopped) state = "offline";
    else if (client.state === "connected") state = "connected";
    else if (!navigator.onLine) state = "offline";
    else state = "reconnecting";
    if (state === "reconnecting" && client.state === "idle") detail = "connecting…";
    badge.dataset.state = state;
    badge.textContent = state;
    badge.title = detail;
    if (state !== shown) {
      shown = state;
      onChange?.(state, detail);
    }
  };
  client.listen("connected", ({ recovered, resumed, epoch }) => {
    detail = resumed
      ? recovered
        ? `resumed the session (epoch ${epoch})`
        : `a new epoch (${epoch}): the hub could not continue the session`
      : `new session (epoch ${epoch})`;
    render();
  });
  client.listen("connecting", ({ attempt }) => {
    detail = attempt > 0 ? `reconnecting (attempt ${attempt + 1})` : "connecting…";
    render();
  });
  client.listen("disconnected", ({ code, reason }) => {
    detail = `link closed (${code}${reason ? `: ${reason}` : ""})`;
    render();
  });
  client.listen("closed", ({ code, reason }) => {
    stopped = true;
    detail = `stopped (${code}${reason ? `: ${reason}` : ""})`;
    render();
  });
  addEventListener("online", render);
  addEventListener("offline", render);
  render();
  return () => shown;
}

/**
 * Run `fn` at most once per animation frame (coalesces bursts of messages).
 * @param {() => void} fn
 * @returns {() => void} schedule a run
 */
export function perFrame(fn) {
  let scheduled = false;
  return () => {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => {
      scheduled = false;
      fn();
    });
  };
}

/**
 * Read JSON from `storage`, or `fallback` when absent or unreadable.
 * @template T
 * @param {Storage} storage
 * @param {string} key
 * @param {T} fallback
 * @returns {T}
 */
export function loadJson(storage, key, fallback) {
  try {
    const raw = storage.getItem(key);
    return raw === null ? fallback : /** @type {T} */ (JSON.parse(raw));
  } catch {
    return fallback;
  }
}

/**
 * Follow the pages of an API list (`{"items", "next"}`, docs/api.md).
 * @template T
 * @param {string} path e.g. `/api/components?limit=1000`
 * @returns {Promise<T[]>}
 */
export async function fetchAllPages(path) {
  /** @type {T[]} */
  const items = [];
  /** @type {string | null} */
  let after = null;
  do {
    const url = new URL(path, location.origin);
    if (after !== null) url.searchParams.set("after", after);
    const response = await fetch(url, { headers: { accept: "application/json" } });
    if (!response.ok) {
      let detail = response.statusText;
      try {
        detail = (await response.json()).detail ?? detail;
      } catch {
        // not a problem document
      }
      throw new Error(`${url.pathname}: ${response.status} ${detail}`);
    }
    const page = await response.json();
    items.push(...page.items);
    after = page.next ?? null;
  } while (after !== null);
  return items;
}
