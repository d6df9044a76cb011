// chat.js: the chat demo (/demo/chat) on the browser client genesis.js.
//
// * A room is the topic `chat.<room>`; a line is `{"type": "say", "data":
//   {"name", "text", "id"}}` (the shape examples/chat/bot.py speaks; `id` is
//   this page's addition: a unique id per line).
// * Your name is your component id; the session is kept in sessionStorage, so
//   a reload resumes it: nothing lost, nothing twice (genesis.js keeps the
//   session's numbers and its unacknowledged messages; this page keeps what it
//   showed, in the same storage, before genesis.js acknowledges it).
// * Exactly once on screen: every line carries a unique `id`, and a line whose
//   id was shown already is dropped. The protocol is exactly-once within an
//   epoch; a new epoch (`recovered: false`) or a takeover can deliver a message
//   again, and this is the application-level idempotence that covers it.
// * Sending works offline: genesis.js queues the message; the page shows it as
//   pending until it comes back from the hub (a publisher subscribed to its own
//   topic receives its own message), then in its place in the room's order.
// * Who is here: `client.presence(topic)` on every connect, then `$presence`
//   events (connected / resumed / disconnected / left / expired).

import { GenesisClient, QueueFullError } from "../genesis.js";
import { byId, clock, connectionBadge, h, hubUrl, loadJson, randomId } from "./common.js";

/** @typedef {import("../genesis.js").Message} Message */

/**
 * One line of a room, as shown.
 * @typedef {object} Line
 * @property {string | null} id the line's unique id (`data.id`; null from senders that set none, like the bot)
 * @property {string} room
 * @property {string} name the sender's display name (`data.name`)
 * @property {string} text
 * @property {string} from the sender's component id (stamped by the hub)
 * @property {number} at when it was shown (or sent, while pending), ms since the epoch
 */

/**
 * What this tab keeps in sessionStorage besides genesis.js's session.
 * @typedef {object} ChatState
 * @property {string[]} rooms the rooms joined, in the order joined
 * @property {string} current the room on screen
 * @property {Record<string, Line[]>} history lines shown, per room (the last HISTORY)
 * @property {Line[]} pending lines sent and not yet back from the hub, in send order
 * @property {string[]} seen ids of lines shown (the last SEEN), for de-duplication
 * @property {Record<string, number>} unread lines arrived in rooms not on screen
 */

const NAME_KEY = "chat:name";
const NAME = /^[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,63}$/;
const ROOM = /^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$/;
const DEFAULT_ROOM = "lobby";
const HISTORY = 500;
const SEEN = 5000;
const PRESENCE_TIMEOUT = 10_000;

/**
 * @param {string} room
 * @returns {string}
 */
const topicOf = (room) => `chat.${room}`;

/**
 * @param {string | undefined} topic
 * @returns {string | null}
 */
const roomOf = (topic) => (topic?.startsWith("chat.") ? topic.slice(5) : null);

/**
 * @param {unknown} value
 * @returns {value is Record<string, unknown>}
 */
const isObject = (value) => typeof value === "object" && value !== null && !Array.isArray(value);

/**
 * @param {string} key
 * @returns {ChatState}
 */
function loadState(key) {
  /** @type {Partial<ChatState>} */
  const stored = loadJson(sessionStorage, key, {});
  const rooms = Array.isArray(stored.rooms) && stored.rooms.length > 0 ? stored.rooms : [DEFAULT_ROOM];
  return {
    rooms,
    current: stored.current && rooms.includes(stored.current) ? stored.current : rooms[0],
    history: isObject(stored.history) ? stored.history : {},
    pending: Array.isArray(stored.pending) ? stored.pending : [],
    seen: Array.isArray(stored.seen) ? stored.seen : [],
    unread: isObject(stored.unread) ? stored.unread : {},
  };
}

// ---- the page's elements ----------------------------------------------------------------

const badge = byId("badge", HTMLElement);
const loginForm = byId("login", HTMLFormElement);
const nameInput = byId("name", HTMLInputElement);
const loginError = byId("login-error", HTMLElement);
const app = byId("app", HTMLElement);
const me = byId("me", HTMLElement);
const roomsList = byId("rooms", HTMLUListElement);
const joinForm = byId("join", HTMLFormElement);
const roomInput = byId("room", HTMLInputElement);
const membersRoom = byId("members-room", HTMLElement);
const membersList = byId("members", HTMLUListElement);
const leaveButton = byId("leave", HTMLButtonElement);
const roomTitle = byId("room-title", HTMLElement);
const scroller = byId("scroller", HTMLElement);
const messagesList = byId("messages", HTMLOListElement);
const pendingList = byId("pending", HTMLOListElement);
const notice = byId("notice", HTMLElement);
const sayForm = byId("say", HTMLFormElement);
const textInput = byId("text", HTMLInputElement);

/**
 * Show a line of status under the conversation (empty: hide it).
 * @param {string} text
 */
function showNotice(text) {
  notice.textContent = text;
  notice.hidden = text === "";
}

// ---- one chat session ------------------------------------------------------------------

/**
 * Enter the chat as `name`: resume this tab's session if it has one.
 * @param {string} name
 */
function start(name) {
  const stateKey = `chat:${name}`;
  const state = loadState(stateKey);
  /** @type {Set<string>} */
  const seen = new Set(state.seen);
  for (const lines of Object.values(state.history)) for (const line of lines) if (line.id) seen.add(line.id);
  /** @type {Map<string, Map<string, boolean>>} room -> member id -> connected */
  const members = new Map();
  let duplicates = 0;

  const client = new GenesisClient(hubUrl(), name, {
    storage: sessionStorage,
    topics: ["$presence", ...state.rooms.map(topicOf)],
  });
  // For the curious (and the browser tests): the client and the page's state.
  Object.assign(/** @type {any} */ (window), {
    chatDemo: { client, state, stats: () => ({ ...client.stats, linesDropped: duplicates }) },
  });

  let saveScheduled = false;
  /**
   * Save this page's state in the same task as the messages it shows, before
   * genesis.js saves their acknowledgement (its save is a later microtask): a
   * reload can never find a message acknowledged but not shown.
   */
  const save = () => {
    if (saveScheduled) return;
    saveScheduled = true;
    queueMicrotask(() => {
      saveScheduled = false;
      state.seen = [...seen].slice(-SEEN);
      sessionStorage.setItem(stateKey, JSON.stringify(state));
    });
  };

  // ---- rendering ----

  /** @type {{room: string, first: Line | undefined, count: number}} what #messages shows */
  let rendered = { room: "", first: undefined, count: 0 };

  /**
   * @param {Line} line
   * @param {boolean} pending
   * @returns {HTMLLIElement}
   */
  const lineElement = (line, pending) =>
    h(
      "li",
      {
        class: `msg${line.from === name ? " mine" : ""}${pending ? " pending" : ""}`,
        "data-id": line.id,
        "data-from": line.from,
        "data-pending": pending,
      },
      h("time", {}, clock(line.at / 1000)),
      h("b", { class: "name" }, line.name),
      h("span", { class: "text" }, line.text),
      ...(pending ? [h("em", { class: "state" }, "pending")] : []),
    );

  const renderMessages = () => {
    const nearBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
    const lines = state.history[state.current] ?? [];
    if (rendered.room !== state.current || rendered.first !== lines[0] || rendered.count > lines.length) {
      messagesList.replaceChildren();
      rendered = { room: state.current, first: lines[0], count: 0 };
    }
    messagesList.append(...lines.slice(rendered.count).map((line) => lineElement(line, false)));
    rendered.count = lines.length;
    pendingList.replaceChildren(
      ...state.pending.filter((line) => line.room === state.current).map((line) => lineElement(line, true)),
    );
    if (nearBottom) scroller.scrollTop = scroller.scrollHeight;
  };

  const renderRooms = () => {
    roomsList.replaceChildren(
      ...state.rooms.map((room) => {
        const unread = state.unread[room] ?? 0;
        const select = h(
          "button",
          {
            type: "button",
            class: "room",
            "data-room": room,
            "aria-current": room === state.current ? "true" : null,
          },
          `# ${room}`,
          ...(unread > 0 ? [h("span", { class: "unread" }, String(unread))] : []),
        );
        select.addEventListener("click", () => switchRoom(room));
        const leave = h("button", { type: "button", class: "leave-room", title: `leave ${room}` }, "×");
        leave.hidden = state.rooms.length === 1;
        leave.addEventListener("click", () => void leaveRoom(room));
        return h("li", {}, select, leave);
      }),
    );
    roomTitle.textContent = `# ${state.current}`;
  };

  const renderMembers = () => {
    membersRoom.textContent = `# ${state.current}`;
    const room = members.get(state.current) ?? new Map();
    membersList.replaceChildren(
      ...[...room.entries()]
        .sort(([a], [b]) => a.localeCompare(b))
        .map(([id, connected]) =>
          h(
            "li",
            { "data-id": id, "data-connected": String(connected), class: connected ? "on" : "away" },
            id === name ? `${id} (you)` : id,
          ),
        ),
    );
  };

  // ---- rooms ----

  /** @param {string} room */
  const refreshMembers = async (room) => {
    try {
      const list = await client.presence(topicOf(room), { timeout: PRESENCE_TIMEOUT });
      members.set(room, new Map(list.map((member) => [member.id, member.connected])));
      renderMembers();
    } catch (error) {
      if (client.state === "connected") console.warn(`presence of ${room}:`, error);
      // offline: the next `connected` asks again
    }
  };

  /** @param {string} room */
  const switchRoom = (room) => {
    state.current = room;
    state.unread[room] = 0;
    save();
    renderRooms();
    renderMessages();
    renderMembers();
    textInput.focus();
  };

  /** @param {string} room */
  const joinRoom = async (room) => {
    if (!state.rooms.includes(room)) {
      state.rooms.push(room);
      state.history[room] ??= [];
    }
    switchRoom(room);
    await client.subscribe(topicOf(room)); // applied once this resolves (or at the next hello)
    await refreshMembers(room);
  };

  /** @param {string} room */
  const leaveRoom = async (room) => {
    if (state.rooms.length === 1) return;
    state.rooms = state.rooms.filter((r) => r !== room);
    delete state.history[room];
    delete state.unread[room];
    state.pending = state.pending.filter((line) => line.room !== room); // they still reach the room
    members.delete(room);
    if (state.current === room) state.current = state.rooms[0];
    save();
    switchRoom(state.current);
    await client.unsubscribe(topicOf(room));
  };

  // ---- messages in ----

  /** @param {Message} message */
  const onSay = (message) => {
    const room = roomOf(message.topic);
    const data = isObject(message.data) ? message.data : {};
    const id = typeof data.id === "string" && data.id ? data.id : null;
    if (id !== null) {
      if (seen.has(id)) {
        duplicates++; // a new epoch delivered it again: shown already
        return;
      }
      seen.add(id);
      const index = state.pending.findIndex((line) => line.id === id);
      if (index >= 0) state.pending.splice(index, 1);
    }
    if (room === null || !state.rooms.includes(room)) {
      save();
      return; // sent before we left that room
    }
    const from = message.from ?? "";
    /** @type {Line} */
    const line = {
      id,
      room,
      name: typeof data.name === "string" ? data.name : from,
      text: typeof data.text === "string" ? data.text : JSON.stringify(message.data),
      from,
      at: Date.now(),
    };
    const lines = (state.history[room] ??= []);
    lines.push(line);
    if (lines.length > HISTORY + 100) lines.splice(0, lines.length - HISTORY); // trimmed now and then
    if (room !== state.current) state.unread[room] = (state.unread[room] ?? 0) + 1;
    const here = members.get(room);
    if (here && from && !here.has(from)) here.set(from, true); // joined after our presence query
    save();
    if (room === state.current) {
      renderMessages();
      renderMembers();
    } else renderRooms();
  };

  /** @param {Record<string, unknown>} data a `$presence` event (docs/api.md, "Presence") */
  const onPresence = (data) => {
    const { event, id } = data;
    if (event === "started") {
      // A hub (re)started: every session it holds is disconnected until it resumes.
      for (const room of members.values()) for (const member of room.keys()) room.set(member, false);
    } else if (typeof id === "string") {
      const topics = Array.isArray(data.topics) ? data.topics : [];
      for (const [room, here] of members) {
        if (event === "connected" || event === "resumed") {
          if (topics.includes(topicOf(room))) here.set(id, true);
          else here.delete(id);
        } else if (event === "disconnected") {
          if (here.has(id)) here.set(id, false);
        } else if (event === "left" || event === "expired") {
          here.delete(id);
        }
      }
    }
    renderMembers();
  };

  client.on("say", (message) => {
    onSay(message);
  });
  client.on("presence", (message) => {
    if (message.topic === "$presence" && isObject(message.data)) onPresence(message.data);
  });
  client.on("*", () => undefined); // anything else on our topics: not for this page

  // ---- the connection ----

  connectionBadge(client, badge);
  client.listen("connected", ({ recovered, resumed, reason }) => {
    if (resumed && !recovered) {
      showNotice(
        `The hub could not continue this session (${reason}): a new epoch began. ` +
          "Lines sent again are shown once.",
      );
    } else showNotice("");
    for (const room of state.rooms) void refreshMembers(room);
  });
  client.listen("closed", ({ code }) => {
    showNotice(
      code === 4001
        ? `Another tab or window entered as ${name} and took this session over; this tab stopped.`
        : `The connection stopped for good (${code}). Reload the page to start again.`,
    );
    sayForm.querySelector("button")?.setAttribute("disabled", "");
  });
  client.listen("error", ({ code, msg }) => console.warn(`genesis: ${code}: ${msg}`));

  // ---- the forms ----

  sayForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = textInput.value.trim();
    if (!text) return;
    /** @type {Line} */
    const line = { id: randomId(`${name}-`), room: state.current, name, text, from: name, at: Date.now() };
    state.pending.push(line);
    save();
    client.publish(topicOf(line.room), "say", { name, text, id: line.id }).then(
      () => showNotice(""),
      (/** @type {unknown} */ error) => {
        state.pending = state.pending.filter((p) => p !== line);
        save();
        renderMessages();
        showNotice(
          error instanceof QueueFullError
            ? "Too many lines are waiting to be sent; try again once some have gone."
            : `Not sent: ${String(error)}`,
        );
      },
    );
    textInput.value = "";
    renderMessages();
    scroller.scrollTop = scroller.scrollHeight;
  });

  joinForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const room = roomInput.value.trim();
    if (!ROOM.test(room)) return;
    roomInput.value = "";
    void joinRoom(room);
  });

  leaveButton.addEventListener("click", async () => {
    leaveButton.disabled = true;
    try {
      await client.close({ endSession: true }); // bye: the hub forgets the session
    } finally {
      sessionStorage.removeItem(stateKey);
      sessionStorage.removeItem(NAME_KEY);
      location.reload();
    }
  });

  // ---- go ----

  me.textContent = name;
  loginForm.hidden = true;
  app.hidden = false;
  switchRoom(state.current);
  client.connect().catch((/** @type {unknown} */ error) => showNotice(`Cannot connect: ${String(error)}`));
}

// ---- entering --------------------------------------------------------------------------

/**
 * @param {string} name
 * @returns {string | null} why the name cannot be used, or null
 */
function checkName(name) {
  if (!NAME.test(name)) return "Use 1 to 64 letters, digits or _ . : @ - (not starting with . : @ -).";
  if (name.startsWith("anon-") || name === "chat-bot" || name === "rules" || name.startsWith("sensor-")) {
    return `"${name}" is taken by the hub or the demos; pick another name.`;
  }
  return null;
}

loginForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const name = nameInput.value.trim();
  const problem = checkName(name);
  loginError.textContent = problem ?? "";
  loginError.hidden = problem === null;
  if (problem !== null) return;
  sessionStorage.setItem(NAME_KEY, name);
  start(name);
});

const storedName = sessionStorage.getItem(NAME_KEY);
const askedName = new URLSearchParams(location.search).get("name");
if (storedName !== null && checkName(storedName) === null) start(storedName);
else if (askedName !== null && checkName(askedName) === null) {
  sessionStorage.setItem(NAME_KEY, askedName);
  start(askedName);
} else {
  loginForm.hidden = false;
  nameInput.focus();
}
