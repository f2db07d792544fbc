/*
 * The prefetching review view of the FiftyOne App (loaded by review_keys.js, no build step).
 *
 * Open it from the grid with the key r (one mask at a time) or t (triage pages of confident
 * masks), from the launcher at the bottom left, or from the App's "new panel" menu
 * ("Prefetching review"). Escape closes it; the App's own modal and its keys are untouched.
 *
 * Why it is fast: the view asks the plugin's `view_batch` operator for the next masks in
 * queue order and loads their photo, mask and teacher-disagreement map in the browser ahead
 * of time, with the outline and fills already drawn into small canvases. A key press only
 * swaps canvases (no server round trip, no decoding); the decision is posted in the
 * background, one request after the other, in the order pressed.
 *
 * Saved: a decision counts once the server answered "ok", i.e. after its journal line was
 * fsync'd (pipeline/review/journal.py append_events). Until then it is listed as "not yet
 * saved" in the header; a crash can lose only those. A refused decision (mask changed on disk,
 * database down) is shown in red and its mask comes back to be judged again.
 *
 * Keys in the single view: a accept, d reject, u undo (goes back to that mask), f fill on/off,
 * g teacher disagreement on/off, Escape close. A press less than min_seen_ms after the mask
 * was painted is ignored (a double press, a held key).
 * Keys on a triage page: a (or Enter) decides the whole page (clicked tiles rejected, the rest
 * accepted), a click on a tile marks it bad (again: good), u reopens the last page (undoes it).
 */
(function () {
  "use strict";
  if (window.__portraitReviewView) return;

  var PLUGIN = "@portrait-curation/review";
  var MASK_RGB = [255, 43, 214]; // magenta, as in the App's overlay
  var DISAGREE_RGB = [255, 208, 0]; // yellow
  var RATE_WINDOW_MS = 120000; // images/min over the last two minutes of decisions

  var S = {
    open: false,
    mode: null, // "queue" | "triage"
    settings: { min_seen_ms: 150, prefetch: 8, triage_min_score: 0.9, triage_tile_px: 360 },
    queue: [], // prefetched items, next first
    current: null, // item on screen (single view)
    page: null, // { items, bad: {sample_id: true}, shownAt } (triage)
    history: [], // what was decided here, for undo: {kind: "one"|"page", items, bad}
    held: {}, // sample ids the view holds or has decided (not to be handed out again)
    log: [], // one entry per decision / undo (tests and the benchmark read it)
    unsaved: [], // entries sent but not yet acknowledged
    chain: Promise.resolve(),
    fetching: null,
    exhausted: false,
    progress: null, // last progress the server reported (with each batch)
    delta: 0, // decisions acknowledged since then
    acked: 0, // answers to writes so far (to tell whether a batch's progress is current)
    decisionTimes: [], // performance.now() of each decided image, for the rate
    shownAt: null,
    fill: false,
    disagreement: true,
    root: null,
    path: null, // which path answered the last write: "direct route" or "operators"
    routeDown: false, // the route could not be reached: the operators decide for this page
    routeError: null,
  };
  window.__portraitReviewView = S;

  // The App's URL and its operator route, shared with review_keys.js (which loads this file).
  var app = window.__portraitReviewApp;
  if (!app) {
    console.error("portrait-curation review view: load review_keys.js first (it loads this file)");
    return;
  }
  var routePrefix = app.routePrefix;
  var datasetName = app.datasetName;

  function execute(operator, params) {
    return app.executeOperator(operator, params);
  }

  // Writes go to the review process's direct decision route when it serves one (settings
  // route_url / route_token, review/route.py): the same journal, checks and order, without the
  // App's operator machinery. A route that cannot be reached (network error) is given up for
  // this page and the App's operators decide instead; an answer from the route (even a refusal)
  // is final, so a decision is never sent twice on purpose. S.path says which one answered.
  var ROUTE_PATHS = { decide: "/decide", decide_page: "/decide_page", undo_decision: "/undo" };

  function viaOperators(operator, params) {
    return execute(operator, params).then(function (result) {
      S.path = S.routeDown ? "operators (route unreachable)" : "operators";
      result.path = result.path || "operators";
      return result;
    });
  }

  function write(operator, params) {
    var url = S.settings.route_url, token = S.settings.route_token;
    if (!url || !token || S.routeDown || !ROUTE_PATHS[operator]) return viaOperators(operator, params);
    var body = JSON.stringify(Object.assign({ token: token }, params));
    return fetch(url + ROUTE_PATHS[operator], {
      method: "POST", headers: { "Content-Type": "text/plain" }, body: body, mode: "cors",
      credentials: "omit", cache: "no-store",
    }).then(function (response) {
      return response.json().then(function (json) {
        S.path = "direct route";
        json.path = "route";
        return json;
      }, function () {
        return { ok: false, message: "the decision route answered " + response.status + " without JSON", path: "route" };
      });
    }, function (err) {
      S.routeDown = true;
      S.routeError = err.message;
      return viaOperators(operator, params);
    });
  }

  // Requests that write go one after the other, so the journal holds them in the order pressed
  // and an undo always cancels what the reviewer last saw decided.
  function enqueue(operator, params) {
    var run = S.chain.then(function () { return write(operator, params); });
    S.chain = run.catch(function () {});
    return run;
  }

  function mediaUrl(path) {
    return routePrefix() + "/media?filepath=" + encodeURIComponent(path);
  }

  function loadImage(path) {
    return new Promise(function (resolve, reject) {
      var img = new Image();
      img.decoding = "async";
      img.onload = function () {
        (img.decode ? img.decode() : Promise.resolve()).then(function () { resolve(img); }, function () { resolve(img); });
      };
      img.onerror = function () { reject(new Error("cannot load " + path)); };
      img.src = mediaUrl(path);
    });
  }

  // ------------------------------------------------------------------ drawing layers

  function fitSize(img, boxW, boxH) {
    var scale = Math.min(boxW / img.naturalWidth, boxH / img.naturalHeight);
    return { w: Math.max(1, Math.round(img.naturalWidth * scale)), h: Math.max(1, Math.round(img.naturalHeight * scale)) };
  }

  function maskBits(img, w, h) {
    var c = document.createElement("canvas");
    c.width = w;
    c.height = h;
    var g = c.getContext("2d", { willReadFrequently: true });
    g.imageSmoothingEnabled = false; // a mask is 0/255: keep its edge where it is
    g.drawImage(img, 0, 0, w, h);
    var data = g.getImageData(0, 0, w, h).data;
    var bits = new Uint8Array(w * h);
    for (var i = 0; i < bits.length; i++) bits[i] = data[i * 4] > 127 ? 1 : 0;
    return bits;
  }

  function layerCanvas(w, h, fillPixel) {
    var c = document.createElement("canvas");
    c.width = w;
    c.height = h;
    var g = c.getContext("2d");
    var out = g.createImageData(w, h);
    fillPixel(out.data);
    g.putImageData(out, 0, 0);
    return c;
  }

  // The outline: pixels on either side of the mask's edge (2 px wide at display size), drawn
  // in the mask colour with a dark core line so it shows on light and dark backgrounds alike.
  function buildLayers(item, w, h) {
    var bits = maskBits(item.maskImg, w, h);
    var outline = layerCanvas(w, h, function (d) {
      for (var y = 0; y < h; y++) {
        for (var x = 0; x < w; x++) {
          var i = y * w + x, v = bits[i];
          var edge = (x > 0 && bits[i - 1] !== v) || (x < w - 1 && bits[i + 1] !== v) ||
            (y > 0 && bits[i - w] !== v) || (y < h - 1 && bits[i + w] !== v);
          if (!edge) continue;
          var o = i * 4;
          if (v) { d[o] = MASK_RGB[0]; d[o + 1] = MASK_RGB[1]; d[o + 2] = MASK_RGB[2]; }
          else { d[o] = 20; d[o + 1] = 0; d[o + 2] = 20; }
          d[o + 3] = 255;
        }
      }
    });
    var fill = layerCanvas(w, h, function (d) {
      for (var i = 0; i < bits.length; i++) {
        if (!bits[i]) continue;
        d[i * 4] = MASK_RGB[0]; d[i * 4 + 1] = MASK_RGB[1]; d[i * 4 + 2] = MASK_RGB[2]; d[i * 4 + 3] = 100;
      }
    });
    var disagree = null, disagreeShare = null;
    if (item.disagreeImg) {
      var dis = maskBits(item.disagreeImg, w, h), count = 0;
      disagree = layerCanvas(w, h, function (d) {
        for (var i = 0; i < dis.length; i++) {
          if (!dis[i]) continue;
          count++;
          var x = i % w, y = (i / w) | 0, stripe = ((x + y) >> 2) & 1; // hatched: the photo stays visible
          d[i * 4] = DISAGREE_RGB[0]; d[i * 4 + 1] = DISAGREE_RGB[1]; d[i * 4 + 2] = DISAGREE_RGB[2];
          d[i * 4 + 3] = stripe ? 190 : 70;
        }
      });
      disagreeShare = count / dis.length;
    }
    return { w: w, h: h, outline: outline, fill: fill, disagree: disagree, disagreeShare: disagreeShare };
  }

  function prefetch(item) {
    if (item.ready) return item.ready;
    var loads = [loadImage(item.image_path), loadImage(item.mask_path),
      item.disagreement_path ? loadImage(item.disagreement_path).catch(function () { return null; }) : Promise.resolve(null)];
    item.ready = Promise.all(loads).then(function (got) {
      item.img = got[0];
      item.maskImg = got[1];
      item.disagreeImg = got[2];
      item.layers = null;
      layersFor(item, S.mode === "triage" ? tileBox() : stageBox());
      return item;
    }, function (err) {
      item.error = err.message;
      return item;
    });
    return item.ready;
  }

  function layersFor(item, box) {
    var size = fitSize(item.img, box.w, box.h);
    if (!item.layers || item.layers.w !== size.w || item.layers.h !== size.h) item.layers = buildLayers(item, size.w, size.h);
    return item.layers;
  }

  function paint(canvas, item, box, showFill, showDisagree) {
    var layers = layersFor(item, box);
    if (canvas.width !== layers.w) canvas.width = layers.w;
    if (canvas.height !== layers.h) canvas.height = layers.h;
    var g = canvas.getContext("2d");
    g.drawImage(item.img, 0, 0, layers.w, layers.h);
    if (showFill) g.drawImage(layers.fill, 0, 0);
    if (showDisagree && layers.disagree) g.drawImage(layers.disagree, 0, 0);
    g.drawImage(layers.outline, 0, 0);
  }

  // ------------------------------------------------------------------ fetching

  function heldIds() {
    return Object.keys(S.held);
  }

  function topUp() {
    if (S.fetching || S.exhausted) return S.fetching || Promise.resolve();
    var want = S.mode === "triage" ? pageSize() * 2 : S.settings.prefetch;
    // refill at half: a batch request every few decisions, not one after each
    if (S.queue.length > Math.floor(want / 2)) return Promise.resolve();
    var mode = S.mode;
    // Not in the chain of writes (a decision never waits behind it); so its progress counts
    // only if no decision was in flight or acknowledged while it ran.
    var quiet = S.unsaved.length === 0, acked = S.acked;
    S.fetching = execute("view_batch", { mode: mode, count: want - S.queue.length, exclude: heldIds() })
      .then(function (result) {
        S.fetching = null;
        if (mode !== S.mode) return;
        if (!result.ok) throw new Error(result.message);
        if (result.settings) S.settings = result.settings;
        if (result.progress && (S.progress === null || (quiet && acked === S.acked && S.unsaved.length === 0))) {
          S.progress = result.progress;
          S.delta = 0;
        }
        var items = (result.items || []).filter(function (it) { return !S.held[it.sample_id]; });
        if (!items.length) S.exhausted = true;
        items.forEach(function (it) { S.held[it.sample_id] = true; S.queue.push(it); prefetch(it); });
        renderHeader();
      })
      .catch(function (err) {
        S.fetching = null;
        status("cannot fetch the next masks: " + err.message, "error");
      });
    return S.fetching;
  }

  // ------------------------------------------------------------------ single view

  function stageBox() {
    var el = S.root && S.root.querySelector("#prv-stage");
    var w = el ? el.clientWidth : window.innerWidth - 320;
    var h = el ? el.clientHeight : window.innerHeight - 90;
    return { w: Math.max(100, w - 8), h: Math.max(100, h - 8) };
  }

  function showItem(item) {
    S.current = item;
    S.shownAt = null;
    var canvas = S.root.querySelector("#prv-canvas");
    if (!item) {
      canvas.width = 1;
      canvas.height = 1;
      S.root.querySelector("#prv-side").innerHTML = "";
      status(S.exhausted ? "queue done: nothing left to review in this view" : "loading the next masks…", "ok");
      if (!S.exhausted) topUp().then(function () { if (!S.current && S.queue.length) next(); });
      return;
    }
    if (!item.layers) { // not prefetched yet (the first one, or a reviewer faster than the network)
      status("loading " + item.pc_id + "…", "warn");
      item.ready.then(function () { if (S.current === item) showItem(item); });
      return;
    }
    if (item.error) {
      status("cannot show " + item.pc_id + ": " + item.error + " (skipped, not decided)", "error");
      return next();
    }
    paint(canvas, item, stageBox(), S.fill, S.disagreement);
    var drawnAt = performance.now();
    requestAnimationFrame(function () {
      if (S.current !== item) return;
      S.shownAt = performance.now();
      item.drawnAt = drawnAt;
      item.shownAt = S.shownAt;
      S.log.forEach(function (e) { if (e.nextId === item.sample_id && e.nextShownAt === undefined) e.nextShownAt = S.shownAt; });
    });
    renderSide(item);
  }

  function next() {
    var item = S.queue.shift() || null;
    showItem(item);
    topUp();
    return item;
  }

  function decideOne(decision, via, pressedAt) {
    var item = S.current;
    if (!item || !item.layers) return;
    var now = performance.now();
    if (S.shownAt === null || now - S.shownAt < S.settings.min_seen_ms) {
      status("too fast: " + item.pc_id + " was not on screen long enough; press again", "warn");
      return;
    }
    var entry = { sampleId: item.sample_id, pcId: item.pc_id, decision: decision, pressedAt: pressedAt,
      handledAt: now, seconds: (now - S.shownAt) / 1000 };
    S.log.push(entry);
    S.unsaved.push(entry);
    S.history.push({ kind: "one", items: [item], entries: [entry] });
    S.decisionTimes.push(now);
    var upcoming = next(); // the swap: canvases already drawn, nothing waits on the server
    entry.nextId = upcoming ? upcoming.sample_id : null;
    entry.nextDrawnAt = performance.now();
    renderHeader();
    enqueue("decide", { sample_id: item.sample_id, decision: decision, mask_sha256: item.mask_sha256,
      seconds_on_screen: entry.seconds, via: via, progress: false })
      .then(function (result) { settle(entry, result, item); }, function (err) { settle(entry, { ok: false, message: err.message }, item); });
  }

  function settle(entry, result, item) {
    entry.savedAt = performance.now();
    entry.ok = !!result.ok;
    entry.message = result.message;
    entry.timings = result.timings; // the server's: checks, fsync, database mirror (ms into the request)
    entry.path = result.path;
    S.unsaved = S.unsaved.filter(function (e) { return e !== entry; });
    if (entry.ok) { S.delta += entry.page ? entry.sampleIds.length : 1; S.acked++; }
    if (!entry.ok) {
      status("NOT SAVED: " + (entry.pcId || "") + ": " + result.message + " — shown again", "error");
      (entry.items || [item]).forEach(function (it) {
        if (!it) return;
        if (S.mode === "queue" && S.current !== it && S.queue.indexOf(it) < 0) S.queue.unshift(it);
      });
      S.history = S.history.filter(function (h) { return h.entries.indexOf(entry) < 0; });
    } else {
      status("saved: " + result.message, "ok");
    }
    renderHeader();
  }

  function undo() {
    var last = S.history.pop();
    if (!last) return status("nothing to undo in this view", "warn");
    var entry = { undo: true, count: last.items.length, pressedAt: performance.now(),
      expected: last.items.map(function (it) { return it.pc_id; }) };
    S.log.push(entry);
    S.unsaved.push(entry);
    if (last.kind === "one") {
      if (S.current) S.queue.unshift(S.current);
      showItem(last.items[0]);
    } else {
      if (S.page) S.queue = S.page.items.concat(S.queue);
      showPage(last.items, last.bad);
    }
    renderHeader();
    enqueue("undo_decision", { quiet: true, count: last.items.length }).then(function (result) {
      entry.savedAt = performance.now();
      entry.ok = !!result.ok;
      entry.ids = result.ids || [];
      entry.path = result.path;
      S.unsaved = S.unsaved.filter(function (e) { return e !== entry; });
      S.acked++;
      if (result.progress) { S.progress = result.progress; S.delta = 0; }
      var same = entry.ids.slice().sort().join(",") === entry.expected.slice().sort().join(",");
      status(result.ok && same ? "saved: " + result.message : "undo: " + result.message, result.ok && same ? "ok" : "warn");
      renderHeader();
    }, function (err) {
      entry.ok = false;
      S.unsaved = S.unsaved.filter(function (e) { return e !== entry; });
      status("undo NOT SAVED: " + err.message, "error");
      renderHeader();
    });
  }

  function fmt(value) {
    return value === null || value === undefined ? "–" : (Math.abs(value) >= 10 ? value.toFixed(1) : value.toFixed(2));
  }

  function renderSide(item) {
    var side = S.root.querySelector("#prv-side");
    var low = item.parts.filter(function (p) { return p.push !== null && p.push < 0; });
    var lowName = item.low_part ? item.low_part.split(" ")[0] : (low.length ? low[0].name : null);
    var rows = item.parts.map(function (p) {
      var bad = p.name === lowName || (p.push !== null && p.push <= -0.5);
      return "<tr data-part='" + p.name + "' style='color:" + (bad ? "#ff6b6b" : "#ddd") + "'><td>" + p.name +
        "</td><td style='text-align:right'>" + fmt(p.value) + "</td><td style='text-align:right'>" +
        (p.push === null ? "" : (p.push > 0 ? "+" : "") + fmt(p.push)) + "</td></tr>";
    }).join("");
    var layers = item.layers || {};
    var dis = item.disagreement_path
      ? "teachers disagree on " + (layers.disagreeShare === null || layers.disagreeShare === undefined ? "?" : (100 * layers.disagreeShare).toFixed(1)) + " % (yellow hatch, g)"
      : "no teacher-disagreement map for this mask";
    side.innerHTML =
      "<div id='prv-id' style='font-weight:bold;word-break:break-all'>" + item.pc_id + "</div>" +
      "<div id='prv-score' style='font-size:28px;margin:6px 0;color:" + (item.score !== null && item.score < 0.5 ? "#ff6b6b" : "#7ee787") + "'>score " +
      (item.score === null ? "n/a" : item.score.toFixed(2)) + "</div>" +
      "<div id='prv-low' style='color:#ff6b6b;margin-bottom:6px'>" + (lowName ? "lowest part: " + (item.low_part || lowName) : "no part pulls the score down") + "</div>" +
      "<table style='width:100%;font-size:12px;border-collapse:collapse'><tr style='color:#999'><td>part</td><td style='text-align:right'>value</td><td style='text-align:right'>push</td></tr>" + rows + "</table>" +
      "<div id='prv-disagree' style='margin-top:8px;color:#ffd000'>" + dis + "</div>" +
      "<div style='margin-top:8px;color:#999'>outline magenta · fill " + (S.fill ? "on" : "off") + " (f)</div>" +
      "<div style='margin-top:14px;color:#bbb'>a accept · d reject · u undo · f fill · g disagreement · Esc close</div>";
  }

  // ------------------------------------------------------------------ triage

  function tileBox() {
    var px = S.settings.triage_tile_px;
    return { w: Math.round(px * 0.75), h: px }; // portrait crops are 3:4
  }

  // As many tiles of at least triage_tile_px tall as fit the screen below the header.
  function pageSize() {
    var box = tileBox();
    var cols = Math.max(1, Math.floor((window.innerWidth - 16) / (box.w + 8)));
    var rows = Math.max(1, Math.floor((window.innerHeight - 80) / (box.h + 8)));
    return Math.min(48, cols * rows);
  }

  function showPage(items, bad) {
    var grid = S.root.querySelector("#prv-grid");
    grid.innerHTML = "";
    if (!items || !items.length) {
      S.page = null;
      status(S.exhausted ? "no confident masks left (score >= " + S.settings.triage_min_score + ")" : "loading a page…", "ok");
      if (!S.exhausted) topUp().then(function () { if (!S.page && S.queue.length) nextPage(); });
      return;
    }
    var page = { items: items, bad: bad || {}, shownAt: null };
    S.page = page;
    var box = tileBox();
    Promise.all(items.map(prefetch)).then(function () {
      if (S.page !== page) return;
      items.forEach(function (item) {
        var tile = document.createElement("div");
        tile.className = "prv-tile";
        tile.setAttribute("data-sample", item.sample_id);
        tile.style.cssText = "position:relative;display:inline-block;margin:4px;cursor:pointer;border:3px solid transparent";
        var c = document.createElement("canvas");
        c.style.display = "block";
        if (item.layers) paint(c, item, box, false, false);
        var label = document.createElement("div");
        label.style.cssText = "position:absolute;left:4px;bottom:4px;background:rgba(0,0,0,.7);padding:1px 4px;font:12px sans-serif";
        label.textContent = (item.score === null ? "n/a" : item.score.toFixed(2)) + " " + item.pc_id;
        tile.appendChild(c);
        tile.appendChild(label);
        tile.addEventListener("click", function (e) {
          e.preventDefault();
          e.stopPropagation();
          if (page.bad[item.sample_id]) delete page.bad[item.sample_id];
          else page.bad[item.sample_id] = true;
          markTile(tile, !!page.bad[item.sample_id]);
          page.clicks = (page.clicks || 0) + 1;
          renderHeader();
        });
        markTile(tile, !!page.bad[item.sample_id]);
        grid.appendChild(tile);
      });
      requestAnimationFrame(function () {
        if (S.page !== page) return;
        page.shownAt = performance.now();
        S.shownAt = page.shownAt;
        S.log.forEach(function (e) { if (e.nextPage === page && e.nextShownAt === undefined) e.nextShownAt = page.shownAt; });
      });
      renderHeader();
    });
  }

  function markTile(tile, bad) {
    tile.style.borderColor = bad ? "#ff3b3b" : "transparent";
    tile.classList.toggle("prv-bad", bad);
    var cross = tile.querySelector(".prv-cross");
    if (bad && !cross) {
      cross = document.createElement("div");
      cross.className = "prv-cross";
      cross.textContent = "✕ reject";
      cross.style.cssText = "position:absolute;top:4px;right:4px;background:#ff3b3b;color:#fff;padding:2px 6px;font:bold 13px sans-serif";
      tile.appendChild(cross);
    } else if (!bad && cross) {
      cross.remove();
    }
  }

  function nextPage() {
    var items = S.queue.splice(0, pageSize());
    showPage(items, {});
    topUp();
    return S.page;
  }

  function decidePage(pressedAt) {
    var page = S.page;
    if (!page || page.shownAt === null) return;
    var now = performance.now();
    if (now - page.shownAt < S.settings.min_seen_ms) {
      status("too fast: the page was not on screen long enough; press again", "warn");
      return;
    }
    var seconds = (now - page.shownAt) / 1000 / page.items.length; // the page's time, shared
    var decisions = page.items.map(function (item) {
      return { sample_id: item.sample_id, decision: page.bad[item.sample_id] ? "reject" : "accept",
        mask_sha256: item.mask_sha256, seconds_on_screen: seconds };
    });
    var entry = { page: true, sampleIds: decisions.map(function (d) { return d.sample_id; }),
      pcIds: page.items.map(function (it) { return it.pc_id; }),
      decisions: decisions.map(function (d) { return d.decision; }), clicks: page.clicks || 0,
      pressedAt: pressedAt, handledAt: now, items: page.items };
    S.log.push(entry);
    S.unsaved.push(entry);
    S.history.push({ kind: "page", items: page.items, bad: Object.assign({}, page.bad), entries: [entry] });
    for (var i = 0; i < page.items.length; i++) S.decisionTimes.push(now);
    var upcoming = nextPage();
    entry.nextPage = upcoming;
    renderHeader();
    enqueue("decide_page", { decisions: decisions, via: "triage", progress: false }).then(function (result) {
      settle(entry, result, null);
      if (!result.ok && S.mode === "triage") { S.queue = entry.items.concat(S.queue); }
    }, function (err) {
      settle(entry, { ok: false, message: err.message }, null);
      if (S.mode === "triage") S.queue = entry.items.concat(S.queue);
    });
  }

  // ------------------------------------------------------------------ header: progress, rate, unsaved

  function rate() {
    var now = performance.now();
    var recent = S.decisionTimes.filter(function (t) { return now - t <= RATE_WINDOW_MS; });
    if (recent.length < 2) return null;
    var span = Math.max(now - recent[0], 1000);
    return recent.length / (span / 60000);
  }

  function clock(seconds) {
    if (seconds === null || !isFinite(seconds)) return "–";
    var m = Math.floor(seconds / 60), s = Math.round(seconds % 60);
    return m >= 60 ? Math.floor(m / 60) + " h " + (m % 60) + " min" : m + ":" + (s < 10 ? "0" : "") + s;
  }

  function renderHeader() {
    if (!S.root) return;
    var p = S.progress || {};
    var pending = S.unsaved.reduce(function (n, e) { return n + (e.page ? e.sampleIds.length : e.undo ? 0 : 1); }, 0);
    var reviewed = (p.reviewed || 0) + S.delta + pending;
    var left = Math.max(0, (p.total || 0) - reviewed);
    var r = rate();
    var text = (S.mode === "triage" ? "TRIAGE" : "REVIEW") + " · reviewed " + reviewed + "/" + (p.total || "?") +
      " · left " + left + " · rate " + (r === null ? "–" : r.toFixed(0)) + " images/min · time left " +
      (r ? clock(left / r * 60) : "–");
    if (S.mode === "triage" && S.page) {
      var bad = Object.keys(S.page.bad).length;
      text += " · page of " + S.page.items.length + ": " + bad + " marked bad";
    }
    S.root.querySelector("#prv-progress").textContent = text;
    var box = S.root.querySelector("#prv-unsaved");
    if (S.unsaved.length) {
      box.style.color = "#ffd166";
      box.textContent = "not yet saved: " + S.unsaved.map(function (e) {
        return e.undo ? "undo" : e.page ? "page of " + e.sampleIds.length : e.pcId + " (" + e.decision + ")";
      }).join(", ");
    } else {
      box.style.color = "#7ee787";
      box.textContent = "all decisions saved (journal fsync'd)";
    }
    if (S.path) box.textContent += " · via " + S.path;
  }

  function status(text, kind) {
    if (!S.root) return;
    var el = S.root.querySelector("#prv-status");
    el.textContent = text;
    el.style.color = kind === "error" ? "#ff6b6b" : kind === "warn" ? "#ffd166" : "#7ee787";
  }

  // ------------------------------------------------------------------ open / close

  function build(container) {
    var root = document.createElement("div");
    root.id = "portrait-review-view";
    root.tabIndex = -1;
    root.style.cssText = "position:fixed;inset:0;z-index:2147483646;background:#111;color:#eee;font:13px sans-serif;" +
      "display:flex;flex-direction:column";
    root.innerHTML =
      "<div style='padding:6px 10px;background:#1c1c1c;border-bottom:1px solid #333'>" +
      "<div id='prv-progress' style='font-size:15px'></div>" +
      "<div style='display:flex;gap:16px'><div id='prv-unsaved'></div><div id='prv-status'></div></div></div>" +
      "<div id='prv-body' style='flex:1;display:flex;min-height:0'>" +
      "<div id='prv-stage' style='flex:1;display:flex;align-items:center;justify-content:center;min-width:0'>" +
      "<canvas id='prv-canvas' width='1' height='1'></canvas></div>" +
      "<div id='prv-side' style='width:280px;padding:10px;background:#181818;overflow:auto'></div>" +
      "<div id='prv-grid' style='flex:1;overflow:auto;padding:4px;display:none'></div></div>";
    root.addEventListener("mousedown", function (e) { e.stopPropagation(); });
    (container || document.body).appendChild(root);
    return root;
  }

  function open(mode) {
    if (S.open && S.mode === mode) return;
    if (S.open) close();
    S.open = true;
    S.mode = mode;
    S.queue = [];
    S.held = {};
    S.history = [];
    S.exhausted = false;
    S.current = null;
    S.page = null;
    S.shownAt = null;
    S.root = build();
    var triage = mode === "triage";
    S.root.querySelector("#prv-stage").style.display = triage ? "none" : "flex";
    S.root.querySelector("#prv-side").style.display = triage ? "none" : "block";
    S.root.querySelector("#prv-grid").style.display = triage ? "block" : "none";
    renderHeader();
    status(triage ? "triage: click the bad masks, a (or Enter) accepts the rest of the page · u reopens the last page · Esc close"
      : "a accept · d reject · u undo · f fill · g disagreement · Esc close", "ok");
    topUp().then(function () { return triage ? nextPage() : next(); });
  }

  function close() {
    if (S.root) S.root.remove();
    S.root = null;
    S.open = false;
    S.mode = null;
    S.current = null;
    S.page = null;
    S.queue = [];
  }

  S.openView = open;
  S.closeView = close;

  function typing(target) {
    if (!target) return false;
    var tag = (target.tagName || "").toLowerCase();
    return tag === "input" || tag === "textarea" || tag === "select" || target.isContentEditable;
  }

  function modalOpen() {
    return !!document.querySelector("[data-cy=modal]");
  }

  window.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
    var key = event.key;
    if (!S.open) {
      if ((key === "r" || key === "t") && !modalOpen() && datasetName()) {
        event.preventDefault();
        event.stopImmediatePropagation();
        open(key === "t" ? "triage" : "queue");
      }
      return;
    }
    event.preventDefault();
    event.stopImmediatePropagation(); // the App underneath must not see the view's keys
    if (event.repeat && key !== "Escape") return; // a held key is not a decision
    var pressedAt = event.timeStamp || performance.now();
    if (key === "Escape") return close();
    if (key === "u") return undo();
    if (S.mode === "triage") {
      if (key === "a" || key === "Enter") decidePage(pressedAt);
      return;
    }
    if (key === "a") decideOne("accept", "view", pressedAt);
    else if (key === "d") decideOne("reject", "view", pressedAt);
    else if (key === "f" || key === "g") {
      if (key === "f") S.fill = !S.fill;
      else S.disagreement = !S.disagreement;
      if (S.current && S.current.layers) {
        paint(S.root.querySelector("#prv-canvas"), S.current, stageBox(), S.fill, S.disagreement);
        renderSide(S.current);
      }
    }
  }, true);

  window.addEventListener("resize", function () {
    if (S.open && S.mode === "queue" && S.current && S.current.layers) {
      paint(S.root.querySelector("#prv-canvas"), S.current, stageBox(), S.fill, S.disagreement);
    }
  });

  // ------------------------------------------------------------------ entry points in the App

  function launcher() {
    if (document.getElementById("portrait-review-launcher") || !document.body) return;
    var bar = document.createElement("div");
    bar.id = "portrait-review-launcher";
    bar.style.cssText = "position:fixed;left:12px;bottom:12px;z-index:2147483645;background:rgba(20,20,20,0.92);" +
      "padding:6px 8px;border-radius:6px;font:13px sans-serif;display:none";
    [["queue", "Review view (r)"], ["triage", "Triage (t)"]].forEach(function (pair) {
      var b = document.createElement("button");
      b.textContent = pair[1];
      b.setAttribute("data-review-view", pair[0]);
      b.style.cssText = "margin-right:6px;padding:4px 10px;border:1px solid #888;border-radius:4px;background:#222;color:#eee;cursor:pointer";
      b.addEventListener("click", function (e) { e.preventDefault(); e.stopPropagation(); open(pair[0]); });
      bar.appendChild(b);
    });
    document.body.appendChild(bar);
    setInterval(function () { bar.style.display = !S.open && !modalOpen() && datasetName() ? "block" : "none"; }, 300);
  }

  // A panel in the App's own "new panel" menu (the App's plugin registry, React from the App's
  // globals): it offers the two views, which then open full screen over the App.
  function registerPanel() {
    var registry = window.__fo_plugin_registry__, React = window.React;
    if (!registry || !React || !registry.register) return;
    function ReviewPanel() {
      var h = React.createElement;
      var style = { margin: 8, padding: "8px 14px", fontSize: 14, cursor: "pointer" };
      return h("div", { style: { padding: 16 } },
        h("p", null, "Prefetching review: one mask at a time (a / d / u), or triage pages of confident masks."),
        h("button", { style: style, "data-review-view": "queue", onClick: function () { open("queue"); } }, "Open review view (r)"),
        h("button", { style: style, "data-review-view": "triage", onClick: function () { open("triage"); } }, "Open triage (t)"));
    }
    try {
      registry.register({ name: "portrait_review_view", label: "Prefetching review", type: 2, component: ReviewPanel,
        activator: function () { return true; }, panelOptions: { surfaces: "grid" } });
      S.panelRegistered = true;
    } catch (e) {
      S.panelRegistered = false;
      S.panelError = String(e);
    }
  }

  registerPanel();
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", launcher);
  else launcher();
})();
