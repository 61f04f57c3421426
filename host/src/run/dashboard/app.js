// The dashboard works without this script; it only asks before destructive actions and,
// while a page shows running work (`data-refresh` on its body), swaps in a fresh copy of
// the page every two seconds.
document.addEventListener("submit", (event) => {
  const question = event.target.dataset.confirm;
  if (question && !window.confirm(question)) event.preventDefault();
});

async function refresh() {
  if (!document.body.dataset.refresh) return;
  if (!document.hidden && !document.activeElement?.matches("input, select")) {
    try {
      const response = await fetch(window.location.href);
      if (response.ok) {
        const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
        const main = fresh.getElementById("main");
        if (main) document.getElementById("main").replaceWith(main);
        if (!fresh.body.dataset.refresh) delete document.body.dataset.refresh;
      }
    } catch (_) {
      // The host may be restarting: try again at the next tick.
    }
  }
  setTimeout(refresh, Number(document.body.dataset.refresh || 2000));
}
setTimeout(refresh, Number(document.body.dataset.refresh || 2000));
