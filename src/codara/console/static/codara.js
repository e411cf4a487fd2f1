// Codara console keyboard shortcuts (no dependencies; works with or without htmx).
// Lists: j/k move, Enter/o open, x tick, a approve, e edit, r reject.
// Item page: j/k next/previous item, a approve, e edit, r reject, u back to the queue.
(function () {
  "use strict";

  function page() {
    var main = document.getElementById("main");
    return main ? main.dataset.page : "";
  }
  function rows() {
    return Array.prototype.slice.call(document.querySelectorAll("tr[data-nav-item]"));
  }
  function current() {
    return document.querySelector("tr[data-nav-item].selected");
  }
  function select(index) {
    var all = rows();
    if (!all.length) return null;
    index = Math.max(0, Math.min(all.length - 1, index));
    all.forEach(function (r) { r.classList.remove("selected"); });
    all[index].classList.add("selected");
    all[index].scrollIntoView({ block: "nearest" });
    return all[index];
  }
  function move(step) {
    var all = rows(), at = all.indexOf(current());
    select(at < 0 ? 0 : at + step);
  }
  function go(url) {
    window.location.href = url;
  }
  function submit(form) {
    if (!form) return;
    if (form.requestSubmit) form.requestSubmit(); else form.submit();
  }
  function approveRow(row) {
    // A deliberate POST with the session's CSRF token, like the Approve button.
    var form = document.createElement("form");
    form.method = "post";
    form.action = row.dataset.href + "/approve";
    [["csrf_token", document.getElementById("main").dataset.csrf], ["version", row.dataset.version]]
      .forEach(function (pair) {
        var input = document.createElement("input");
        input.type = "hidden"; input.name = pair[0]; input.value = pair[1];
        form.appendChild(input);
      });
    document.body.appendChild(form);
    form.submit();
  }
  function openSection(id, focus) {
    var section = document.getElementById(id);
    if (!section) return;
    section.open = true;
    var field = document.getElementById(focus);
    if (field) { field.focus(); section.scrollIntoView({ block: "center" }); }
  }

  document.addEventListener("keydown", function (ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || ev.defaultPrevented) return;
    var t = ev.target;
    if (t && t.closest && t.closest("input, textarea, select, [contenteditable]")) {
      if (ev.key === "Escape") t.blur();
      return;
    }
    var p = page(), row = current(), handled = true;
    if (p === "queue" || p === "runs") {
      if (ev.key === "j") move(1);
      else if (ev.key === "k") move(-1);
      else if ((ev.key === "Enter" || ev.key === "o") && row) go(row.dataset.href);
      else if (ev.key === "x" && row) { var box = row.querySelector("input[type=checkbox]"); if (box) box.checked = !box.checked; }
      else if (p === "queue" && ev.key === "a" && row) approveRow(row);
      else if (p === "queue" && ev.key === "e" && row) go(row.dataset.href + "#edit");
      else if (p === "queue" && ev.key === "r" && row) go(row.dataset.href + "#reject");
      else handled = false;
    } else if (p === "item") {
      var next = document.getElementById("next-item"), prev = document.getElementById("prev-item");
      if (ev.key === "j" && next) next.click();
      else if (ev.key === "k" && prev) prev.click();
      else if (ev.key === "a") submit(document.getElementById("approve-form"));
      else if (ev.key === "e") openSection("edit", "proposal-json");
      else if (ev.key === "r") openSection("reject", "reason-code");
      else if (ev.key === "u") go("/queue");
      else handled = false;
    } else handled = false;
    if (handled) ev.preventDefault();
  });

  document.addEventListener("click", function (ev) {
    var row = ev.target.closest && ev.target.closest("tr[data-nav-item]");
    if (!row || ev.target.closest("a, input, button, label, summary")) return;
    go(row.dataset.href);
  });

  function arrive() {
    if (page() === "item" && (location.hash === "#edit" || location.hash === "#reject")) {
      openSection(location.hash.slice(1), location.hash === "#edit" ? "proposal-json" : "reason-code");
    }
  }
  document.addEventListener("DOMContentLoaded", arrive);
  document.addEventListener("htmx:afterSettle", arrive);
})();
