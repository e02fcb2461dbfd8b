"""The one page `imgsearch serve` shows at ``/``: self-contained (no CDN; the service may run offline).

It talks only to the JSON API of :mod:`imgsearch.service.app`: ``/api/stats`` for the store's facts and
categories, ``/api/search`` for an uploaded query, ``/api/search/by-id/{id}`` for "more like this",
and ``/api/images/{id}/thumb`` for every picture. Results are built with ``textContent``, never
``innerHTML``, so a file name cannot inject markup. Each result card carries ``data-rank``,
``data-score``, ``data-id`` and ``data-category`` for tests and scripts. A busy server (503) is not a
failure: the page says "busy, retrying" and asks again after the server's ``Retry-After``.
``LOGIN_PAGE`` is what a server with a token shows instead until its form posts the right token.
"""

from imgsearch.reports.style import CARDS_CSS, HIGH, MID

PAGE = (
    (
        """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>imgsearch</title>
<style>
"""
        + CARDS_CSS
        + """header{background:#fff;border-bottom:1px solid var(--line);padding:16px 28px}
h1{margin:0 0 2px;font-size:22px}
.lede{margin:0 0 8px;color:var(--muted)}
.facts{display:flex;flex-wrap:wrap;gap:4px 22px;color:var(--muted);font-size:13px}
.facts b{color:var(--ink);font-weight:600}
main{padding:16px 28px 28px}
.panel{display:flex;flex-wrap:wrap;gap:18px;align-items:stretch;background:#fff;border:1px solid var(--line);
border-radius:12px;padding:14px 16px}
#drop{flex:1 1 320px;min-height:92px;display:flex;align-items:center;justify-content:center;text-align:center;
border:2px dashed #b7c3d6;border-radius:10px;color:var(--muted);cursor:pointer;padding:10px}
#drop.over{border-color:var(--accent);background:#eef4ff;color:var(--ink)}
#drop b{color:var(--accent)}
.controls{display:flex;flex-wrap:wrap;gap:14px 20px;align-items:center}
.controls label{display:flex;flex-direction:column;gap:4px;font-size:12px;font-weight:600;color:var(--muted)}
.controls input,.controls select{font:inherit;padding:5px 8px;border:1px solid var(--line);border-radius:6px;
background:#fff;color:var(--ink)}
#k{width:76px}
#category{min-width:180px}
#minscore{width:150px;padding:0}
.status{margin:14px 0 0;color:var(--muted);min-height:20px}
.status.busy{color:#8a5a00}
.error{margin:14px 0 0;padding:8px 12px;border-left:4px solid var(--bad);background:#fdecea;border-radius:4px}
.row{display:flex;gap:18px;align-items:flex-start;margin-top:12px}
li.hit{cursor:pointer;transition:box-shadow .1s}
li.hit:hover{box-shadow:0 0 0 2px var(--accent)}
.high .chip{background:var(--high)}.mid .chip{background:var(--mid)}.low .chip{background:var(--low)}
.more{font-size:12px;color:var(--accent);margin-top:2px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.empty{color:var(--muted);padding:30px 0;text-align:center}
</style>
</head>
<body>
<header>
<h1>imgsearch</h1>
<p class="lede">Search the library by image: drop a picture and see the most similar stored images, best first.
Score = cosine similarity of the CNN features (1 = the same picture). Click a result for more like it.</p>
<div class="facts"><span>store <b id="store">…</b></span><span>images <b id="count">…</b></span>
<span>model <b id="model">…</b></span><span>worker <b id="worker">…</b></span></div>
</header>
<main>
<div class="panel">
<div id="drop" tabindex="0" role="button"><div><b>Drop an image here</b> or click to choose one<br>
<span class="lbl">it is only used for this search, never stored</span></div></div>
<input id="file" type="file" accept="image/*" hidden>
<div class="controls">
<label>results (k)<input id="k" type="number" min="1" max="100" value="10"></label>
<label>category<select id="category"><option value="">all categories</option></select></label>
<label><span>minimum score: <span id="minscore-value">none</span></span>
<input id="minscore" type="range" min="0" max="1" step="0.05" value="0"></label>
</div>
</div>
<div id="error" class="error" hidden></div>
<p id="status" class="status"></p>
<div id="results"><p class="empty">No query yet: drop an image above.</p></div>
</main>
<footer>Scores: <span style="color:var(--high)">■</span> ≥ __HIGH__ the same picture or a close copy ·
<span style="color:var(--mid)">■</span> ≥ __MID__ often the same kind of subject ·
<span style="color:var(--low)">■</span> below __MID__ weak. Ranked by the store's cosine index.</footer>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let query = null;  // {file, url, name} for an upload, or {id, name} for "more like this"
let shownCategories = "";  // the category list in the select, so a refresh only rebuilds it on a change
let attempt = 0;  // bumped by every new search, so a pending retry of an older one is dropped

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}
function baseName(path) { return String(path).split("/").pop(); }
function band(score) { return score >= __HIGH__ ? "high" : score >= __MID__ ? "mid" : "low"; }
function showError(message) { $("error").textContent = message; $("error").hidden = !message; }

async function loadStats() {
  const res = await fetch("/api/stats");
  if (!res.ok) { $("store").textContent = "not ready (" + res.status + ")"; return; }
  const s = await res.json();
  $("store").textContent = s.store;
  $("count").textContent = s.count;
  $("model").textContent = s.model ? s.model.model + " (" + s.model.dim + "-d)" : "none";
  const w = s.worker;
  $("worker").textContent = !w ? "no status file" : w.state + (w.last_sync ? ", last sync " +
    new Date(w.last_sync).toLocaleTimeString() : "") + ", " + w.pending + " settling, " + w.queue +
    " queued, " + w.failed + " failed";
  const key = JSON.stringify(s.categories);
  if (key === shownCategories) return;
  shownCategories = key;
  const select = $("category"), chosen = select.value;
  select.replaceChildren(new Option("all categories", ""));
  for (const [name, n] of Object.entries(s.categories)) select.add(new Option(name + " (" + n + ")", name));
  select.value = chosen;
}

function thumb(src, alt) {
  const box = el("div", "thumb"), img = el("img");
  img.src = src; img.alt = alt;
  box.append(img);
  return box;
}

function filtersText() {
  const parts = [];
  if ($("category").value) parts.push("category " + $("category").value);
  if (Number($("minscore").value) > 0) parts.push("score ≥ " + $("minscore").value);
  return parts.length ? " (" + parts.join(", ") + ")" : "";
}

function render(data, seconds, filters) {
  const out = $("results");
  out.replaceChildren();
  const row = el("div", "row");
  const qcard = el("div", "card querycard");
  qcard.append(thumb(query.url || "/api/images/" + query.id + "/thumb", query.name));
  qcard.append(el("span", "badge", query.id ? "MORE LIKE" : "QUERY"));
  qcard.append(el("div", "name", query.name));
  row.append(qcard, el("div", "arrow", "→"));
  const list = el("ol", "hits");
  for (const hit of data.results) {
    const card = el("li", "card hit " + band(hit.score));
    Object.assign(card.dataset, {rank: hit.rank, score: hit.score, id: hit.id, category: hit.category});
    card.title = hit.path + "\\nclick: more like this";
    card.append(thumb("/api/images/" + hit.id + "/thumb", baseName(hit.path)));
    const top = el("div", "top");
    const score = el("span");
    score.append(el("span", "lbl", "score "), el("span", "chip", hit.score.toFixed(4)));
    top.append(el("span", "rank", "#" + hit.rank), score);
    const bar = el("div", "bar"), fill = el("span");
    fill.style.width = (Math.max(0, Math.min(1, hit.score)) * 100).toFixed(1) + "%";
    bar.append(fill);
    const cat = el("div", "cat");
    cat.append(el("span", "lbl", "category "), document.createTextNode(hit.category || "(none)"));
    card.append(top, bar, cat, el("div", "name", baseName(hit.path)), el("div", "more", "more like this"));
    card.addEventListener("click", () => { query = {id: hit.id, name: baseName(hit.path)}; search(); });
    list.append(card);
  }
  row.append(list);
  out.append(row);
  if (!data.results.length) list.append(el("li", "empty", "No stored image passes the filters."));
  $("status").textContent = data.results.length + " of " + data.k + " results for " + query.name + filters +
    " in " + seconds.toFixed(2) + " s, model " + data.model;
}

async function search(retryOf) {
  if (!query) return;
  if (retryOf !== undefined && retryOf !== attempt) return;  // a newer search replaced this one
  const mine = ++attempt;
  const form = new FormData();
  form.append("k", $("k").value || "10");
  if ($("category").value) form.append("where", "category=" + $("category").value);
  if (Number($("minscore").value) > 0) form.append("min_score", $("minscore").value);
  let url = "/api/search";
  if (query.id) url = "/api/search/by-id/" + encodeURIComponent(query.id);
  else form.append("image", query.file, query.name);
  $("status").className = "status";
  if (retryOf === undefined) $("status").textContent = "searching…";
  showError("");
  const started = performance.now(), filters = filtersText();
  try {
    const res = await fetch(url, {method: "POST", body: form});
    const data = await res.json().catch(() => ({detail: res.statusText}));
    if (mine !== attempt) return;
    if (res.status === 503) {  // busy or not ready yet: wait as long as the server asks, then ask again
      const wait = Math.min(60, Math.max(1, Number(res.headers.get("Retry-After")) || 2));
      $("status").className = "status busy";
      const why = String(data.detail || "").replace(/^busy: /, "");
      $("status").textContent = "busy, retrying in " + wait + " s (" + why + ")";
      setTimeout(() => search(mine), wait * 1000);
      return;
    }
    if (!res.ok) {
      const detail = Array.isArray(data.detail) ? data.detail.map((d) => d.msg).join("; ") : data.detail;
      throw new Error(detail || "HTTP " + res.status);
    }
    render(data, (performance.now() - started) / 1000, filters);
    window.scrollTo({top: 0});
  } catch (err) {
    if (mine !== attempt) return;
    $("status").textContent = "";
    showError("Search failed: " + err.message);
  }
}

function useFile(file) {
  if (!file) return;
  if (query && query.url) URL.revokeObjectURL(query.url);
  query = {file: file, url: URL.createObjectURL(file), name: file.name || "pasted image"};
  search();
}

const drop = $("drop");
drop.addEventListener("click", () => $("file").click());
drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });
$("file").addEventListener("change", (e) => { useFile(e.target.files[0]); e.target.value = ""; });
for (const ev of ["dragenter", "dragover"]) drop.addEventListener(ev, (e) => { e.preventDefault();
  drop.classList.add("over"); });
for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); useFile(e.dataTransfer.files[0]); });
$("minscore").addEventListener("input", () => {
  $("minscore-value").textContent = Number($("minscore").value) > 0 ? "≥ " + $("minscore").value : "none"; });
for (const id of ["k", "category", "minscore"]) $(id).addEventListener("change", () => search());
loadStats().catch(() => {});
setInterval(() => loadStats().catch(() => {}), 5000);
</script>
</body>
</html>
"""
    )
    .replace("__HIGH__", f"{HIGH:.2f}")
    .replace("__MID__", f"{MID:.2f}")
)

LOGIN_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>imgsearch: sign in</title>
<style>body{font:15px system-ui,sans-serif;max-width:420px;margin:12vh auto;padding:0 20px;color:#1d2733}
input{font:inherit;padding:6px 8px;width:100%;box-sizing:border-box;margin:8px 0}
button{font:inherit;padding:6px 16px}</style>
</head>
<body>
<h1>imgsearch</h1>
<p>This library is served with a token (<code>imgsearch serve --token</code> or <code>IMGSEARCH_TOKEN</code>).
Enter it to open the search page; the browser then keeps a session cookie.</p>
<form method="post" action="/login">
<input id="token" name="token" type="password" autocomplete="current-password" autofocus required>
<button id="signin" type="submit">Sign in</button>
</form>
</body>
</html>
"""
