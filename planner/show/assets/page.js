/* planner show: draws the plan in #plan-data as SVG. Vanilla JS, no library, no network.
   Test hooks: Gantt bars are rect.bar[data-kind][data-call][data-gpu][data-source];
   the memory chart is svg#memory-chart with one g.mem-bar[data-gpu] per GPU;
   body[data-rendered="1"] once every section is drawn. */
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("plan-data").textContent);
  const NS = "http://www.w3.org/2000/svg";
  const app = document.getElementById("app");
  const tip = document.getElementById("tip");
  const GPN = D.cluster.gpus_per_node, NUM = D.cluster.num_devices, NODES = D.cluster.nodes;
  const CALL = Object.fromEntries(D.calls.map((c) => [c.name, c]));
  const KIND_FILL = { realloc: "url(#pat-realloc)", transfer: "url(#pat-transfer)",
    offload: "url(#pat-offload)", other: "#98a2b3" };

  // ------------------------------------------------------------------ helpers
  function h(tag, attrs, parent, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "class") e.className = v; else e.setAttribute(k, v);
    }
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  function s(tag, attrs, parent, text) {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      e.setAttribute(k, v);
    }
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  function esc(x) {
    return String(x).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;",
      '"': "&quot;", "'": "&#39;" }[c]));
  }
  function fmtS(t) {
    if (t === null || t === undefined || !isFinite(t)) return "–";
    const a = Math.abs(t);
    if (a === 0) return "0 s";
    if (a >= 100) return t.toFixed(1) + " s";
    if (a >= 1) return t.toFixed(2) + " s";
    if (a >= 1e-3) return (t * 1e3).toFixed(a >= 0.1 ? 0 : 1) + " ms";
    return (t * 1e6).toFixed(0) + " µs";
  }
  const GIB = 1024 ** 3;
  function fmtB(b) {
    if (b === null || b === undefined) return "–";
    if (b >= GIB) return (b / GIB).toFixed(1) + " GiB";
    if (b >= 1024 ** 2) return (b / 1024 ** 2).toFixed(1) + " MiB";
    return (b / 1024).toFixed(1) + " KiB";
  }
  function fmtN(n) {
    if (n >= 1e9) return (n / 1e9).toFixed(n >= 1e10 ? 0 : 1) + "B";
    if (n >= 1e6) return (n / 1e6).toFixed(0) + "M";
    return String(n);
  }
  function niceStep(span, target) {
    const raw = span / Math.max(1, target), p = 10 ** Math.floor(Math.log10(raw));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= raw) return m * p;
    return 10 * p;
  }
  function devRange(ids) {
    const out = []; let a = null, b = null;
    for (const d of [...ids].sort((x, y) => x - y)) {
      if (a === null) { a = b = d; } else if (d === b + 1) { b = d; }
      else { out.push(a === b ? `${a}` : `${a}-${b}`); a = b = d; }
    }
    if (a !== null) out.push(a === b ? `${a}` : `${a}-${b}`);
    return out.join(",");
  }
  function setTip(el, fn) { el._tip = fn; }
  document.addEventListener("mousemove", (ev) => {
    let t = ev.target;
    while (t && !t._tip) t = t.parentNode;
    if (!t) { tip.style.display = "none"; return; }
    tip.innerHTML = t._tip();
    tip.style.display = "block";
    const w = tip.offsetWidth, hh = tip.offsetHeight;
    let x = ev.clientX + 14, y = ev.clientY + 14;
    if (x + w > window.innerWidth - 8) x = ev.clientX - w - 14;
    if (y + hh > window.innerHeight - 8) y = Math.max(8, ev.clientY - hh - 14);
    tip.style.left = x + "px"; tip.style.top = y + "px";
  });
  document.addEventListener("mouseleave", () => { tip.style.display = "none"; });

  // Click a call anywhere: highlight it everywhere; click again (or on empty space) to clear.
  let selected = null;
  function select(name) {
    selected = selected === name ? null : name;
    document.body.classList.toggle("dim", selected !== null);
    for (const e of document.querySelectorAll("[data-call]"))
      e.classList.toggle("hl", selected !== null && e.getAttribute("data-call") === selected);
  }
  document.addEventListener("click", (ev) => {
    let t = ev.target;
    while (t && t.getAttribute && !t.getAttribute("data-call")) t = t.parentNode;
    if (t && t.getAttribute) select(t.getAttribute("data-call"));
    else if (selected !== null) select(selected);
  });

  function card(parent, id, title, sub) {
    const c = h("section", { class: "card", id }, parent);
    h("h2", {}, c, title);
    if (sub) h("p", { class: "sub" }, c, sub);
    return c;
  }
  function callTip(c, extra) {
    const bd = Object.entries(c.breakdown_s || {}).filter(([, v]) => v > 0)
      .sort((a, b) => b[1] - a[1]);
    const tot = bd.reduce((a, [, v]) => a + v, 0) || 1;
    let rows = bd.map(([k, v]) => `<tr><td>${esc(k)}</td><td class="n">${fmtS(v)}</td>` +
      `<td class="n">${(100 * v / tot).toFixed(0)}%</td><td><span class="tb" style="width:` +
      `${Math.max(1, Math.round(90 * v / tot))}px"></span></td></tr>`).join("");
    const dur = c.end_s !== null ? c.end_s - c.start_s : null;
    return `<b>${esc(c.name)}</b> <span class="t-muted">${esc(c.type || "")}` +
      `${c.model ? " · " + esc(c.model) : ""}</span><br>` +
      `layout <b>${esc(c.layout)}</b> · dp ${c.dp} · tp ${c.tp} · pp ${c.pp} · ` +
      `${c.micro_batches} micro-batch${c.micro_batches > 1 ? "es" : ""}<br>` +
      (extra || "") +
      `estimate ${fmtS(dur)} · peak ${fmtB(c.peak_memory_bytes)} per GPU` +
      (rows ? `<table>${rows}</table>` : "");
  }

  // ------------------------------------------------------------------ header
  function busyFraction(tl) {
    if (!tl || !tl.slices.length) return null;
    const span = tl.span_s || 1;
    let busy = 0;
    const byDev = new Map();
    for (const x of tl.slices) { if (!byDev.has(x.d)) byDev.set(x.d, []); byDev.get(x.d).push(x); }
    for (const arr of byDev.values()) {  // union of intervals, so double-booking counts once
      arr.sort((a, b) => a.s - b.s);
      let cs = -1, ce = -1;
      for (const x of arr) {
        if (x.s > ce) { if (ce > cs) busy += ce - cs; cs = x.s; ce = x.e; }
        else ce = Math.max(ce, x.e);
      }
      if (ce > cs) busy += ce - cs;
    }
    return busy / (span * NUM);
  }
  function renderHeader() {
    const top = h("header", { class: "top" }, app);
    const left = h("div", {}, top);
    const t = h("h1", {}, left);
    h("span", { class: "brand" }, t, "FlowPlan");
    t.appendChild(document.createTextNode(D.title));
    h("div", { class: "sub" }, left,
      `${D.plan_file} · ${NODES} node${NODES > 1 ? "s" : ""} × ${GPN} ${D.cluster.hardware}` +
      ` (${NUM} GPUs) · ${D.calls.length} calls` + (D.spec_path ? ` · spec ${D.spec_path}` : ""));
    const kp = h("div", { class: "kpis" }, app);
    function kpi(k, v, d, cls) {
      const e = h("div", { class: "kpi" }, kp);
      h("div", { class: "k" }, e, k); h("div", { class: "v " + (cls || "") }, e, v);
      if (d) h("div", { class: "d" }, e, d);
    }
    const P = D.provenance || {};
    kpi("iteration time", fmtS(D.iteration_time_s), "estimated steady state");
    const bl = Object.entries(P.baselines_s || {});
    if (bl.length && D.iteration_time_s) {
      const [bn, bt] = bl.reduce((a, b) => (b[1] < a[1] ? b : a));
      const sp = bt / D.iteration_time_s;
      kpi("vs best baseline", sp.toFixed(2) + "×", `${bn}: ${fmtS(bt)}`, sp >= 1 ? "good" : "bad");
    }
    if (P.lower_bound_s && D.iteration_time_s) {
      const gap = D.iteration_time_s / P.lower_bound_s - 1;
      kpi("gap to bound", (100 * gap).toFixed(1) + "%", `proven bound ${fmtS(P.lower_bound_s)}`);
    }
    const mem = D.memory;
    if (mem && mem.devices.length) {
      const m = mem.devices.reduce((a, b) => (b.peak > a.peak ? b : a));
      const cap = mem.capacity_bytes;
      kpi("peak memory", fmtB(m.peak), cap ? `GPU ${m.d} · ${(100 * m.peak / cap).toFixed(0)}% of ` +
        fmtB(cap) : `GPU ${m.d}`, cap && m.peak > cap ? "bad" : "");
    }
    const u = busyFraction(D.timelines[0]);
    if (u !== null) kpi("GPU busy", (100 * u).toFixed(0) + "%", "of the shown iteration, all GPUs");
    if (D.timelines[1]) kpi("measured iteration", fmtS(D.timelines[1].span_s),
      D.iteration_time_s ? `${(D.timelines[1].span_s / D.timelines[0].span_s).toFixed(2)}× the ` +
        "estimated span" : "");
    if (P.method) kpi("found by", P.method, (P.search_time_s !== null && P.search_time_s !==
      undefined ? `in ${fmtS(P.search_time_s)}` : "") + (P.seed !== null && P.seed !== undefined
      ? ` · seed ${P.seed}` : ""));
    const notes = [...D.warnings];
    for (const tl of D.timelines) for (const n of tl.notes) notes.push(`${tl.source}: ${n}`);
    if (mem) for (const n of mem.notes) notes.push(`memory: ${n}`);
    if (notes.length) {
      const box = h("div", { class: "notes" }, app);
      const ul = h("ul", {}, box);
      for (const n of notes) h("li", {}, ul, n);
    }
  }

  // ------------------------------------------------------------------ dataflow graph
  function renderGraph(parent) {
    const c = card(parent, "graph", "Dataflow graph",
      "Calls as nodes, coloured by model. Solid arrows carry data keys; dashed arrows are " +
      "parameter dependencies (a model trains after every call that reads it); dotted arcs " +
      "wait for the previous iteration's training.");
    const G = D.graph;
    if (!G) { h("div", { class: "empty" }, c, "No spec was found, so the graph is not drawn " +
      "(pass --spec)."); return; }
    const wrap = h("div", { class: "scroll-x" }, c);
    const svg = s("svg", { width: G.width, height: G.height, viewBox: `0 0 ${G.width} ${G.height}`,
      id: "graph-svg", style: "margin:0 auto" }, wrap);
    const defs = s("defs", {}, svg);
    for (const [id, col] of [["arr-data", "#475467"], ["arr-param", "#c4320a"],
      ["arr-next", "#98a2b3"]]) {
      const m = s("marker", { id, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7,
        markerHeight: 7, orient: "auto-start-reverse" }, defs);
      s("path", { d: "M0,0 L10,5 L0,10 z", fill: col }, m);
    }
    const N = Object.fromEntries(G.nodes.map((n) => [n.name, n]));
    const edgeLayer = s("g", {}, svg), labelLayer = s("g", {}, svg), nodeLayer = s("g", {}, svg);
    // Ports: a node's incoming edges enter its left side spread out in the order of
    // their sources' heights (outgoing likewise on the right), so arrows do not pile up.
    const fwd = G.edges.filter((e) => e.kind !== "param_next" && N[e.from] && N[e.to]);
    const outs = {}, ins = {};
    for (const e of fwd) { (outs[e.from] = outs[e.from] || []).push(e); (ins[e.to] = ins[e.to] || []).push(e); }
    const otherY = (e, end) => {  // the height the edge heads to from this end
      const pts = e.points || [];
      if (pts.length) return end === "to" ? pts[0][1] : pts[pts.length - 1][1];
      const n = N[e[end]]; return n.y + n.h / 2;
    };
    const portY = (list, e, n, other) => {
      const end = other(e) === e.to ? "to" : "from";
      list.sort((p, q) => otherY(p, end) - otherY(q, end) || (p.kind > q.kind ? 1 : -1));
      const i = list.indexOf(e), k = list.length;
      return n.y + n.h * (k === 1 ? 0.5 : 0.2 + 0.6 * i / (k - 1));
    };
    // Label boxes placed so far (and the nodes): a label that would collide is moved along
    // its edge, or left to the edge's tooltip.
    const boxes = G.nodes.map((n) => [n.x - 2, n.y - 2, n.x + n.w + 2, n.y + n.h + 2]);
    const free = (b) => !boxes.some((o) => b[0] < o[2] && b[2] > o[0] && b[1] < o[3] && b[3] > o[1]);
    const bez = (p0, p1, p2, p3, t) => {
      const u = 1 - t;
      return u * u * u * p0 + 3 * u * u * t * p1 + 3 * u * t * t * p2 + t * t * t * p3;
    };
    let back = 0;
    for (const e of G.edges) {
      const a = N[e.from], b = N[e.to];
      if (!a || !b) continue;
      let d, curve = null, lx, ly;
      if (e.kind === "param_next") {
        const y0 = G.main_bottom + 22 + 14 * back++;
        const x1 = a.x + a.w / 2 - 10, x2 = b.x + b.w / 2 + 10;
        d = `M${x1},${a.y + a.h} C${x1},${y0} ${x1},${y0} ${(x1 + x2) / 2},${y0} ` +
          `S${x2},${y0} ${x2},${b.y + b.h + 2}`;
        lx = (x1 + x2) / 2; ly = y0 - 3;
      } else if (b.x > a.x) {
        // Source port, the waypoints through skipped columns, target port; joined by
        // curves with horizontal tangents. Labels go on the first curve.
        const pts = [[a.x + a.w, portY(outs[e.from], e, a, (q) => q.to)]]
          .concat(e.points || [], [[b.x - 2, portY(ins[e.to], e, b, (q) => q.from)]]);
        d = `M${pts[0][0]},${pts[0][1]}`;
        for (let i = 1; i < pts.length; i++) {
          const [x0, y0] = pts[i - 1], [x1, y1] = pts[i];
          if (y0 === y1) { d += ` L${x1},${y1}`; continue; }
          const mx = (x0 + x1) / 2;
          d += ` C${mx},${y0} ${mx},${y1} ${x1},${y1}`;
          if (!curve) curve = [[x0, mx, mx, x1], [y0, y0, y1, y1]];
        }
        if (!curve) { const [[x0, y0], [x1]] = pts; curve = [[x0, x0, x1, x1], [y0, y0, y0, y0]]; }
      } else {  // same column (rare): curve on the right
        const x1 = a.x + a.w, x2 = b.x + b.w;
        d = `M${x1},${a.y + a.h / 2} C${x1 + 50},${a.y + a.h / 2} ${x2 + 50},${b.y + b.h / 2} ` +
          `${x2 + 2},${b.y + b.h / 2}`;
        lx = x1 + 40; ly = (a.y + b.y + b.h) / 2;
      }
      const style = e.kind === "data" ? { stroke: "#475467", "stroke-width": 1.6,
        "marker-end": "url(#arr-data)" } : e.kind === "param" ? { stroke: "#c4320a",
        "stroke-width": 1.6, "stroke-dasharray": "6 4", "marker-end": "url(#arr-param)" } :
        { stroke: "#98a2b3", "stroke-width": 1.3, "stroke-dasharray": "2 4",
          "marker-end": "url(#arr-next)" };
      const p = s("path", Object.assign({ d, fill: "none", class: "gedge", "data-kind": e.kind },
        style), edgeLayer);
      s("path", { d, fill: "none", stroke: "transparent", "stroke-width": 9 }, edgeLayer);
      setTip(p.nextSibling, () => `<b>${esc(e.from)} → ${esc(e.to)}</b><br>${e.kind === "data" ?
        "data: " + esc(e.label) : e.kind === "param" ? "parameter edge: trains after this read" :
        e.lag > 1 ? `generation ${e.lag} iterations later waits for this training ` +
        `(it may sample with a policy up to ${e.lag - 1} version(s) old)` :
        "next iteration waits for this training"}`);
      if (e.kind === "data" && e.label) {
        const txt = e.label.length > 26 ? e.label.slice(0, 24) + "…" : e.label;
        const w = txt.length * 6.1 + 8;
        const ts = curve ? [0.5, 0.35, 0.65, 0.22, 0.78] : [null];
        for (const t of ts) {
          const cx = t === null ? lx : bez(...curve[0], t), cy = t === null ? ly : bez(...curve[1], t);
          const box = [cx - w / 2, cy - 8, cx + w / 2, cy + 7];
          if (!free(box)) continue;
          boxes.push(box);
          s("rect", { x: box[0], y: box[1], width: w, height: 15, rx: 4, fill: "#fff",
            opacity: 0.92 }, labelLayer);
          s("text", { x: cx, y: cy + 3.5, "text-anchor": "middle", "font-size": 11,
            fill: "#344054" }, labelLayer, txt);
          break;
        }
      } else if (e.kind === "param_next" && back === 1) {
        s("text", { x: lx, y: ly, "text-anchor": "middle", "font-size": 10.5, fill: "#667085" },
          labelLayer, "to the next iteration");
      }
    }
    for (const n of G.nodes) {
      const g = s("g", { class: "gnode", transform: `translate(${n.x},${n.y})` }, nodeLayer);
      if (n.kind === "dataset") {
        s("rect", { width: n.w, height: n.h, rx: 29, fill: "#f2f4f7", stroke: "#98a2b3",
          "stroke-dasharray": "4 3" }, g);
        s("text", { x: n.w / 2, y: 24, "text-anchor": "middle", "font-size": 13,
          "font-weight": 600, fill: "#344054" }, g, "dataset");
        s("text", { x: n.w / 2, y: 42, "text-anchor": "middle", "font-size": 11.5,
          fill: "#667085" }, g, n.keys.join(", "));
        continue;
      }
      const c = CALL[n.name] || {};
      g.setAttribute("data-call", n.name);
      const col = c.color || "#667085";
      s("rect", { width: n.w, height: n.h, rx: 9, fill: "#fff", stroke: col, "stroke-width": 2 }, g);
      s("rect", { width: 8, height: n.h, rx: 4, fill: col }, g);
      s("text", { x: 18, y: 21, "font-size": 13.5, "font-weight": 650, fill: "#101828" }, g, n.name);
      s("text", { x: 18, y: 38, "font-size": 11.5, fill: "#475467" }, g,
        `${n.type} · ${n.model}`);
      if (c.layout) s("text", { x: 18, y: 52, "font-size": 11, fill: "#667085",
        "font-family": "ui-monospace, Menlo, Consolas, monospace" }, g,
        `${c.layout}${c.micro_batches > 1 ? " m" + c.micro_batches : ""}`);
      const dur = c.end_s !== null && c.end_s !== undefined ? c.end_s - c.start_s : null;
      if (dur !== null) s("text", { x: n.w - 8, y: 21, "text-anchor": "end", "font-size": 11.5,
        fill: "#344054", "font-weight": 600 }, g, fmtS(dur));
      if (c.name) setTip(g, () => callTip(c));
    }
    const lg = h("div", { class: "legend" }, c);
    for (const [m, info] of Object.entries(D.models)) {
      const it = h("span", {}, lg);
      h("span", { class: "sw", style: `background:${info.color}` }, it);
      it.appendChild(document.createTextNode(`${m} (${info.arch}, ${fmtN(info.params)} params, ` +
        `${info.trainable ? "trainable" : "frozen"}${info.head !== "lm" ? ", " + info.head +
        " head" : ""})`));
    }
  }

  // ------------------------------------------------------------------ Gantt
  function packRows(arr) {
    const rows = [];
    for (const x of [...arr].sort((a, b) => a.s - b.s || a.e - b.e)) {
      let r = rows.find((row) => row[row.length - 1].e <= x.s + 1e-9);
      if (!r) { r = []; rows.push(r); }
      r.push(x);
    }
    return rows;
  }
  function renderGantt(c) {
    const old = c.querySelector(".gantt-body"); if (old) old.remove();
    const body = h("div", { class: "gantt-body" }, c);
    const TL = D.timelines.filter((t) => t.slices.length);
    if (!TL.length) { h("div", { class: "empty" }, body, "The plan has no timeline and no call " +
      "estimates to draw."); return; }
    const nsrc = TL.length;
    const rowH = Math.max(nsrc > 1 ? 5 : 7, Math.min(24, Math.floor(620 / (NUM * nsrc))));
    const laneGap = rowH >= 12 ? 2 : 1, srcGap = nsrc > 1 ? 1 : 0;
    const laneH = nsrc * rowH + (nsrc - 1) * srcGap + laneGap;
    const nodeGap = NODES > 1 ? (rowH >= 12 ? 10 : 6) : 0;
    const W = Math.max(760, c.clientWidth - 36);
    const left = laneH >= 13 ? 118 : 96, right = 62, top = 44, bottom = 26;
    const plotW = W - left - right;
    const span = Math.max(...TL.map((t) => t.extent_s || t.span_s), D.iteration_time_s || 0) * 1.01 || 1;
    const X = (t) => left + (t / span) * plotW;
    const laneY = (d) => top + d * laneH + Math.floor(d / GPN) * nodeGap;
    const H = laneY(NUM - 1) + laneH + bottom;
    const svg = s("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, id: "gantt" }, body);
    const defs = s("defs", {}, svg);
    const pat = (id, fg, bg, ang, w) => {
      const p = s("pattern", { id, width: w, height: w, patternUnits: "userSpaceOnUse",
        patternTransform: `rotate(${ang})` }, defs);
      s("rect", { width: w, height: w, fill: bg }, p);
      s("rect", { width: w / 2, height: w, fill: fg }, p);
    };
    pat("pat-realloc", "#e15759", "#f7c6c7", 45, 6);
    pat("pat-transfer", "#17a2b8", "#c6eef3", -45, 5);
    pat("pat-offload", "#8c6d31", "#e7d7b4", 90, 5);
    pat("pat-idle", "#e9ecf1", "#f8f9fb", 45, 6);
    // Time grid and axis.
    const step = niceStep(span, Math.max(4, Math.floor(plotW / 110)));
    const grid = s("g", {}, svg);
    for (let t = 0; t <= span + 1e-9; t += step) {
      s("line", { x1: X(t), x2: X(t), y1: top - 4, y2: H - bottom + 4, stroke: "#eaecf0" }, grid);
      s("text", { x: X(t), y: top - 10, "text-anchor": "middle", "font-size": 11,
        fill: "#667085" }, grid, fmtS(t));
      s("text", { x: X(t), y: H - 8, "text-anchor": "middle", "font-size": 11,
        fill: "#667085" }, grid, fmtS(t));
    }
    // Lanes: node bands, idle background, labels.
    const lanes = s("g", {}, svg);
    for (let n = 0; n < NODES; n++) {
      const y0 = laneY(n * GPN), y1 = laneY(n * GPN + GPN - 1) + laneH - laneGap;
      s("rect", { x: 4, y: y0 - 2, width: W - 8, height: y1 - y0 + 4, rx: 6,
        fill: n % 2 ? "#fbfbfc" : "#f6f7f9" }, lanes);
      const lbl = laneH * GPN >= 60 ? `node ${n}` : `n${n}`;
      s("text", { x: 10, y: (y0 + y1) / 2 + 4, "font-size": laneH * GPN >= 40 ? 11.5 : 9.5,
        "font-weight": 600, fill: "#475467" }, lanes, lbl);
    }
    const util = {};
    for (let d = 0; d < NUM; d++) {
      const y = laneY(d);
      TL.forEach((tl, i) => {
        s("rect", { x: left, y: y + i * (rowH + srcGap), width: plotW, height: rowH,
          fill: "url(#pat-idle)", class: "lane", "data-gpu": d, "data-source": tl.source }, lanes);
      });
      if (laneH >= 13) s("text", { x: left - 8, y: y + laneH / 2 + 3.5, "text-anchor": "end",
        "font-size": 11, fill: "#475467" }, lanes, `GPU ${d}`);
      else if (d % GPN === 0 || d % GPN === GPN - 1) s("text", { x: left - 6,
        y: y + rowH - 0.5, "text-anchor": "end", "font-size": 8.5, fill: "#667085" }, lanes, d);
    }
    // Bars: one rect per slice per GPU lane; overlapping slices split their row.
    const bars = s("g", {}, svg);
    const blocks = new Map();
    TL.forEach((tl, i) => {
      const byDev = new Map();
      for (const x of tl.slices) { if (!byDev.has(x.d)) byDev.set(x.d, []); byDev.get(x.d).push(x); }
      for (const [d, arr] of byDev) {
        const rows = packRows(arr), sub = rowH / rows.length;
        let busy = 0;
        rows.forEach((row, r) => row.forEach((x) => {
          const y = laneY(d) + i * (rowH + srcGap) + r * sub;
          const w = Math.max(0.8, X(x.e) - X(x.s));
          const call = x.k === "call" ? CALL[x.n] : null;
          const fill = call ? call.color : (KIND_FILL[x.k] || KIND_FILL.other);
          const rect = s("rect", { x: X(x.s), y, width: w, height: Math.max(1, sub - (rows.length >
            1 ? 0.5 : 0)), fill, class: "bar", "data-kind": x.k, "data-gpu": d,
            "data-source": tl.source, "data-call": call ? x.n : null,
            "fill-opacity": tl.source === "measured" ? 0.72 : 1,
            stroke: tl.source === "measured" ? "#101828" : (rowH >= 10 ? "#fff" : "none"),
            "stroke-width": tl.source === "measured" ? 0.6 : 0.5 }, bars);
          if (r === 0) busy += x.e - x.s;
          setTip(rect, () => sliceTip(x, d, tl));
          if (r === 0) {
            const key = tl.source + "|" + x.ev;
            if (!blocks.has(key)) blocks.set(key, { x, i, devs: [] });
            blocks.get(key).devs.push(d);
          }
        }));
        if (i === 0) util[d] = busy / (tl.span_s || 1);
      }
    });
    // One label per run of adjacent lanes of an event (readable at 128 GPUs too).
    const labels = s("g", { "pointer-events": "none" }, svg);
    for (const { x, i, devs } of blocks.values()) {
      if (x.k !== "call" || (i > 0 && TL.length > 1)) continue;  // one label per call: the estimate's
      devs.sort((a, b) => a - b);
      // Runs of adjacent lanes inside a node. On big clusters (small node bands) a call's
      // consecutive node runs are grouped ~320 px at a time and labelled once, inside the
      // group's middle node, so labels neither repeat on every node nor sit in the gaps.
      const segs = [];
      let start = devs[0], prev = devs[0];
      for (const d of devs.slice(1).concat([null])) {
        if (d !== null && d === prev + 1 && Math.floor(d / GPN) === Math.floor(prev / GPN)) {
          prev = d; continue;
        }
        segs.push([start, prev]); start = prev = d;
      }
      let runs = segs;
      if (laneH * GPN < 120) {
        const per = Math.max(1, Math.round(320 / (laneH * GPN + nodeGap)));
        runs = [];
        let group = [];
        const flush = () => { if (group.length) runs.push(group[Math.floor((group.length - 1) / 2)]); group = []; };
        segs.forEach((sg, k) => {
          const contiguous = k > 0 && sg[0] === segs[k - 1][1] + 1;
          if (!contiguous || group.length >= per) flush();
          group.push(sg);
        });
        flush();
      }
      const w = X(x.e) - X(x.s);
      for (const [a, b] of runs) {
        const y0 = laneY(a) + i * (rowH + srcGap), y1 = laneY(b) + i * (rowH + srcGap) + rowH;
        const hgt = y1 - y0;
        if (hgt < 9) continue;
        const fs = Math.min(12, Math.max(9, hgt * 0.5));
        const full = x.a && x.a.policy ? `${x.n} · ${x.a.policy}` : x.n;  // stale generation
        if (full.length * fs * 0.6 + 6 > w) continue;
        s("text", { x: X(x.s) + w / 2, y: (y0 + y1) / 2 + fs * 0.35, "text-anchor": "middle",
          "font-size": fs, "font-weight": 600, fill: "#fff", stroke: "rgba(16,24,40,.35)",
          "stroke-width": 2.2, "paint-order": "stroke" }, labels, full);
        const lay = x.a && x.a.layout;
        if (lay && hgt >= 2.6 * fs + 6 && lay.length * 10 * 0.6 + 6 < w && i === 0)
          s("text", { x: X(x.s) + w / 2, y: (y0 + y1) / 2 + fs * 0.35 + fs + 1,
            "text-anchor": "middle", "font-size": 10, fill: "#fff",
            stroke: "rgba(16,24,40,.35)", "stroke-width": 2, "paint-order": "stroke" },
          labels, lay);
      }
    }
    // Steady-state period marker and per-lane utilisation.
    if (D.iteration_time_s && D.iteration_time_s < span) {
      const px = X(D.iteration_time_s);
      s("line", { x1: px, x2: px, y1: top - 4, y2: H - bottom + 4, stroke: "#3b5bdb",
        "stroke-width": 1.4, "stroke-dasharray": "5 4" }, svg);
      const nearEnd = px > left + plotW * 0.8;
      s("text", { x: nearEnd ? px - 5 : px + 5, y: top - 24, "text-anchor": nearEnd ? "end" :
        "start", "font-size": 11, fill: "#3b5bdb", "font-weight": 600, stroke: "#fff",
        "stroke-width": 3, "paint-order": "stroke" }, svg, `period ${fmtS(D.iteration_time_s)}`);
    }
    const ut = s("g", {}, svg);
    if (laneH >= 13) {
      for (let d = 0; d < NUM; d++) s("text", { x: W - right + 8, y: laneY(d) + laneH / 2 + 3.5,
        "font-size": 10.5, fill: "#667085" }, ut, `${Math.round(100 * (util[d] || 0))}%`);
    } else {
      for (let n = 0; n < NODES; n++) {
        let u = 0; for (let k = 0; k < GPN; k++) u += util[n * GPN + k] || 0;
        s("text", { x: W - right + 8, y: (laneY(n * GPN) + laneY(n * GPN + GPN - 1) + laneH) / 2 + 3,
          "font-size": 10, fill: "#667085" }, ut, `${Math.round(100 * u / GPN)}%`);
      }
    }
    s("text", { x: W - right + 8, y: top - 10, "font-size": 11, fill: "#667085" }, ut, "busy");
  }
  function sliceTip(x, d, tl) {
    const where = `<span class="t-muted">${tl.source} · GPU ${d} (node ${Math.floor(d / GPN)})` +
      ` · ${fmtS(x.s)} → ${fmtS(x.e)} (${fmtS(x.e - x.s)})</span><br>`;
    if (x.k === "call" && CALL[x.n]) {
      const a = x.a || {};
      const rank = a.rank !== undefined ? `this GPU: rank ${a.rank} = dp ${a.dp_rank}, ` +
        `tp ${a.tp_rank}, pp stage ${a.pp_stage}<br>` : "";
      const pol = a.policy ? `samples with ${esc(a.policy)}<br>` : "";
      return callTip(CALL[x.n], where + rank + pol);
    }
    const a = x.a || {};
    let body = `<b>${esc(x.n)}</b> <span class="t-muted">${x.k}</span><br>` + where;
    if (x.k === "realloc") body += `${esc(a.model || "")}: ${esc(a.from_call || "?")} → ` +
      `${esc(a.to_call || "?")} layout`;
    if (x.k === "transfer" && a.keys) body += `keys ${esc([].concat(a.keys).join(", "))}`;
    if (a.bytes) body += `<br>${fmtB(a.bytes)} moved in all`;
    return body;
  }

  // ------------------------------------------------------------------ device mesh
  function renderMesh(parent) {
    const c = card(parent, "mesh", "Device mesh",
      `Which GPUs each call runs on (${NODES > GPN * 1.5 ? "columns" : "rows"} = nodes). ` +
      "Boxes group a tensor-parallel group; the shade steps with the pipeline stage; the " +
      "number is the data-parallel rank.");
    const grid = h("div", { class: "mesh-grid" }, c);
    const cell = NODES <= 4 ? 22 : NODES <= 8 ? 15 : 11;
    for (const call of D.calls) {
      const box = h("div", { class: "mesh-card", "data-call": call.name }, grid);
      const t = h("h3", {}, box);
      h("span", { class: "dot", style: `background:${call.color}` }, t);
      t.appendChild(document.createTextNode(call.name));
      h("div", { class: "lay" }, box, `${call.layout}${call.micro_batches > 1 ? " m" +
        call.micro_batches : ""}`);
      // Many nodes: nodes become columns so the card stays short.
      const pad = 2, tr = NODES > GPN * 1.5;
      const W = (tr ? NODES : GPN) * cell + pad * 2, H = (tr ? GPN : NODES) * cell + pad * 2;
      const svg = s("svg", { width: W, height: H, style: "margin-top:6px" }, box);
      const rankOf = new Map(call.devices.map((d, r) => [d, r]));
      const pos = (d) => {
        const a = pad + (d % GPN) * cell, b = pad + Math.floor(d / GPN) * cell;
        return tr ? [b, a] : [a, b];
      };
      for (let d = 0; d < NUM; d++) {
        const [x, y] = pos(d);
        const r = rankOf.get(d);
        if (r === undefined) {
          s("rect", { x: x + 1, y: y + 1, width: cell - 2, height: cell - 2, rx: 2,
            fill: "#eef0f3" }, svg);
          continue;
        }
        const tp = r % call.tp, dp = Math.floor(r / call.tp) % call.dp;
        const pp = Math.floor(r / (call.tp * call.dp));
        const op = call.pp > 1 ? 1 - 0.55 * pp / (call.pp - 1) : 1;
        s("rect", { x: x + 1, y: y + 1, width: cell - 2, height: cell - 2, rx: 2, fill: call.color,
          "fill-opacity": op }, svg);
        if (cell >= 15 && call.dp > 1) s("text", { x: x + cell / 2, y: y + cell / 2 + 3.5,
          "text-anchor": "middle", "font-size": cell >= 20 ? 10 : 8, fill: "#fff",
          "font-weight": 600 }, svg, dp);
        void tp;
      }
      // Tensor-parallel groups: tp consecutive ranks; outline each run of cells in one row.
      if (call.tp > 1) {
        for (let g0 = 0; g0 < call.devices.length; g0 += call.tp) {
          const ds = call.devices.slice(g0, g0 + call.tp).sort((a, b) => a - b);
          let a = ds[0], prev = ds[0];
          const flush = (x0, x1) => {
            const [px, py] = pos(x0), [qx, qy] = pos(x1);
            s("rect", { x: px + 0.5, y: py + 0.5, width: qx - px + cell - 1,
              height: qy - py + cell - 1, rx: 3, fill: "none", stroke: "#101828",
              "stroke-width": 1.2 }, svg);
          };
          for (const d of ds.slice(1)) {
            if (d === prev + 1 && Math.floor(d / GPN) === Math.floor(prev / GPN)) { prev = d; continue; }
            flush(a, prev); a = prev = d;
          }
          flush(a, prev);
        }
      }
      const nodes = [...new Set(call.devices.map((d) => Math.floor(d / GPN)))];
      h("div", { class: "meta" }, box, `dp ${call.dp} × tp ${call.tp} × pp ${call.pp} · ` +
        `${call.devices.length} GPU${call.devices.length > 1 ? "s" : ""} · node` +
        `${nodes.length > 1 ? "s " + devRange(nodes) : " " + nodes[0]}`);
      setTip(box, () => callTip(call, `GPUs ${devRange(call.devices)}<br>`));
    }
  }

  // ------------------------------------------------------------------ memory
  function renderMemory(c) {
    const old = c.querySelector(".mem-body"); if (old) old.remove();
    const body = h("div", { class: "mem-body" }, c);
    const M = D.memory;
    if (!M || !M.devices.length) { h("div", { class: "empty" }, body, "No memory figures."); return; }
    const lg = h("div", { class: "legend" }, body);
    for (const k of M.kinds) {
      const it = h("span", {}, lg);
      h("span", { class: "sw", style: `background:${M.colors[k]}` }, it);
      it.appendChild(document.createTextNode(M.labels[k] || k));
    }
    const capIt = h("span", {}, lg);
    h("span", { class: "sw", style: "background:none;border:0;border-top:2px dashed #d92d20;" +
      "height:0;width:16px;vertical-align:3px" }, capIt);
    capIt.appendChild(document.createTextNode("capacity"));
    const W = Math.max(680, c.clientWidth - 36), left = 52, right = 12, top = 14, bottom = 46;
    const H = 250, plotW = W - left - right, plotH = H - top - bottom;
    const cap = M.capacity_bytes || 0;
    const peakMax = Math.max(...M.devices.map((d) => d.peak), 1);
    // A plan far below capacity (tiny models) is drawn to its own scale, capacity noted.
    const capOnScale = cap && peakMax > 0.2 * cap;
    const maxB = Math.max(capOnScale ? cap * 1.06 : 0, peakMax * 1.08);
    const unit = maxB >= GIB ? GIB : maxB >= 1024 ** 2 ? 1024 ** 2 : 1024;
    const uname = unit === GIB ? "GiB" : unit === 1024 ** 2 ? "MiB" : "KiB";
    const gapN = NODES > 1 ? Math.max(3, Math.min(12, plotW / NUM * 0.8)) : 0;
    const slot = (plotW - gapN * (NODES - 1)) / NUM;
    const bw = Math.min(64, Math.max(1.5, slot * (slot > 8 ? 0.78 : 0.9)));
    const bx = (d) => left + d * slot + Math.floor(d / GPN) * gapN + (slot - bw) / 2;
    const Y = (b) => top + plotH - (b / maxB) * plotH;
    const svg = s("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, id: "memory-chart" }, body);
    const step = niceStep(maxB / unit, 5);
    for (let g = 0; g * unit <= maxB; g += step) {
      s("line", { x1: left, x2: W - right, y1: Y(g * unit), y2: Y(g * unit), stroke: "#eaecf0" }, svg);
      s("text", { x: left - 6, y: Y(g * unit) + 3.5, "text-anchor": "end", "font-size": 10.5,
        fill: "#667085" }, svg, `${+g.toFixed(1)} ${uname}`);
    }
    for (const dev of M.devices) {
      const g = s("g", { class: "mem-bar", "data-gpu": dev.d }, svg);
      let acc = 0;
      for (const k of M.kinds) {
        const v = dev.by[k] || 0;
        if (!v) continue;
        s("rect", { class: "mem-seg", "data-kind": k, x: bx(dev.d), y: Y(acc + v), width: bw,
          height: Math.max(0.5, Y(acc) - Y(acc + v)), fill: M.colors[k] }, g);
        acc += v;
      }
      if (cap && dev.peak > cap) s("rect", { x: bx(dev.d) - 1, y: Y(dev.peak) - 1, width: bw + 2,
        height: Y(0) - Y(dev.peak) + 1, fill: "none", stroke: "#d92d20", "stroke-width": 1.5 }, g);
      s("rect", { x: bx(dev.d) - (slot - bw) / 2, y: top, width: slot, height: plotH,
        fill: "transparent" }, g);
      setTip(g, () => {
        const rows = M.kinds.filter((k) => dev.by[k]).map((k) => `<tr><td><span class="tb" ` +
          `style="width:8px;background:${M.colors[k]}"></span> ${esc(M.labels[k] || k)}</td>` +
          `<td class="n">${fmtB(dev.by[k])}</td></tr>`).join("");
        return `<b>GPU ${dev.d}</b> <span class="t-muted">node ${Math.floor(dev.d / GPN)}</span>` +
          `<br>peak ${fmtB(dev.peak)}${cap ? ` = ${(100 * dev.peak / cap).toFixed(0)}% of ` +
          fmtB(cap) : ""}${dev.call ? `<br>largest working set: ${esc(dev.call)}` : ""}` +
          `<table>${rows}</table>`;
      });
    }
    if (cap && !capOnScale) {
      s("text", { x: W - right - 4, y: top + 4, "text-anchor": "end", "font-size": 11,
        fill: "#d92d20", "font-weight": 600 }, svg, `capacity ${fmtB(cap)}: far above this scale`);
    } else if (cap) {
      s("line", { x1: left, x2: W - right, y1: Y(cap), y2: Y(cap), stroke: "#d92d20",
        "stroke-width": 1.5, "stroke-dasharray": "6 4" }, svg);
      s("text", { x: W - right - 4, y: Y(cap) - 5, "text-anchor": "end", "font-size": 11,
        fill: "#d92d20", "font-weight": 600 }, svg, `capacity ${fmtB(cap)}`);
      if (M.headroom_bytes) {  // what a plan may use: capacity minus the headroom
        const u = M.usable_bytes;
        s("line", { id: "memory-usable", x1: left, x2: W - right, y1: Y(u), y2: Y(u),
          stroke: "#f79009", "stroke-width": 1.2, "stroke-dasharray": "2 3" }, svg);
        s("text", { x: left + 4, y: Y(u) - 4, "font-size": 10.5, fill: "#b54708" }, svg,
          `usable ${fmtB(u)} (headroom ${fmtB(M.headroom_bytes)}: CUDA context, NCCL, fragmentation)`);
      }
    }
    if (slot >= 18) for (const dev of M.devices) s("text", { x: bx(dev.d) + bw / 2,
      y: H - bottom + 13, "text-anchor": "middle", "font-size": 9.5, fill: "#667085" }, svg,
      slot >= 40 ? `GPU ${dev.d}` : String(dev.d));
    for (let n = 0; n < NODES; n++) {
      const x0 = bx(n * GPN), x1 = bx(n * GPN + GPN - 1) + bw;
      const ly = H - bottom + (slot >= 18 ? 19 : 6);
      s("line", { x1: x0, x2: x1, y1: ly, y2: ly, stroke: "#98a2b3" }, svg);
      const lbl = (x1 - x0) > 60 ? `node ${n}` : `${n}`;
      s("text", { x: (x0 + x1) / 2, y: ly + 14, "text-anchor": "middle", "font-size": 10.5,
        fill: "#475467" }, svg, lbl);
    }
    const worst = M.devices.reduce((a, b) => (b.peak > a.peak ? b : a));
    h("p", { class: "sub", style: "margin:6px 0 0" }, body,
      `Highest: GPU ${worst.d}, ${fmtB(worst.peak)}` + (cap ? ` (${(100 * worst.peak / cap)
        .toFixed(0)}% of ${fmtB(cap)})` : "") + `. Source: ${M.source}.` +
      (cap && M.devices.some((d) => d.peak > cap) ? " Some GPUs exceed their capacity " +
        "(outlined in red): this plan cannot run." : ""));
  }

  // ------------------------------------------------------------------ comparison + provenance
  function renderComparison(parent) {
    const c = card(parent, "comparison", "Against the baselines",
      "Estimated iteration time of this plan, of each baseline placement, and the proven " +
      "lower bound where the exact search found one. Shorter is better.");
    const P = D.provenance || {};
    const rows = [];
    if (D.iteration_time_s) rows.push({ n: `this plan${P.method ? " (" + P.method + ")" : ""}`,
      t: D.iteration_time_s, me: true });
    for (const [n, t] of Object.entries(P.baselines_s || {})) rows.push({ n, t });
    if (D.timelines[1]) rows.push({ n: "measured span", t: D.timelines[1].span_s, meas: true });
    if (!rows.length) { h("div", { class: "empty" }, c, "No iteration time or baselines."); return; }
    const W = Math.max(420, c.clientWidth - 36), lw = Math.min(250, W * 0.42), rowH = 28;
    const H = rows.length * rowH + 30;
    const maxT = Math.max(...rows.map((r) => r.t), P.lower_bound_s || 0) * 1.3;
    const X = (t) => lw + (t / maxT) * (W - lw - 10);
    const wrap = h("div", { class: "scroll-x" }, c);
    const svg = s("svg", { width: W, height: H, id: "comparison-chart" }, wrap);
    rows.forEach((r, i) => {
      const y = 8 + i * rowH;
      s("text", { x: lw - 8, y: y + 15, "text-anchor": "end", "font-size": 12,
        "font-weight": r.me ? 700 : 400, fill: "#344054" }, svg,
        r.n.length > 36 ? r.n.slice(0, 34) + "…" : r.n);
      s("rect", { x: lw, y: y + 3, width: Math.max(1, X(r.t) - lw), height: rowH - 9, rx: 4,
        fill: r.me ? "#3b5bdb" : r.meas ? "#12805c" : "#98a2b3" }, svg);
      let lbl = fmtS(r.t);
      if (!r.me && D.iteration_time_s && !r.meas) lbl += `  (${(r.t / D.iteration_time_s)
        .toFixed(2)}×)`;
      s("text", { x: X(r.t) + 6, y: y + 15, "font-size": 11.5, fill: "#344054" }, svg, lbl);
    });
    if (P.lower_bound_s) {
      const x = X(P.lower_bound_s);
      s("line", { x1: x, x2: x, y1: 4, y2: H - 20, stroke: "#d92d20", "stroke-dasharray": "4 3",
        "stroke-width": 1.5 }, svg);
      s("text", { x, y: H - 6, "text-anchor": "middle", "font-size": 11, fill: "#d92d20" }, svg,
        `lower bound ${fmtS(P.lower_bound_s)}`);
    }
    if (!Object.keys(P.baselines_s || {}).length) h("p", { class: "sub" }, c,
      "The plan carries no baseline times.");
  }
  function renderProvenance(parent) {
    const c = card(parent, "provenance", "Provenance", "How this plan was found.");
    const P = D.provenance;
    const dl = h("dl", { class: "prov" }, c);
    const item = (k, v, mono) => { h("dt", {}, dl, k); h("dd", { class: mono ? "mono" : "" }, dl, v); };
    if (P) {
      item("method", P.method);
      if (P.seed !== null && P.seed !== undefined) item("seed", String(P.seed));
      if (P.search_time_s !== null && P.search_time_s !== undefined)
        item("search time", fmtS(P.search_time_s));
      if (P.lower_bound_s) item("lower bound", `${fmtS(P.lower_bound_s)}` +
        (D.iteration_time_s ? ` (gap ${(100 * (D.iteration_time_s / P.lower_bound_s - 1))
          .toFixed(1)}%)` : ""));
      item("created by", P.created_by);
      for (const n of P.notes || []) item("note", n);
    } else item("method", "not recorded");
    item("plan file", D.plan_file, true);
    if (D.spec_path) item("spec", D.spec_path, true);
    item("spec hash", D.spec_hash, true);
    item("format", `plan.json v${D.format_version}`);
  }

  // ------------------------------------------------------------------ table
  function renderTable(parent) {
    const c = card(parent, "assignments", "Assignments",
      "Every call's layout and estimate. Click a row (or any bar) to highlight the call " +
      "across the page.");
    const meas = D.timelines.find((t) => t.source === "measured");
    const measDur = {};
    if (meas) for (const x of meas.slices) if (x.k === "call") {
      const m = measDur[x.n] || (measDur[x.n] = { s: Infinity, e: -Infinity });
      m.s = Math.min(m.s, x.s); m.e = Math.max(m.e, x.e);
    }
    const wrap = h("div", { class: "scroll-x" }, c);
    const t = h("table", { class: "assign" }, wrap);
    const cols = [["call"], ["model"], ["type"], ["layout"], ["dp", 1], ["tp", 1], ["pp", 1],
      ["micro-b.", 1], ["GPUs", 1], ["start", 1], ["duration", 1]];
    if (meas) cols.push(["measured", 1], ["meas/est", 1]);
    cols.push(["peak mem/GPU", 1], ["time breakdown"]);
    const hr = h("tr", {}, h("thead", {}, t));
    for (const [n, num] of cols) h("th", { class: num ? "num" : "" }, hr, n);
    const tb = h("tbody", {}, t);
    const cap = D.memory && D.memory.capacity_bytes;
    const palette = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948",
      "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];
    const allKeys = [...new Set(D.calls.flatMap((x) => Object.keys(x.breakdown_s || {})))];
    for (const call of D.calls) {
      const tr = h("tr", { class: "call-row", "data-call": call.name }, tb);
      const td0 = h("td", {}, tr);
      h("span", { class: "dot", style: `background:${call.color};margin-right:6px` }, td0);
      td0.appendChild(document.createTextNode(call.name));
      h("td", {}, tr, call.model || "–"); h("td", {}, tr, call.type || "–");
      h("td", { class: "mono" }, tr, call.layout);
      for (const v of [call.dp, call.tp, call.pp, call.micro_batches, call.devices.length])
        h("td", { class: "num" }, tr, String(v));
      const dur = call.end_s !== null ? call.end_s - call.start_s : null;
      h("td", { class: "num" }, tr, fmtS(call.start_s));
      h("td", { class: "num" }, tr, fmtS(dur));
      if (meas) {
        const m = measDur[call.name];
        h("td", { class: "num" }, tr, m ? fmtS(m.e - m.s) : "–");
        h("td", { class: "num" }, tr, m && dur ? ((m.e - m.s) / dur).toFixed(2) + "×" : "–");
      }
      h("td", { class: "num" }, tr, fmtB(call.peak_memory_bytes) + (cap && call.peak_memory_bytes
        ? ` (${(100 * call.peak_memory_bytes / cap).toFixed(0)}%)` : ""));
      const td = h("td", {}, tr);
      const bd = h("span", { class: "bd" }, td);
      const tot = Object.values(call.breakdown_s).reduce((a, b) => a + b, 0) || 1;
      for (const [k, v] of Object.entries(call.breakdown_s)) {
        if (v <= 0) continue;
        h("span", { style: `width:${(100 * v / tot).toFixed(2)}%;background:` +
          palette[allKeys.indexOf(k) % palette.length], title: `${k}: ${fmtS(v)}` }, bd);
      }
      setTip(tr, () => callTip(call));
    }
    if (allKeys.length) {
      const lg = h("div", { class: "legend", style: "margin-top:8px" }, c);
      h("span", {}, lg, "breakdown:");
      allKeys.forEach((k, i) => {
        const it = h("span", {}, lg);
        h("span", { class: "sw", style: `background:${palette[i % palette.length]}` }, it);
        it.appendChild(document.createTextNode(k));
      });
    }
  }

  // ------------------------------------------------------------------ page
  function guarded(name, fn) {
    try { fn(); } catch (err) {
      console.error(`planner show: drawing ${name} failed:`, err);
      h("div", { class: "notes err" }, app, `Drawing ${name} failed: ${err}`);
    }
  }
  guarded("header", renderHeader);
  guarded("graph", () => renderGraph(app));
  let ganttCard = null, memCard = null;
  guarded("timeline", () => {
    const srcs = D.timelines.map((t) => t.source).join(" and ");
    ganttCard = card(app, "timeline", "Timeline of one iteration",
      `GPU × time (${srcs}${D.timelines.length > 1 ? ": in each lane the upper row is the " +
      "estimate, the lower row the measurement" : ""}). Each call is a bar on every GPU it ` +
      "occupies; reallocations and data transfers are striped; hatched background is idle. " +
      "Hover for the estimate's breakdown; the right column is each " +
      (NUM > 32 ? "node's" : "GPU's") + " busy share.");
    const lg = h("div", { class: "legend" }, ganttCard);
    for (const call of D.calls) {
      const it = h("span", { "data-call": call.name, style: "cursor:pointer" }, lg);
      h("span", { class: "sw", style: `background:${call.color}` }, it);
      it.appendChild(document.createTextNode(call.name));
    }
    if (D.timelines.length > 1) {
      const it = h("span", {}, lg);
      h("span", { class: "sw", style: "background:#98a2b3;opacity:.72;border:1px solid #101828" }, it);
      it.appendChild(document.createTextNode("measured (lower row of each GPU)"));
    }
    for (const [k, label] of [["realloc", "parameter realloc"], ["transfer", "data transfer"],
      ["offload", "offload"], ["idle", "idle"]]) {
      if (k !== "idle" && !D.timelines.some((t) => t.slices.some((x) => x.k === k))) continue;
      const it = h("span", {}, lg);
      h("span", { class: "sw " + (k === "idle" ? "idle" : "hatch-" + k) }, it);
      it.appendChild(document.createTextNode(label));
    }
    renderGantt(ganttCard);
  });
  guarded("device mesh", () => renderMesh(app));
  guarded("memory", () => {
    memCard = card(app, "memory", "Peak memory per GPU",
      "Each GPU's highest point over the iteration: resident model states (parameters, " +
      "gradients, optimizer) plus its largest working set (activations, KV cache, a " +
      "reallocated parameter copy), against the GPU's capacity.");
    renderMemory(memCard);
  });
  const row = h("div", { class: "row2" }, app);
  guarded("comparison", () => renderComparison(row));
  guarded("provenance", () => renderProvenance(row));
  guarded("assignments", () => renderTable(app));
  h("footer", {}, app, "Written by planner show · self-contained: no network needed.");
  let timer = null;
  window.addEventListener("resize", () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      if (ganttCard) guarded("timeline", () => renderGantt(ganttCard));
      if (memCard) guarded("memory", () => renderMemory(memCard));
    }, 150);
  });
  document.body.setAttribute("data-rendered", "1");
})();
