// aidsafe report: reads the JSON block, renders the summary, a filtered list (100 rows at a time)
// and, on demand, one record's deliberation timeline. Every text from a record goes in through
// textContent or a text node: nothing a prompt or a model wrote is parsed as HTML.
(function () {
  "use strict";
  var started = performance.now();
  var data = JSON.parse(document.getElementById("aidsafe-data").textContent);
  var S = data.summary;
  var R = data.records;
  var PAGE = 100;
  var shown = 0;
  var matches = [];
  var openId = null;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function add(parent) {
    for (var i = 1; i < arguments.length; i++) {
      var kid = arguments[i];
      if (kid === null || kid === undefined) continue;
      parent.appendChild(typeof kid === "string" ? document.createTextNode(kid) : kid);
    }
    return parent;
  }
  function fmt(x, digits) {
    if (x === null || x === undefined) return "–";
    return typeof x === "number" && !Number.isInteger(x) ? x.toFixed(digits === undefined ? 2 : digits) : String(x);
  }
  function pct(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%"; }

  // ---- summary -------------------------------------------------------------------------------
  function kpi(key, label, value) {
    var box = el("div", "kpi");
    box.dataset.k = key;
    return add(box, el("span", "num", value), el("span", "lab", label));
  }
  function bars(key, title, counts, bad) {
    var card = el("div", "card");
    card.dataset.k = key;
    add(card, el("h3", null, title));
    var keys = Object.keys(counts);
    if (!keys.length) return add(card, el("p", "hint", "none"));
    var max = Math.max.apply(null, keys.map(function (k) { return counts[k]; })) || 1;
    var table = el("table", "bars");
    keys.forEach(function (k) {
      var tr = el("tr");
      tr.dataset.key = k;
      var bar = el("div", bad ? "bar bad" : "bar");
      bar.style.width = Math.max(1, Math.round(100 * counts[k] / max)) + "%";
      var cell = el("td");
      cell.appendChild(bar);
      var name = el("td", "k", k);
      name.title = k;
      add(tr, name, cell, el("td", "v", counts[k]));
      table.appendChild(tr);
    });
    return add(card, table);
  }
  function summary() {
    var root = document.getElementById("summary");
    var head = el("div", "card");
    head.style.gridColumn = "1 / -1";
    var k = el("div", "kpis");
    add(k, kpi("records", "records", S.records), kpi("ok", "ok", S.ok), kpi("failed", "failed", S.failed),
      kpi("consensus", "consensus (ok, looped)", pct(S.consensus_rate)),
      kpi("thoughts_before", "thoughts before refiner (mean)", fmt(S.mean_thoughts_before_refiner)),
      kpi("thoughts_after", "after refiner (mean)", fmt(S.mean_thoughts_after_refiner)),
      kpi("faults", "faults", S.faults));
    add(root, add(head, k));
    add(root, bars("stop_reasons", "stop reasons", S.stop_reasons), bars("failures", "failures by kind", S.failures, true),
      bars("rounds", "rounds (records per count)", S.rounds), bars("removed", "refiner removals by reason", S.removed_by_reason, true),
      bars("tokens", "tokens by role", S.tokens_by_role), bars("citations", "final thoughts citing each policy", S.citations_by_policy));
    data.judges.forEach(function (label) {
      var card = el("div", "card judge");
      card.dataset.k = "judge:" + label;
      add(card, el("h3", null, "judge scores: " + label));
      var table = add(el("table", "scores"), add(el("tr"), el("th", null, "metric"), el("th", null, "mean"), el("th", null, "n"), el("th", null, "unscored")));
      var scores = S.judge_scores[label];
      Object.keys(scores).forEach(function (m) {
        add(table, add(el("tr"), el("td", null, m), el("td", null, fmt(scores[m].mean)), el("td", null, scores[m].n), el("td", null, scores[m].unscored)));
      });
      root.appendChild(add(card, table));
    });
    Object.keys(data.missing_pictures).forEach(function (g) {
      root.appendChild(add(el("div", "card"), el("h3", null, "graph picture missing"), el("p", "hint", data.missing_pictures[g])));
    });
  }

  // ---- filters and list ----------------------------------------------------------------------
  var haystacks = null;
  function haystack(i) {
    if (!haystacks) haystacks = new Array(R.length);
    if (haystacks[i] === undefined) {
      var r = R[i];
      haystacks[i] = [r.id, r.prompt, r.response].concat((r.thoughts || []).map(function (t) { return t.text; })).join("\n").toLowerCase();
    }
    return haystacks[i];
  }
  function options(select, values) {
    values.forEach(function (v) {
      var o = el("option", null, v);
      o.value = v;
      select.appendChild(o);
    });
  }
  function uniq(list) { return Array.from(new Set(list)).sort(); }
  function setupFilters() {
    options(document.getElementById("f-status"), uniq(R.map(function (r) { return r.status; })));
    options(document.getElementById("f-stop"), Object.keys(S.stop_reasons).sort());
    options(document.getElementById("f-policy"), Object.keys(S.citations_by_policy));
    var metrics = [];
    data.judges.forEach(function (label) {
      Object.keys(S.judge_scores[label]).forEach(function (m) { metrics.push(label + ": " + m); });
    });
    options(document.getElementById("f-metric"), metrics);
    ["search", "f-status", "f-stop", "f-policy", "f-metric", "f-op", "f-score"].forEach(function (id) {
      document.getElementById(id).addEventListener("input", refilter);
    });
    document.getElementById("more").addEventListener("click", function () { renderMore(); });
  }
  function score(r, key) {
    var cut = key.indexOf(": ");
    var j = (r._scores || {})[key.slice(0, cut)];
    var v = j && j.scores ? j.scores[key.slice(cut + 2)] : null;
    return v === undefined ? null : v;
  }
  function refilter() {
    var q = document.getElementById("search").value.trim().toLowerCase();
    var status = document.getElementById("f-status").value;
    var stop = document.getElementById("f-stop").value;
    var policy = document.getElementById("f-policy").value;
    var metric = document.getElementById("f-metric").value;
    var op = document.getElementById("f-op").value;
    var bound = document.getElementById("f-score").value;
    var limit = bound === "" ? null : Number(bound);
    matches = [];
    for (var i = 0; i < R.length; i++) {
      var r = R[i];
      if (status && r.status !== status) continue;
      if (stop && r.stop_reason !== stop) continue;
      if (policy && !(r.thoughts || []).some(function (t) { return (t.policies || []).indexOf(policy) >= 0; })) continue;
      if (metric) {
        var v = score(r, metric);
        if (v === null) continue;
        if (limit !== null && (op === "le" ? v > limit : v < limit)) continue;
      }
      if (q && haystack(i).indexOf(q) < 0) continue;
      matches.push(i);
    }
    document.getElementById("list").textContent = "";
    shown = 0;
    renderMore();
  }
  function row(i) {
    var r = R[i];
    var li = el("li");
    li.tabIndex = 0;
    li.dataset.id = r.id;
    if (r.id === openId) li.className = "open";
    var meta = add(el("div", "meta"), el("span", "badge " + r.status, r.status), el("span", null, "#" + r.id), el("span", null, r.stop_reason),
      el("span", null, r.rounds + " rounds"));
    data.judges.forEach(function (label) {
      var j = r._scores[label];
      if (j && j.scores && j.scores.faithfulness_cot_policy !== undefined) meta.appendChild(el("span", null, "CoT-policy " + fmt(j.scores.faithfulness_cot_policy)));
    });
    add(li, meta, el("div", "prompt", r.prompt));
    li.addEventListener("click", function () { open(i); });
    li.addEventListener("keydown", function (ev) { if (ev.key === "Enter") open(i); });
    return li;
  }
  function renderMore() {
    var list = document.getElementById("list");
    var end = Math.min(matches.length, shown + PAGE);
    var frag = document.createDocumentFragment();
    for (var n = shown; n < end; n++) frag.appendChild(row(matches[n]));
    list.appendChild(frag);
    shown = end;
    document.getElementById("count").textContent = matches.length + " of " + R.length + " records match; " + shown + " shown";
    document.getElementById("more").hidden = shown >= matches.length;
  }

  // ---- one record ----------------------------------------------------------------------------
  function policyChips(parent, ids) { (ids || []).forEach(function (p) { parent.appendChild(el("span", "chip", p)); }); }
  function thoughtList(thoughts, numbered) {
    var ol = el(numbered ? "ol" : "ul", "thoughts");
    (thoughts || []).forEach(function (t) {
      var li = el("li", t.superseded ? "superseded" : null);
      add(li, el("span", "t", t.text));
      policyChips(li, t.policies);
      var prov = [];
      if (t.by) prov.push(t.by + (t.round !== undefined ? ", round " + t.round : ""));
      if (t.superseded) prov.push("superseded by " + t.superseded.by + " in round " + t.superseded.round + ": " + t.superseded.reason);
      if (prov.length) li.appendChild(el("span", "prov", "(" + prov.join("; ") + ")"));
      ol.appendChild(li);
    });
    return ol;
  }
  function section(parent, title) {
    parent.appendChild(el("h2", null, title));
    return parent;
  }
  function picture(r) {
    var tpl = null;
    document.querySelectorAll("template[data-graph]").forEach(function (t) { if (t.getAttribute("data-graph") === r.graph) tpl = t; });
    if (!tpl) return el("p", "hint", data.missing_pictures[r.graph] || "no picture of graph " + r.graph);
    var box = el("div", "picture");
    box.appendChild(tpl.content.cloneNode(true));
    var path = new Set(r._path || []);
    box.querySelectorAll("[data-node]").forEach(function (g) {
      var id = g.getAttribute("data-node");
      g.classList.toggle("visited", path.has(id));
      if (r._failed_node && id === r._failed_node) g.classList.add("failed");
    });
    box.querySelectorAll("[data-from]").forEach(function (g) {
      g.classList.toggle("visited", path.has(g.getAttribute("data-from")) && path.has(g.getAttribute("data-to")));
    });
    return box;
  }
  function detail(r) {
    var d = document.getElementById("detail");
    d.textContent = "";
    d.dataset.id = r.id;
    var title = add(el("h2"), "Record " + r.id + " ", el("span", "badge " + r.status, r.status));
    d.appendChild(title);
    d.appendChild(el("p", "hint", "graph " + r.graph + " · policies " + r.policy_set.name + "@" + r.policy_set.version + " · stop: " + r.stop_reason +
      " · " + r.rounds + " rounds"));
    if (r.error) {
      var err = add(el("div", "error"), el("strong", null, r.error.kind + " at " + r.error.stage + ": "), r.error.message);
      if (r.error.raw) add(err, el("div", "text", r.error.raw));
      d.appendChild(err);
    }
    add(section(d, "Prompt"), el("div", "text prompt-text", r.prompt));
    add(section(d, "Path through the graph"), picture(r));
    if (r.intents && (r.intents.explicit.length || r.intents.implicit.length)) {
      section(d, "Intents");
      var ul = el("ul");
      r.intents.explicit.forEach(function (t) { add(ul, add(el("li"), el("strong", null, "explicit: "), t)); });
      r.intents.implicit.forEach(function (t) { add(ul, add(el("li"), el("strong", null, "implicit: "), t)); });
      d.appendChild(ul);
    }
    var shownThoughts = [];
    if (r.seed) {
      section(d, "Seed (first draft)");
      add(d, thoughtList(r.seed.thoughts, true), el("div", "text", r.seed.response));
      shownThoughts = r.seed.thoughts.slice();
    }
    if (r.deliberation.length) {
      section(d, "Deliberation (" + r.deliberation.length + " turns)");
      r.deliberation.forEach(function (t) {
        var box = el("div", "turn " + (t.agreed ? "agreed" : "revised"));
        box.dataset.round = t.round;
        add(box, add(el("div"), el("strong", null, "round " + t.round + " · " + t.agent), " ", el("span", "prov", t.model), " ",
          el("span", "badge " + (t.agreed ? "agreed" : "revised"), t.agreed ? "agreed" : "revised")));
        if (t.critique) {
          var dl = el("dl");
          ["intents", "policies", "flaws", "refusal"].forEach(function (k) { add(dl, el("dt", null, k), el("dd", null, t.critique[k])); });
          box.appendChild(dl);
        }
        (t.superseded || []).forEach(function (m) {
          var target = shownThoughts[m.index - 1];
          add(box, el("div", "prov", "marked thought " + m.index + " as replaced: " + m.reason + (target ? " — “" + target.text + "”" : "")));
        });
        if (t.thoughts.length) add(box, el("h3", null, "added thoughts"), thoughtList(t.thoughts));
        if (t.response) add(box, el("h3", null, "proposed response"), el("div", "text", t.response));
        d.appendChild(box);
        shownThoughts = shownThoughts.concat(t.thoughts);
      });
    }
    if (r.removed_thoughts.length) {
      section(d, "Refiner removed (" + r.removed_thoughts.length + ")");
      var rm = el("ul", "thoughts removed");
      r.removed_thoughts.forEach(function (t) {
        var li = add(el("li"), el("span", "t", t.text));
        policyChips(li, t.policies);
        li.appendChild(el("span", "why", t.reason));
        rm.appendChild(li);
      });
      d.appendChild(rm);
    }
    add(section(d, "Final chain of thought (" + r.thoughts.length + ")"), thoughtList(r.thoughts, true));
    if (r.response_before_refiner !== undefined && r.response_before_refiner !== r.response) {
      add(section(d, "Response before the refiner"), el("div", "text", r.response_before_refiner));
    }
    add(section(d, "Response"), el("div", "text response-text", r.response));
    if (r.faults && r.faults.length) {
      section(d, "Faults");
      var fl = el("ul");
      r.faults.forEach(function (f) { add(fl, el("li", null, f.stage + " · " + f.kind + ": " + f.detail)); });
      d.appendChild(fl);
    }
    Object.keys(r._scores || {}).forEach(function (label) {
      var j = r._scores[label];
      section(d, "Judge " + label + " (" + j.judge_model + ")");
      var table = el("table", "scores");
      Object.keys(j.scores).forEach(function (m) { add(table, add(el("tr"), el("td", null, m), el("td", null, j.scores[m] === null ? "unscored" : j.scores[m]))); });
      d.appendChild(table);
      if (j.rationale) d.appendChild(el("div", "text", j.rationale));
    });
    var models = el("ul");
    Object.keys(r.models).forEach(function (k) { add(models, el("li", null, k + ": " + r.models[k])); });
    add(section(d, "Models"), models);
  }
  function open(i) {
    var r = R[i];
    openId = r.id;
    document.querySelectorAll("#list li.open").forEach(function (li) { li.classList.remove("open"); });
    document.querySelectorAll("#list li").forEach(function (li) { if (li.dataset.id === r.id) li.classList.add("open"); });
    detail(r);
    if (location.hash !== "#record=" + encodeURIComponent(r.id)) history.replaceState(null, "", "#record=" + encodeURIComponent(r.id));
  }

  document.getElementById("subtitle").textContent = data.source + (data.judged.length ? " · judged by " + data.judged.join(", ") : "") +
    " · " + R.length + " records";
  summary();
  setupFilters();
  refilter();
  var wanted = /^#record=(.*)$/.exec(location.hash);
  if (wanted) {
    var id = decodeURIComponent(wanted[1]);
    for (var i = 0; i < R.length; i++) if (R[i].id === id) { open(i); break; }
  }
  document.body.dataset.ready = String(Math.round(performance.now() - started));
})();
