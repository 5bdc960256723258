// controlplane console: live updates and search as you type. Plain JS, no dependencies.
//
// The server renders every page; this script only swaps the page's live region (#live) for a
// freshly rendered copy (?fragment=1) when
//   - the gateway's event stream (/ui/events, server-sent events fanned out from one cluster
//     Watch per gateway) says a domain this page shows has changed, at most once a second;
//   - the user types in a search/filter form (debounced), replacing the URL so a reload or a
//     shared link shows the same thing.
// Without JS every page still works: forms submit, links navigate.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var stateLine = document.getElementById("live-state");
  if (!live) { return; }
  var domains = (live.getAttribute("data-live") || "").split(/\s+/).filter(Boolean);
  var MIN_INTERVAL_MS = 1000;
  var TYPE_DELAY_MS = 200;
  var timer = null;
  var lastStart = 0;
  var generation = 0;
  var controller = null;

  function say(text) { if (stateLine) { stateLine.textContent = text; } }

  function fragmentUrl() {
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    return url.toString();
  }

  // Fetch the live region now; a newer fetch aborts an older one, so a slow answer to an old
  // query never overwrites a newer one.
  function refresh() {
    timer = null;
    lastStart = Date.now();
    generation += 1;
    var mine = generation;
    if (controller) { controller.abort(); }
    controller = new AbortController();
    fetch(fragmentUrl(), { credentials: "same-origin", headers: { "Accept": "text/html" }, signal: controller.signal })
      .then(function (response) {
        if (response.status === 401) { window.location.reload(); return null; }
        return response.text();
      })
      .then(function (html) {
        if (html === null || mine !== generation) { return; }
        live.innerHTML = html; // rendered and escaped by the server; innerHTML never runs scripts
        live.setAttribute("data-refreshed", String(Date.now()));
        document.dispatchEvent(new CustomEvent("console:updated"));
      })
      .catch(function (error) {
        if (error && error.name === "AbortError") { return; }
        say("live: refresh failed, retrying on the next change");
      });
  }

  // At most one refresh per MIN_INTERVAL_MS for changes pushed by the server.
  function scheduleFromEvent() {
    if (timer !== null) { return; }
    var wait = Math.max(0, lastStart + MIN_INTERVAL_MS - Date.now());
    timer = window.setTimeout(refresh, wait);
  }

  function scheduleFromTyping() {
    if (timer !== null) { window.clearTimeout(timer); }
    timer = window.setTimeout(refresh, TYPE_DELAY_MS);
  }

  if (window.EventSource && domains.length) {
    var source = new EventSource("/ui/events");
    source.addEventListener("open", function () { say("live"); });
    source.addEventListener("error", function () { say("live: reconnecting"); });
    source.addEventListener("change", function (event) {
      var change;
      try { change = JSON.parse(event.data); } catch (e) { return; }
      if (domains.indexOf("*") >= 0 || domains.indexOf(change.domain) >= 0) { scheduleFromEvent(); }
    });
  }

  var forms = document.querySelectorAll("form[data-search]");
  Array.prototype.forEach.call(forms, function (form) {
    function update() {
      var url = new URL(form.getAttribute("action"), window.location.href);
      var data = new FormData(form);
      data.forEach(function (value, key) { if (value !== "") { url.searchParams.set(key, String(value)); } });
      window.history.replaceState(null, "", url.pathname + url.search);
      scheduleFromTyping();
    }
    form.addEventListener("input", update);
    form.addEventListener("change", update);
    form.addEventListener("submit", function (event) { event.preventDefault(); update(); });
  });
}());
