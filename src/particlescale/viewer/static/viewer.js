/* particlescale trace viewer: draws the view models embedded in #ps-data as SVG.
 *
 * Layout comes precomputed (lane, segment, column, row per node; see viewer/model.py); this
 * script maps it to pixels, draws edges ancestor -> child, nodes sized by weight and coloured
 * by state, an ESS strip per lane, and wires hover (tooltip) and click (detail panel, lineage).
 * Model output is only ever written with textContent: never as markup.
 */
(function () {
  "use strict";
  var SVGNS = "http://www.w3.org/2000/svg";
  var data = JSON.parse(document.getElementById("ps-data").textContent);

  // ---- small DOM helpers ------------------------------------------------------------------
  function h(tag, cls, parent, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (parent) parent.appendChild(e);
    return e;
  }
  function s(tag, attrs, parent) {
    var e = document.createElementNS(SVGNS, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function fmt(x, digits) {
    if (x === null || x === undefined) return "\u2013";
    if (x === "inf") return "\u221e";
    if (x === "-inf") return "\u2212\u221e";
    if (typeof x !== "number") return String(x);
    if (x !== 0 && (Math.abs(x) >= 1e5 || Math.abs(x) < 1e-3)) return x.toExponential(2);
    return String(Number(x.toPrecision(digits || 3)));
  }
  function clamp(lo, hi, x) { return Math.max(lo, Math.min(hi, x)); }
  function short(str, n) {
    str = str === null || str === undefined ? "" : String(str);
    return str.length > n ? str.slice(0, n - 1) + "\u2026" : str;
  }
  function stateClass(n) {
    if (!n.finished) return "live";
    return n.ok === true ? "ok" : n.ok === false ? "bad" : "fin";
  }
  function okMark(ok) { return ok === true ? " \u2713" : ok === false ? " \u2717" : ""; }

  // ---- page skeleton ----------------------------------------------------------------------
  var header = h("header", "page", document.body);
  h("h1", "", header, data.title);
  var legend = h("div", "legend", header);
  [["live", "live particle"], ["ok", "finished, correct"], ["bad", "finished, incorrect"],
   ["fin", "finished (no gold answer)"], ["ref", "PG/PT reference path"],
   ["rs", "resampled after this step"]].forEach(function (p) {
    var item = h("span", "", legend);
    h("span", "sw " + p[0], item);
    item.appendChild(document.createTextNode(p[1]));
  });
  h("span", "", legend, "node area \u221d weight \u00b7 click a node for its text");
  var main = h("main", "", document.body);
  var tracesBox = h("div", "", main);
  tracesBox.id = "traces";
  var detail = h("aside", "", main);
  detail.id = "detail";
  var tooltip = h("div", "", document.body);
  tooltip.id = "tooltip";
  showHint();

  var views = [];  // per trace: {trace, byId, geometry, svgs}
  var selected = null;

  data.traces.forEach(function (trace, ti) { views.push(renderTrace(trace, ti)); });

  // ---- one trace --------------------------------------------------------------------------
  function renderTrace(trace, ti) {
    var sec = h("section", "trace", tracesBox);
    sec.dataset.traceIndex = String(ti);
    var head = h("div", "trace-head", sec);
    h("span", "method", head, trace.method);
    h("span", "pid", head, trace.problem.id === null ? "" : trace.problem.id);
    h("div", "question", head, trace.problem.question || "");
    var cfg = trace.config || {};
    var meta = h("div", "meta", head);
    function metaItem(label, value) {
      if (value === null || value === undefined) return;
      if (meta.firstChild) meta.appendChild(document.createTextNode("  \u00b7  "));
      var span = h("span", "", meta);
      span.appendChild(document.createTextNode(label + " "));
      h("b", "", span, value);
    }
    metaItem("gold", trace.problem.answer);
    metaItem("budget", cfg.budget);
    metaItem("seed", cfg.seed);
    metaItem("generator", cfg.generator);
    metaItem("reward", cfg.reward);
    metaItem("nodes", trace.node_count);
    var det = h("details", "", head);
    h("summary", "", det, "configuration and events");
    var cfgLines = Object.keys(cfg).map(function (k) { return k + " = " + JSON.stringify(cfg[k]); });
    h("pre", "", det, cfgLines.join("\n"));
    if (trace.events.length) h("pre", "", det, trace.events.map(eventText).join("\n"));

    var byId = new Map();
    trace.nodes.forEach(function (n) { byId.set(n.id, n); });
    var view = {trace: trace, ti: ti, byId: byId, lanes: [], section: sec};

    // Geometry shared by the lanes of this trace, so that step t has one x everywhere.
    // Segment k (PT iteration k) starts at the same x in every lane.
    var segCols = [], maxRows = 1;
    trace.lanes.forEach(function (lane) {
      lane.segments.forEach(function (seg, k) {
        segCols[k] = Math.max(segCols[k] || 0, seg.cols);
        maxRows = Math.max(maxRows, seg.rows);
      });
    });
    var maxCols = segCols.reduce(function (a, c) { return a + c + 1; }, 0);
    var colW = clamp(24, 64, 1000 / maxCols);
    var rowH = clamp(4, 22, 600 / maxRows);
    var segLabels = trace.lanes.some(function (lane) { return lane.segments.length > 1; });
    var hasEss = trace.steps.some(function (st) { return typeof st.ess === "number"; });
    // Segments side by side need room for the answer labels of the one on their left.
    var g = {colW: colW, rowH: rowH, gutter: hasEss ? 34 : 10, gap: segLabels ? 90 : 16,
             top: segLabels ? 26 : 13, essH: hasEss ? 30 : 0, hasEss: hasEss, pad: 8,
             labelW: 96, rMax: Math.min(colW * 0.42, Math.max(3 * rowH, 7)), rMin: 1.4,
             segCols: segCols};
    view.g = g;

    var lanesBox = h("div", "lanes", sec);
    if (!trace.lanes.length) h("p", "meta", lanesBox, "This trace recorded no steps.");
    var drawn = 0;
    trace.lanes.forEach(function (lane, li) {
      var lv = renderLane(view, lane, li, lanesBox);
      view.lanes.push(lv);
      drawn += lv.drawn;
    });
    sec.dataset.nodeCount = String(drawn);
    return view;
  }

  function eventText(e) {
    if (e.kind === "swap" && e.chains) {
      return "swap after iteration " + e.iteration + ": chain " + (e.chains[0] + 1) +
        " \u2194 chain " + (e.chains[1] + 1);
    }
    return JSON.stringify(e);
  }

  // ---- one lane (a band, or a PT chain made of iteration segments) ------------------------
  function renderLane(view, lane, li, parent) {
    var trace = view.trace, g = view.g;
    var box = h("div", "lane", parent);
    var label = h("div", "lane-label", box);
    h("b", "", label, lane.name);
    var firstStep = trace.steps[lane.segments[0].steps[0]];
    if (/^chain /.test(lane.name) && firstStep && firstStep.temperature !== null) {
      label.appendChild(document.createTextNode("  \u03c4 = " + fmt(firstStep.temperature)));
    }
    var last = lane.segments[lane.segments.length - 1];
    var nRes = 0, nSteps = 0;
    lane.segments.forEach(function (seg) {
      nSteps += seg.cols;
      seg.steps.forEach(function (si) { if (trace.steps[si].resampled) nRes++; });
    });
    label.appendChild(document.createTextNode("  \u00b7 " + nSteps + (nSteps === 1 ? " step" :
      " steps") + (g.hasEss ? " \u00b7 resampled " + nRes + "\u00d7" : "")));
    if (last.answers.length) {
      label.appendChild(document.createTextNode("  \u00b7 " +
        (lane.segments.length > 1 ? last.label + ", " : "") + trace.answers_of + ":"));
      last.answers.slice(0, 5).forEach(function (a) {
        var cls = a.ok === true ? "ok" : a.ok === false ? "bad" : "fin";
        h("span", "ans " + cls, label, short(a.answer === null ? "none" : a.answer, 18) +
          okMark(a.ok) + " \u00d7" + a.count + " (w " + fmt(a.weight, 2) + ")");
      });
      if (last.answers.length > 5) h("span", "ans", label, "+" + (last.answers.length - 5));
    }

    // x origin of each segment: a root column, then its step columns, then a gap.
    var x0 = [], x = g.gutter, rows = 1;
    lane.segments.forEach(function (seg, k) {
      x0.push(x);
      x += (g.segCols[k] + 1) * g.colW + g.gap;
      rows = Math.max(rows, seg.rows);
    });
    var yNodes = g.top + g.essH + g.pad;
    var width = x - g.gap + g.labelW;
    var height = yNodes + rows * g.rowH + g.pad;
    var svg = s("svg", {"class": "genealogy", width: width, height: height,
                        viewBox: "0 0 " + width + " " + height}, box);
    svg.dataset.lane = String(li);
    var lv = {lane: lane, li: li, svg: svg, x0: x0, yNodes: yNodes, drawn: 0};
    function px(n) { return x0[n.seg] + (n.col + 1) * g.colW; }
    function py(n) { return yNodes + (n.row + 0.5) * g.rowH; }
    lv.px = px; lv.py = py;

    drawEss(view, lv, lane, height);

    var nodes = view.trace.nodes.filter(function (n) { return n.lane === li; });
    // Edges, bucketed by the child's weight relative to uniform (three opacities).
    var buckets = ["", "", ""], refPath = "";
    var rootY = {};
    nodes.forEach(function (n) {
      var p = view.byId.get(n.parent);
      var x2 = px(n), y2 = py(n), x1, y1;
      if (p && p.lane === n.lane && p.seg === n.seg) {
        x1 = px(p); y1 = py(p);
      } else if (n.col === 0) {
        var seg = lane.segments[n.seg];
        x1 = x0[n.seg]; y1 = yNodes + seg.rows * g.rowH / 2;
        rootY[n.seg] = y1;
      } else {
        return;
      }
      var xm = (x1 + x2) / 2;
      var d = "M" + x1.toFixed(1) + " " + y1.toFixed(1) + "C" + xm.toFixed(1) + " " +
        y1.toFixed(1) + " " + xm.toFixed(1) + " " + y2.toFixed(1) + " " + x2.toFixed(1) + " " +
        y2.toFixed(1);
      if (n.ref && p && p.ref) { refPath += d; return; }
      var q = n.w * trace.steps[n.step].n;
      buckets[q < 0.5 ? 0 : q < 2 ? 1 : 2] += d;
    });
    [[0.18, 0.6], [0.4, 0.9], [0.75, 1.6]].forEach(function (style, i) {
      if (buckets[i]) {
        s("path", {"class": "edges", d: buckets[i], "stroke-opacity": style[0],
                   "stroke-width": style[1]}, svg);
      }
    });
    if (refPath) s("path", {"class": "ref-edges", d: refPath}, svg);
    Object.keys(rootY).forEach(function (si) {
      s("rect", {"class": "root", x: x0[si] - 3, y: rootY[si] - 3, width: 6, height: 6}, svg)
        .appendChild(titleOf("prompt (root)"));
    });
    lv.lineage = s("path", {"class": "lineage", d: ""}, svg);

    // Nodes: biggest first, so small nodes stay on top and clickable.
    var circles = s("g", {"class": "nodes"}, svg);
    var sized = nodes.map(function (n) {
      var q = n.w * trace.steps[n.step].n;
      return [n, clamp(g.rMin, g.rMax, 0.42 * g.rowH * Math.sqrt(q))];
    });
    sized.sort(function (a, b) { return b[1] - a[1]; });
    var frag = document.createDocumentFragment();
    lv.circleOf = new Map();
    sized.forEach(function (pair) {
      var n = pair[0];
      var c = document.createElementNS(SVGNS, "circle");
      c.setAttribute("class", "node " + stateClass(n) + (n.ref ? " ref" : ""));
      c.setAttribute("cx", px(n).toFixed(1));
      c.setAttribute("cy", py(n).toFixed(1));
      c.setAttribute("r", pair[1].toFixed(2));
      c.setAttribute("data-id", String(n.id));
      lv.circleOf.set(n.id, c);
      frag.appendChild(c);
    });
    circles.appendChild(frag);
    lv.drawn = sized.length;

    drawLabels(view, lv, lane);
    drawSwaps(view, lv, lane);

    // Pointing picks the node of the cell under the mouse (column by nearest step, row by
    // band), not the topmost circle: in a 128-particle column heavy nodes overlap their
    // neighbours, and a cell is easier to hit than a 3-pixel dot.
    var cells = new Map();
    nodes.forEach(function (n) { cells.set(n.seg + ":" + n.col + ":" + n.row, n); });
    function pick(ev) {
      var box = svg.getBoundingClientRect();
      var x = ev.clientX - box.left, y = ev.clientY - box.top;
      var row = Math.floor((y - yNodes) / g.rowH);
      for (var si = 0; si < x0.length; si++) {
        var col = Math.round((x - x0[si]) / g.colW) - 1;
        if (col >= 0 && col < lane.segments[si].cols) {
          return cells.get(si + ":" + col + ":" + row) || null;
        }
      }
      return null;
    }
    var ring = s("circle", {"class": "hover-ring", r: 0, cx: -99, cy: -99}, svg);
    var hovered = null;
    svg.addEventListener("mousemove", function (ev) {
      var n = pick(ev);
      if (n !== hovered) {
        hovered = n;
        svg.style.cursor = n ? "pointer" : "";
        if (n) {
          ring.setAttribute("cx", px(n));
          ring.setAttribute("cy", py(n));
          ring.setAttribute("r", Number(lv.circleOf.get(n.id).getAttribute("r")) + 2.5);
          showTooltip(view, n, ev);
        } else {
          ring.setAttribute("r", 0);
          tooltip.style.display = "none";
        }
      }
      if (n) placeTooltip(ev);
    });
    svg.addEventListener("mouseleave", function () {
      hovered = null;
      ring.setAttribute("r", 0);
      tooltip.style.display = "none";
    });
    svg.addEventListener("click", function (ev) {
      var n = pick(ev);
      if (n) select(view, n, lv.circleOf.get(n.id));
    });
    return lv;
  }

  function titleOf(text) {
    var t = document.createElementNS(SVGNS, "title");
    t.textContent = text;
    return t;
  }

  function drawEss(view, lv, lane, height) {
    var trace = view.trace, g = view.g, svg = lv.svg;
    var y0 = g.top, y1 = g.top + g.essH;
    if (g.hasEss) {
      s("text", {"class": "tick", x: 2, y: y0 + 9}, svg).textContent = "ESS";
      s("text", {"class": "tick", x: 2, y: y1}, svg).textContent = "/N";
    }
    lane.segments.forEach(function (seg, si) {
      var xa = lv.x0[si] + g.colW * 0.5, xb = lv.x0[si] + (seg.cols + 0.5) * g.colW;
      if (g.hasEss) {
        s("rect", {"class": "ess-bg", x: xa, y: y0, width: xb - xa, height: g.essH}, svg);
      }
      if (seg.label) {
        s("text", {"class": "seg", x: lv.x0[si], y: 11}, svg).textContent = seg.label;
      }
      var every = Math.max(1, Math.ceil(22 / g.colW));
      var pts = [];
      var steps = seg.steps.map(function (i) { return trace.steps[i]; });
      var nRes = steps.filter(function (st) { return st.resampled; }).length;
      steps.forEach(function (st, c) {
        var x = lv.x0[si] + (c + 1) * g.colW;
        if ((c + 1) % every === 0 || c === 0) {
          s("text", {"class": "tick", x: x, y: g.top - 3,
                     "text-anchor": "middle"}, svg).textContent = String(st.t);
        }
        if (typeof st.ess === "number" && st.n > 0) {
          var y = y1 - clamp(0, 1, st.ess / st.n) * g.essH;
          pts.push(x.toFixed(1) + "," + y.toFixed(1));
          s("circle", {"class": "ess-pt", cx: x, cy: y, r: 1.6}, svg);
        }
        if (st.resampled) {
          var xr = x + g.colW / 2;
          s("path", {"class": "resample", d: "M" + (xr - 4) + " " + (y1 - 7) + "L" + (xr + 4) +
                     " " + (y1 - 7) + "L" + xr + " " + (y1 - 1) + "Z"}, svg);
          // Dashed lines only when resampling was occasional (ESS-triggered): when it
          // happens after every step, lines in every gap would say nothing.
          if (nRes < steps.length - 1) {
            s("line", {"class": "resample-line", x1: xr, x2: xr, y1: y1,
                       y2: height - g.pad}, svg);
          }
        }
        var hit = s("rect", {"class": "hit", x: x - g.colW / 2, y: y0 - 12, width: g.colW,
                             height: g.essH + 12}, svg);
        hit.appendChild(titleOf(
          lane.name + (seg.label ? " " + seg.label : "") + " \u00b7 step " + st.t +
          "\nESS " + fmt(st.ess) + " / " + st.n +
          (typeof st.ess === "number" ? " (" + fmt(st.ess / st.n, 2) + ")" : "") +
          (st.temperature !== null ? "\n\u03c4 " + fmt(st.temperature) : "") +
          (st.resampled ? "\nresampled after this step" : "")));
      });
      if (pts.length > 1) s("polyline", {"class": "ess", points: pts.join(" ")}, svg);
    });
  }

  function drawLabels(view, lv, lane) {
    var g = view.g, svg = lv.svg;
    lane.segments.forEach(function (seg, si) {
      var lastY = {};
      seg.labels.forEach(function (lab) {
        var x = lv.x0[si] + (lab.col + 1) * g.colW + Math.max(4, g.rowH * 0.6) + 2;
        var y = lv.yNodes + ((lab.row0 + lab.row1) / 2 + 0.5) * g.rowH + 3.5;
        if (lastY[lab.col] !== undefined && y - lastY[lab.col] < 11) return;
        lastY[lab.col] = y;
        var cls = lab.ok === true ? "ok" : lab.ok === false ? "bad" : "fin";
        var t = s("text", {"class": "label " + cls, x: x, y: y}, svg);
        t.textContent = short(lab.answer === null ? "none" : lab.answer, 14) + okMark(lab.ok) +
          (lab.count > 1 ? " \u00d7" + lab.count : "");
      });
    });
  }

  function drawSwaps(view, lv, lane) {
    var m = /^chain (\d+)$/.exec(lane.name);
    if (!m) return;
    var chain = Number(m[1]) - 1, g = view.g;
    view.trace.events.forEach(function (e) {
      if (e.kind !== "swap" || !e.chains || e.chains.indexOf(chain) < 0) return;
      var si = e.iteration - 1;
      var seg = lane.segments[si];
      if (!seg) return;
      var x = lv.x0[si] + (g.segCols[si] + 1.5) * g.colW + g.gap / 2;
      var t = s("text", {"class": "swap", x: x, y: g.top + g.essH / 2 + 5,
                         "text-anchor": "middle"}, lv.svg);
      t.textContent = "\u21c5";
      t.appendChild(titleOf(eventText(e)));
    });
  }

  // ---- interaction ------------------------------------------------------------------------
  function showTooltip(view, n, ev) {
    var st = view.trace.steps[n.step];
    var lines = [st.band + " \u00b7 step " + st.t + " \u00b7 node " + n.id,
                 "weight " + fmt(n.w) + "   reward " + fmt(n.reward) + "   score " + fmt(n.score)];
    if (n.finished) lines.push("finished: " + (n.answer === null ? "no answer" : n.answer) +
                               okMark(n.ok));
    lines.push(short(view.trace.texts[n.text], 240));
    tooltip.textContent = lines.join("\n");
    tooltip.style.display = "block";
    placeTooltip(ev);
  }

  function placeTooltip(ev) {
    var x = ev.clientX + 14, y = ev.clientY + 14;
    var r = tooltip.getBoundingClientRect();
    if (x + r.width > window.innerWidth - 4) x = ev.clientX - r.width - 14;
    if (y + r.height > window.innerHeight - 4) y = ev.clientY - r.height - 14;
    tooltip.style.left = Math.max(0, x) + "px";
    tooltip.style.top = Math.max(0, y) + "px";
  }

  function lineageOf(view, n) {
    var path = [n], seen = new Set([n.id]);
    var p = view.byId.get(n.parent);
    while (p && !seen.has(p.id)) {
      path.push(p);
      seen.add(p.id);
      p = view.byId.get(p.parent);
    }
    return path.reverse();
  }

  function select(view, n, circle) {
    if (selected) {
      selected.circle.classList.remove("sel");
      selected.lv.lineage.setAttribute("d", "");
    }
    var lv = view.lanes[n.lane];
    circle.classList.add("sel");
    var line = lineageOf(view, n);
    var d = "";
    for (var i = 1; i < line.length; i++) {
      var a = line[i - 1], b = line[i];
      if (a.lane !== b.lane || a.seg !== b.seg) continue;
      d += (d && i > 1 ? "L" : "M") + lv.px(a).toFixed(1) + " " + lv.py(a).toFixed(1) +
        "L" + lv.px(b).toFixed(1) + " " + lv.py(b).toFixed(1);
    }
    lv.lineage.setAttribute("d", d);
    selected = {circle: circle, lv: lv};
    showDetail(view, n, line);
  }

  function showHint() {
    detail.textContent = "";
    h("h2", "", detail, "Particle details");
    h("p", "hint", detail, "Hover a node for a summary; click it to see its step text, " +
      "reward, score and weight here, and to highlight its ancestry. Purple strips plot " +
      "ESS/N per step; red triangles mark resampling.");
  }

  function showDetail(view, n, line) {
    var trace = view.trace, st = trace.steps[n.step];
    detail.textContent = "";
    detail.dataset.nodeId = String(n.id);
    detail.dataset.traceIndex = String(view.ti);
    h("h2", "", detail, trace.method + " \u00b7 " + st.band + " \u00b7 step " + st.t);
    var dl = h("dl", "", detail);
    function row(k, v, cls) { h("dt", "", dl, k); h("dd", cls || "", dl, v); }
    row("node", n.id + (n.parent === null ? "" : "  (parent " + n.parent + ")"));
    row("weight", fmt(n.w, 4) + "  (" + fmt(n.w * st.n, 3) + "\u00d7 uniform 1/" + st.n + ")");
    row("log-weight", fmt(n.logw, 4));
    row("reward", fmt(n.reward, 4));
    row("score", fmt(n.score, 4));
    row("finished", n.finished ? "yes" : "no");
    if (n.finished) {
      row("answer", (n.answer === null ? "none" : n.answer) + okMark(n.ok) +
          (trace.problem.answer !== null ? "  (gold " + trace.problem.answer + ")" : ""),
          n.ok === true ? "ok" : n.ok === false ? "bad" : "");
    }
    if (n.ref) row("reference", "yes (the conditional SMC slot)");
    row("ESS", fmt(st.ess) + " / " + st.n);
    row("resampled", st.resampled ? "yes, after this step" : "no");
    if (st.temperature !== null) row("\u03c4 (softmax)", fmt(st.temperature));
    h("h3", "", detail, "Step text");
    var pre = h("pre", "step-text", detail, trace.texts[n.text]);
    pre.id = "detail-text";
    h("h3", "", detail, "Solution so far (ancestry)");
    var full = h("pre", "prefix", detail);
    line.forEach(function (a, i) {
      var p = i > 0 ? line[i - 1] : null;
      // A finished particle carried to the next step is a copy: its text is not a new step.
      if (p && a.finished && p.finished) return;
      var prev = full.lastChild ? full.lastChild.textContent : "";
      if (prev && !/\s$/.test(prev)) full.appendChild(document.createTextNode("\n"));
      h("span", a === n ? "cur" : "", full, trace.texts[a.text]);
    });
    if (n.finished && line.length > 1 && line[line.length - 2].finished) {
      var spans = full.getElementsByTagName("span");
      if (spans.length) spans[spans.length - 1].className = "cur";
    }
  }

  document.addEventListener("keydown", function (ev) {
    if (ev.key === "Escape" && selected) {
      selected.circle.classList.remove("sel");
      selected.lv.lineage.setAttribute("d", "");
      selected = null;
      showHint();
    }
  });

  document.body.dataset.renderMs = String(Math.round(performance.now()));
  document.body.dataset.ready = "1";
})();
