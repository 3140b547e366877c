// palette dashboard: refresh the live part of the page every 3 s while it
// is visible (the server answers only that part to X-Palette-Partial).
(function () {
  var live = document.getElementById("live");
  if (!live) return;
  function refresh() {
    if (document.hidden) return;
    fetch(location.href, { headers: { "X-Palette-Partial": "1" }, credentials: "same-origin" })
      .then(function (r) {
        if (r.redirected || r.status === 401 || r.status === 403) { location.href = "/ui/login"; return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) { if (html !== null && html !== undefined) live.innerHTML = html; })
      .catch(function () {});
  }
  setInterval(refresh, 3000);
})();
