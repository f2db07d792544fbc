/*
 * One key per image in the FiftyOne App's sample modal: a = accept, d = reject, u = undo.
 *
 * FiftyOne 1.22 has no hotkeys for operators, so this plain script (loaded by the App as the
 * plugin's js_bundle) listens for the keys, posts the decision for the sample named in the
 * URL to the plugin's `decide` operator, and lets the App move on with its own ArrowRight.
 * The sample id travels with the request, so fast presses never judge the next sample.
 * A small bar (bottom left) shows the last saved decision, the progress and three buttons
 * (the one-click path). A decision counts once the bar says "saved": the server answers
 * only after the journal line is fsync'd.
 *
 * "Seen": the App writes the next sample's id into the URL 0.1 s (idle machine) to 0.5 s
 * (loaded machine) before it paints it. So an image counts as shown from the first animation
 * frame in which the modal's canvas differs from the previous picture; seconds_on_screen
 * is measured from then, and a press before it, or less than min_seen_ms after it (a double
 * press, a held key), is ignored, so nothing is judged before it could be seen.
 *
 * It also loads review_view.js, the prefetching review view (keys r / t on the grid); while
 * that view is open these keys are its own.
 *
 * Relies on undocumented App behaviour (URL ?id=, ArrowRight navigation, the
 * /operators/execute route): the fiftyone version is pinned and the browser test covers it.
 */
(function () {
  "use strict";
  if (window.__portraitReview) return;

  var PLUGIN = "@portrait-curation/review";
  var KEYS = { a: "accept", d: "reject", u: "undo" };
  var state = {
    minSeenMs: 150, // until review_progress answers with review.min_seen_ms
    currentId: null,
    urlAt: 0,
    shownAt: null,
    inFlight: {},
    log: [],
    bar: null,
    status: null,
    progress: null,
  };
  window.__portraitReview = state;

  function sampleIdFromUrl() {
    try {
      return new URL(window.location.href).searchParams.get("id");
    } catch (e) {
      return null;
    }
  }

  function routePrefix() {
    var path = window.location.pathname;
    var at = path.indexOf("/datasets/");
    return at >= 0 ? path.slice(0, at) : "";
  }

  function datasetName() {
    var path = window.location.pathname;
    var at = path.indexOf("/datasets/");
    if (at < 0) return null;
    return decodeURIComponent(path.slice(at + "/datasets/".length).split("/")[0]);
  }

  function modalOpen() {
    return !!document.querySelector("[data-cy=modal]");
  }

  // A fingerprint of what the modal's canvas shows (16x16 downscale); null while blank.
  function canvasSignature() {
    var canvas = document.querySelector("[data-cy=modal] canvas");
    if (!canvas || !canvas.width) return null;
    var small = state.small || (state.small = document.createElement("canvas"));
    small.width = 16;
    small.height = 16;
    var g = small.getContext("2d", { willReadFrequently: true });
    g.clearRect(0, 0, 16, 16);
    g.drawImage(canvas, 0, 0, 16, 16);
    var data = g.getImageData(0, 0, 16, 16).data;
    var hash = 0, alpha = 0;
    for (var i = 0; i < data.length; i++) {
      hash = (hash * 31 + data[i]) >>> 0;
      if (i % 4 === 3) alpha += data[i];
    }
    return alpha ? hash : null;
  }

  // "Seen" starts when the new picture is painted (the canvas changes), not when the URL
  // changes; if two pictures look alike, PAINT_FALLBACK_MS after the URL change.
  var PAINT_FALLBACK_MS = 1500;
  function watchPaint(id, before) {
    function frame() {
      if (state.currentId !== id) return;
      var now = performance.now();
      var sig = canvasSignature();
      if ((sig !== null && sig !== before) || now - state.urlAt > PAINT_FALLBACK_MS) {
        state.shownAt = now;
        state.lastSignature = sig;
        for (var i = state.log.length - 1; i >= 0 && i >= state.log.length - 3; i--) {
          var entry = state.log[i];
          if (entry.nextShownAt === undefined && entry.sampleId !== id) entry.nextShownAt = now;
        }
        return;
      }
      requestAnimationFrame(frame);
    }
    requestAnimationFrame(frame);
  }

  function checkUrl() {
    var id = modalOpen() ? sampleIdFromUrl() : null;
    if (id !== state.currentId) {
      var before = state.currentId ? canvasSignature() : null;
      state.currentId = id;
      state.urlAt = performance.now();
      state.shownAt = null;
      for (var i = state.log.length - 1; i >= 0 && i >= state.log.length - 3; i--) {
        var entry = state.log[i];
        if (entry.nextUrlAt === undefined && entry.sampleId !== id) entry.nextUrlAt = state.urlAt;
      }
      if (id) watchPaint(id, before);
      render();
    }
  }

  ["pushState", "replaceState"].forEach(function (name) {
    var original = history[name];
    history[name] = function () {
      var out = original.apply(this, arguments);
      checkUrl();
      return out;
    };
  });
  window.addEventListener("popstate", checkUrl);
  setInterval(checkUrl, 100);

  // One operator call through the App's route; currentSample is the modal's sample (none for
  // the review view, which shares this through window.__portraitReviewApp).
  function executeOperator(operator, params, currentSample) {
    var body = {
      dataset_name: datasetName(),
      operator_uri: PLUGIN + "/" + operator,
      params: params,
      current_sample: currentSample,
      view: [],
    };
    return fetch(routePrefix() + "/operators/execute", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    }).then(function (response) {
      return response.json().then(function (json) {
        if (!response.ok || json.error) throw new Error(json.error_message || json.error || response.statusText);
        return json.result || {};
      });
    });
  }

  function execute(operator, params) {
    return executeOperator(operator, params, state.currentId);
  }

  // What review_view.js (loaded below) shares with this file.
  window.__portraitReviewApp = { routePrefix: routePrefix, datasetName: datasetName, executeOperator: executeOperator };

  function navigate(key) {
    var event = new KeyboardEvent("keydown", { key: key, code: key, bubbles: true, cancelable: true });
    document.dispatchEvent(event);
  }

  function show(text, kind) {
    if (!state.status) return;
    state.status.textContent = text;
    state.status.style.color = kind === "error" ? "#ff6b6b" : kind === "warn" ? "#ffd166" : "#7ee787";
  }

  function showProgress(result) {
    if (result && result.progress_text && state.progress) state.progress.textContent = result.progress_text;
  }

  function decide(decision, via) {
    var id = state.currentId;
    if (!id) return;
    var now = performance.now();
    if (state.inFlight[id]) return; // already decided on this screen: a double press
    if (state.shownAt === null || now - state.shownAt < state.minSeenMs) {
      show("too fast: the image was not on screen yet; press again", "warn");
      return;
    }
    var entry = { sampleId: id, decision: decision, pressedAt: now, seconds: (now - state.shownAt) / 1000 };
    state.log.push(entry);
    state.inFlight[id] = true;
    show(decision + "…", "warn");
    navigate("ArrowRight"); // the App starts fetching the next sample before the decision is posted
    execute("decide", { sample_id: id, decision: decision, seconds_on_screen: entry.seconds, via: via })
      .then(function (result) {
        entry.savedAt = performance.now();
        entry.ok = !!result.ok;
        entry.pcId = result.id;
        if (!result.ok) {
          delete state.inFlight[id];
          show("NOT SAVED: " + result.message, "error");
          return;
        }
        show("saved: " + result.message, "ok");
        showProgress(result);
        setTimeout(function () { delete state.inFlight[id]; }, 1000);
      })
      .catch(function (err) {
        entry.ok = false;
        delete state.inFlight[id];
        show("NOT SAVED (" + id + "): " + err.message, "error");
      });
  }

  function undo() {
    var entry = { undo: true, pressedAt: performance.now() };
    state.log.push(entry);
    show("undoing…", "warn");
    execute("undo_decision", { quiet: true })
      .then(function (result) {
        entry.savedAt = performance.now();
        entry.ok = !!result.ok;
        entry.pcId = result.id;
        entry.sampleId = result.sample_id;
        show((result.ok ? "saved: " : "") + result.message, result.ok ? "ok" : "warn");
        showProgress(result);
        if (result.ok && result.sample_id && result.sample_id !== state.currentId) navigate("ArrowLeft");
      })
      .catch(function (err) {
        show("undo failed: " + err.message, "error");
      });
  }

  function typing(target) {
    if (!target) return false;
    var tag = (target.tagName || "").toLowerCase();
    return tag === "input" || tag === "textarea" || tag === "select" || target.isContentEditable;
  }

  window.addEventListener(
    "keydown",
    function (event) {
      if (window.__portraitReviewView && window.__portraitReviewView.open) return; // review_view.js has the keys
      var action = KEYS[event.key];
      if (!action || event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
      checkUrl();
      if (!state.currentId) return; // grid: the keys mean nothing there
      event.preventDefault();
      event.stopImmediatePropagation();
      if (event.repeat) return; // a held key is not a decision
      if (action === "undo") undo();
      else decide(action, "key");
    },
    true
  );

  function button(label, title, onClick) {
    var b = document.createElement("button");
    b.textContent = label;
    b.title = title;
    b.setAttribute("data-review", label.split(" ")[0].toLowerCase());
    b.style.cssText =
      "margin-right:6px;padding:4px 10px;border:1px solid #888;border-radius:4px;background:#222;color:#eee;cursor:pointer;font:13px sans-serif";
    b.addEventListener("mousedown", function (e) { e.stopPropagation(); });
    b.addEventListener("click", function (e) {
      e.preventDefault();
      e.stopPropagation();
      checkUrl();
      onClick();
    });
    return b;
  }

  function render() {
    if (!document.body) return;
    if (!state.bar) {
      var bar = document.createElement("div");
      bar.id = "portrait-review-bar";
      bar.style.cssText =
        "position:fixed;left:12px;bottom:12px;z-index:2147483647;background:rgba(20,20,20,0.92);color:#eee;" +
        "padding:8px 10px;border-radius:6px;font:13px sans-serif;max-width:46vw;box-shadow:0 2px 8px rgba(0,0,0,.5)";
      bar.addEventListener("mousedown", function (e) { e.stopPropagation(); });
      bar.addEventListener("click", function (e) { e.stopPropagation(); });
      var buttons = document.createElement("div");
      buttons.appendChild(button("Accept (a)", "accept this pseudo-label and show the next", function () { decide("accept", "click"); }));
      buttons.appendChild(button("Reject (d)", "reject this pseudo-label and show the next", function () { decide("reject", "click"); }));
      buttons.appendChild(button("Undo (u)", "undo my last decision", undo));
      state.status = document.createElement("div");
      state.status.id = "portrait-review-status";
      state.status.style.marginTop = "6px";
      state.progress = document.createElement("div");
      state.progress.id = "portrait-review-progress";
      state.progress.style.cssText = "margin-top:4px;color:#bbb";
      bar.appendChild(buttons);
      bar.appendChild(state.status);
      bar.appendChild(state.progress);
      document.body.appendChild(bar);
      state.bar = bar;
      show("review keys: a accept · d reject · u undo", "ok");
      if (datasetName()) {
        execute("review_progress", {}).then(function (result) {
          if (result.min_seen_ms !== undefined) state.minSeenMs = result.min_seen_ms;
          showProgress(result);
        }).catch(function () {});
      }
    }
    state.bar.style.display = state.currentId ? "block" : "none";
  }

  // After a page reload the App restores the open sample from its session, but that
  // modal ignores the App's keys (ArrowRight does nothing). Close it through the App until
  // the reviewer touches the page; they then open a live one with a click.
  // Only once the App has loaded its operator list (POST /operators): executing an operator
  // it does not know yet replaces the whole App with an error page.
  function operatorsLoaded() {
    return performance.getEntriesByType("resource").some(function (e) {
      return /\/operators(\?|$)/.test(e.name) && e.responseEnd > 0 && performance.now() - e.responseEnd > 750;
    });
  }
  var touched = false;
  window.addEventListener("pointerdown", function () { touched = true; }, true);
  window.addEventListener("keydown", function () { touched = true; }, true);
  var restoreWatch = setInterval(function () {
    if (touched || performance.now() > 60000) return clearInterval(restoreWatch);
    var now = performance.now();
    if (modalOpen() && operatorsLoaded() && window.__foo__ && window.__foo__.executeOperator &&
        now - (state.lastCloseAt || -1e9) > 2000) {
      state.lastCloseAt = now;
      window.__foo__.executeOperator(PLUGIN + "/close_sample", {});
      state.restoredClosed = (state.restoredClosed || 0) + 1;
    }
  }, 250);

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", checkUrl);
  else checkUrl();

  // The prefetching review view lives beside this file (the App loads one js_bundle per plugin).
  var me = document.currentScript && document.currentScript.src;
  var viewScript = document.createElement("script");
  viewScript.src = me ? me.replace(/review_keys\.js(\?.*)?$/, "review_view.js$1")
    : routePrefix() + "/plugins/portrait_review/review_view.js";
  viewScript.async = true;
  document.head.appendChild(viewScript);
})();
