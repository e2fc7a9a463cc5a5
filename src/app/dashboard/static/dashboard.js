// Conveyor dashboard: small touches on top of htmx; every page works without this file.
(function () {
  "use strict";

  function isPoll(elt) {
    var trigger = elt && elt.getAttribute && elt.getAttribute("hx-trigger");
    return !!trigger && trigger.indexOf("every") === 0;
  }

  function setStatus(name) {
    document.body.dataset.live = name;
    var label = document.querySelector(".live-indicator .label");
    if (label) label.textContent = name;
  }

  // A background tab does not need fresh numbers: skip its polls, catch up when shown.
  document.addEventListener("htmx:beforeRequest", function (event) {
    if (document.hidden && isPoll(event.detail.elt)) event.preventDefault();
  });
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) {
      setStatus("paused");
      return;
    }
    setStatus("live");
    document.querySelectorAll('[hx-trigger^="every"]').forEach(function (elt) {
      htmx.trigger(elt, "refresh");
    });
  });

  // Never pull a table from under the operator: no refresh while a button is held down
  // or while text in it is selected (a job id being copied).
  document.addEventListener("htmx:beforeSwap", function (event) {
    var target = event.detail.target;
    if (!isPoll(event.detail.elt) || !target) return;
    var selection = window.getSelection();
    var selecting = selection && !selection.isCollapsed && target.contains(selection.anchorNode);
    if (selecting || target.querySelector(":active")) event.detail.shouldSwap = false;
  });

  // Say so when the API stops answering, instead of showing stale numbers as live ones.
  document.addEventListener("htmx:sendError", function () { setStatus("offline"); });
  document.addEventListener("htmx:responseError", function () { setStatus("offline"); });
  document.addEventListener("htmx:afterRequest", function (event) {
    if (event.detail.successful) setStatus(document.hidden ? "paused" : "live");
  });
})();
