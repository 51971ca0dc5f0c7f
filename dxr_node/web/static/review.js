// Review page: pan/zoom over the radiograph, the measured bands drawn on it, and
// click-to-place of a bone's two ends, or drag of one end (posted to
// /api/exams/{id}/correct).
// Plain JS, no library; image coordinates are [row, col] pixel centres like the engine's.
"use strict";
(function () {
  const viewer = document.getElementById("viewer");
  if (!viewer) return;
  const frame = document.getElementById("frame"), stage = document.getElementById("stage");
  const svg = document.getElementById("marks"), hint = document.getElementById("hint");
  const rows = Number(viewer.dataset.rows), cols = Number(viewer.dataset.cols);
  const editable = viewer.dataset.editable === "yes";
  const bones = JSON.parse(viewer.dataset.bones || "{}");
  const NS = "http://www.w3.org/2000/svg";
  let scale = 1, tx = 0, ty = 0, placing = null, points = [], drag = null;

  svg.setAttribute("viewBox", `0 0 ${cols} ${rows}`);
  svg.setAttribute("width", cols);
  svg.setAttribute("height", rows);
  if (editable) say("Drag to pan, wheel to zoom; drag a bone's end, or Place a bone.");

  function apply() { stage.style.transform = `translate(${tx}px, ${ty}px) scale(${scale})`; }
  function fit() {
    scale = Math.min(frame.clientWidth / cols, frame.clientHeight / rows);
    tx = (frame.clientWidth - cols * scale) / 2;
    ty = (frame.clientHeight - rows * scale) / 2;
    apply();
  }
  function zoomAt(factor, x, y) {  // x, y in frame pixels stay where they are
    const next = Math.min(8, Math.max(0.05, scale * factor));
    tx = x - (x - tx) * next / scale;
    ty = y - (y - ty) * next / scale;
    scale = next;
    apply();
  }
  function toImage(event) {  // frame pixel -> [row, col] (pixel centres are integers)
    const box = frame.getBoundingClientRect();
    const x = (event.clientX - box.left - tx) / scale, y = (event.clientY - box.top - ty) / scale;
    return [y - 0.5, x - 0.5];
  }
  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    (parent || svg).appendChild(node);
    return node;
  }
  const xy = (p) => `${p[1] + 0.5},${p[0] + 0.5}`;
  function line(a, b, cls) {
    el("line", {x1: a[1] + 0.5, y1: a[0] + 0.5, x2: b[1] + 0.5, y2: b[0] + 0.5, class: cls});
  }

  function draw() {
    svg.replaceChildren();
    for (const [name, b] of Object.entries(bones)) {
      const g = el("g", {class: b.reader_positioned ? "bone reader" : "bone", "data-bone": name});
      el("polygon", {points: b.roi_rc.map(xy).join(" "), class: "roi"}, g);
      for (const [key, cls] of [["outer_edge_a_rc", "outer"], ["outer_edge_b_rc", "outer"],
                                ["inner_edge_a_rc", "inner"], ["inner_edge_b_rc", "inner"]]) {
        const [a, c] = b[key];
        el("line", {x1: a[1] + 0.5, y1: a[0] + 0.5, x2: c[1] + 0.5, y2: c[0] + 0.5, class: cls}, g);
      }
      el("line", {x1: b.proximal_rc[1] + 0.5, y1: b.proximal_rc[0] + 0.5,
                  x2: b.distal_rc[1] + 0.5, y2: b.distal_rc[0] + 0.5, class: "axis"}, g);
      for (const p of [b.proximal_rc, b.distal_rc]) {
        el("circle", {cx: p[1] + 0.5, cy: p[0] + 0.5, r: 6, class: "end"}, g);
      }
      const label = el("text", {x: b.distal_rc[1] + 0.5, y: b.distal_rc[0] - 14, class: "label"}, g);
      label.textContent = name + (b.reader_positioned ? " (reader)" : "");
    }
    for (const p of points) el("circle", {cx: p[1] + 0.5, cy: p[0] + 0.5, r: 8, class: "pick"});
    if (points.length === 2) line(points[0], points[1], "pick");
  }

  function say(text, bad) { hint.textContent = text; hint.classList.toggle("bad", !!bad); }
  function startPlacing(bone) {
    placing = bone; points = []; draw();
    say(`${bone}: click the proximal end (base) of the metacarpal`);
  }
  async function send(bone, proximal, distal) {
    say(`${bone}: measuring…`);
    const response = await fetch(`/api/exams/${viewer.dataset.job}/correct`, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": viewer.dataset.csrf},
      body: JSON.stringify({bone: bone, proximal_rc: proximal, distal_rc: distal}),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      say(`${bone} not re-measured: ${body.detail || response.status}`, true);
      placing = null; points = []; draw();
      return;
    }
    window.location.reload();  // the server renders the recomputed values
  }
  function pick(point) {
    points.push(point);
    draw();
    if (points.length === 1) say(`${placing}: now click the distal end (head)`);
    else send(placing, points[0], points[1]);
  }
  function endAt(point) {  // the bone end within 12 screen pixels of an image point
    for (const [name, b] of Object.entries(bones)) {
      for (const key of ["proximal_rc", "distal_rc"]) {
        const p = b[key];
        if (Math.hypot(p[0] - point[0], p[1] - point[1]) * scale < 12) return {name, key};
      }
    }
    return null;
  }

  frame.addEventListener("wheel", (event) => {
    event.preventDefault();
    const box = frame.getBoundingClientRect();
    zoomAt(event.deltaY < 0 ? 1.25 : 0.8, event.clientX - box.left, event.clientY - box.top);
  }, {passive: false});
  frame.addEventListener("pointerdown", (event) => {
    const end = editable && !placing ? endAt(toImage(event)) : null;
    drag = {x: event.clientX, y: event.clientY, tx, ty, moved: false, end};
    frame.setPointerCapture(event.pointerId);
  });
  frame.addEventListener("pointermove", (event) => {
    if (!drag) return;
    const dx = event.clientX - drag.x, dy = event.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 4) drag.moved = true;
    if (!drag.moved) return;
    if (drag.end) { bones[drag.end.name][drag.end.key] = toImage(event); draw(); }
    else { tx = drag.tx + dx; ty = drag.ty + dy; apply(); }
  });
  frame.addEventListener("pointerup", (event) => {
    const done = drag;
    drag = null;
    if (done && done.end && done.moved) {
      const b = bones[done.end.name];
      send(done.end.name, b.proximal_rc, b.distal_rc);
    } else if (done && !done.moved && placing) pick(toImage(event));
  });
  for (const button of viewer.querySelectorAll("[data-zoom]")) {
    button.addEventListener("click", () => {
      const mode = button.dataset.zoom;
      if (mode === "fit") fit();
      else zoomAt(mode === "in" ? 1.5 : 1 / 1.5, frame.clientWidth / 2, frame.clientHeight / 2);
    });
  }
  for (const button of viewer.querySelectorAll("[data-bone]")) {
    if (button.tagName === "BUTTON") button.addEventListener("click", () => startPlacing(button.dataset.bone));
  }
  window.addEventListener("resize", fit);
  draw();
  fit();
})();
