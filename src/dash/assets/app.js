// leasekeeper dashboard: keeps the server-rendered pages live. No framework, no build step.
// - every page: asks this node's /health every 2 s; when it stops answering, a banner says so
//   and links the same page on the other members;
// - pages with data-refresh: swap in a fresh <main> (X-Partial: 1) every so many ms;
// - the task list and the task page: follow /api/v1/watch (server-sent events);
// - buttons with data-action: cancel or retry a task.
(() => {
  "use strict";
  const main = document.getElementById("main");
  const gone = document.getElementById("gone");
  const flash = document.getElementById("flash");
  const self = document.body.dataset.node;
  let down = false;
  let since = null;
  let peers = JSON.parse(sessionStorage.getItem("lk-peers") || "[]");
  let sources = [];
  let timer = null;

  async function get(url, opts, ms) {
    const c = new AbortController();
    const t = setTimeout(() => c.abort(), ms || 2500);
    try {
      return await fetch(url, Object.assign({ credentials: "same-origin", signal: c.signal }, opts || {}));
    } finally {
      clearTimeout(t);
    }
  }

  function showGone() {
    if (!down) {
      down = true;
      since = new Date();
    }
    document.body.classList.add("offline");
    gone.textContent = "Node " + self + " is not answering (since " + since.toLocaleTimeString() + "). ";
    if (peers.length) {
      gone.append("Open another member: ");
      peers.forEach((addr, i) => {
        const a = document.createElement("a");
        a.href = "http://" + addr + location.pathname + location.search;
        a.textContent = addr;
        if (i) gone.append(" · ");
        gone.append(a);
      });
    }
    gone.hidden = false;
  }

  async function health() {
    try {
      await get("/health", {}, 1500);
      if (down) {
        down = false;
        gone.hidden = true;
        document.body.classList.remove("offline");
        refresh();
      }
    } catch (e) {
      showGone();
    }
  }

  async function learnPeers() {
    if (down) return;
    try {
      const r = await get("/api/v1/cluster", {}, 2500);
      if (!r.ok) return;
      const c = await r.json();
      peers = c.members.filter((m) => String(m.node_id) !== self && m.http_addr).map((m) => m.http_addr);
      sessionStorage.setItem("lk-peers", JSON.stringify(peers));
      const leader = document.getElementById("leader");
      if (leader) {
        leader.textContent = c.leader_id ? "node " + c.leader_id : "no leader";
        leader.classList.toggle("bad", !c.leader_id);
      }
    } catch (e) {
      /* health() reports it */
    }
  }

  async function refresh() {
    if (down) return;
    try {
      const r = await get(location.pathname + location.search, { headers: { "X-Partial": "1" } }, 2500);
      const html = await r.text();
      close();
      main.innerHTML = html;
      init();
    } catch (e) {
      health();
    }
  }

  function say(text, bad) {
    flash.textContent = text;
    flash.classList.toggle("bad", !!bad);
    flash.hidden = false;
    setTimeout(() => (flash.hidden = true), 6000);
  }

  function follow(url, onTasks) {
    const es = new EventSource(url);
    let broken = false;
    es.addEventListener("tasks", (ev) => onTasks(JSON.parse(ev.data)));
    es.addEventListener("reset", () => refresh());
    es.addEventListener("bye", () => {
      es.close();
      showGone();
    });
    es.onerror = () => {
      broken = true;
      document.body.dataset.live = "broken";
      health();
    };
    es.onopen = () => {
      // Events may have been missed while the stream was down.
      if (broken) refresh();
      broken = false;
      document.body.dataset.live = "open";
    };
    sources.push(es);
  }

  function liveList(table) {
    const body = table.tBodies[0];
    const first = table.dataset.first === "true";
    follow(table.dataset.live, (changes) => {
      for (const c of changes) {
        const old = body.querySelector('tr[data-id="' + CSS.escape(c.row.id) + '"]');
        if (old && !c.matches) {
          old.remove();
        } else if (old) {
          old.outerHTML = c.html;
        } else if (c.matches && first) {
          body.insertAdjacentHTML("afterbegin", c.html);
          const empty = document.getElementById("empty");
          if (empty) empty.remove();
        }
      }
    });
  }

  function init() {
    const table = main.querySelector("table[data-live]");
    if (table) liveList(table);
    const task = main.querySelector("h1[data-live]");
    if (task) {
      let pending = null;
      follow(task.dataset.live, () => {
        clearTimeout(pending);
        pending = setTimeout(refresh, 50);
      });
    }
    clearInterval(timer);
    const every = Number(main.dataset.refresh || 0);
    if (every > 0) timer = setInterval(() => document.hidden || refresh(), every);
  }

  function close() {
    sources.forEach((s) => s.close());
    sources = [];
  }

  document.addEventListener("click", async (ev) => {
    const b = ev.target.closest("button[data-action]");
    if (b) {
      const action = b.dataset.action;
      if (action === "cancel" && b.dataset.armed !== "1") {
        b.dataset.armed = "1";
        b.textContent = "Confirm cancel";
        return;
      }
      b.disabled = true;
      try {
        const r = await get("/api/v1/tasks/" + encodeURIComponent(b.dataset.id) + "/" + action, {
          method: "POST",
          headers: { "X-Leasekeeper-Action": "1", "Content-Type": "application/json" },
          body: "{}",
        }, 10000);
        const j = await r.json();
        if (r.ok) say(action === "cancel" ? "Cancelled." : "Sent back to PENDING.");
        else say(j.error.code + ": " + j.error.message, true);
      } catch (e) {
        say("The node did not answer: " + e, true);
      }
      refresh();
      return;
    }
    if (ev.target.id === "logout") {
      await get("/logout", { method: "POST", headers: { "X-Leasekeeper-Action": "1" } });
      location.reload();
    }
  });

  init();
  learnPeers();
  setInterval(health, 2000);
  setInterval(learnPeers, 5000);
})();
