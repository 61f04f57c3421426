// Walks the dashboard of a running `jobhost run --http --admin-token TOKEN` in Debian's
// Chromium, headless, through every screen and every action, and checks what a person would
// see. Started by tests/all/dashboard.rs, which prepares the queue: jobs of several names
// (more than a page), dead letters, one long `busy` job that reports progress, a schedule.
//
// env: BASE_URL, TOKEN, CHROMIUM (the browser), OUT (where screenshots go), BUSY_ID (the
// long job's id).
import { chromium } from "playwright-core";

const { BASE_URL, TOKEN, CHROMIUM, OUT, BUSY_ID } = process.env;
const steps = [];
function check(what, ok, detail = "") {
  steps.push({ what, ok });
  if (!ok) throw new Error(`${what} ${detail}`);
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const page = await browser.newPage({ viewport: { width: 1200, height: 820 } });
page.on("dialog", (dialog) => dialog.accept());
const shot = (name) => page.screenshot({ path: `${OUT}/${name}.png`, fullPage: true });
const notice = async () => (await page.locator(".notice").textContent().catch(() => "")) || "";

try {
  // 1. Overview: counts by state and the two charts.
  await page.goto(`${BASE_URL}/`);
  check("overview heading", (await page.locator("h1").textContent()) === "Overview");
  const done = Number(await page.locator('.count[data-state="done"]').textContent());
  check("overview counts done jobs", done >= 60, `done=${done}`);
  check("overview has two charts", (await page.locator("svg.chart").count()) === 2);
  check("the done chart has bars", (await page.locator("svg.chart.done rect").count()) === 60);
  await shot("overview");

  // 2. The token is enforced: an action without it is refused, a wrong one too.
  await page.goto(`${BASE_URL}/ui/dead`);
  const deadBefore = await page.locator("article.dead").count();
  check("dead letters listed", deadBefore >= 3, `count=${deadBefore}`);
  check("dead letters show the reason", (await page.locator("article.dead .reason").first().textContent()) === "permanent");
  await page.locator("article.dead").first().getByRole("button", { name: "Retry" }).click();
  check("an action without the token is refused", (await page.locator("h1").textContent()) === "Not allowed");
  await page.goto(`${BASE_URL}/ui/dead`);
  await page.fill('input[name="token"]', "not-the-token");
  await page.getByRole("button", { name: "Sign in" }).click();
  check("a wrong token does not sign in", (await page.locator("h1").textContent()) === "Not signed in");
  await page.goto(`${BASE_URL}/ui/dead`);
  await page.fill('input[name="token"]', TOKEN);
  await page.getByRole("button", { name: "Sign in" }).click();
  check("the right token signs in", (await notice()).includes("signed in"));

  // 3. Dead letters: retry one, delete one, retry all.
  await page.goto(`${BASE_URL}/ui/dead`);
  await shot("dead-letters");
  await page.locator("article.dead").first().getByRole("button", { name: "Retry" }).click();
  check("retry one", (await notice()).includes("queued again"));
  await page.goto(`${BASE_URL}/ui/dead`);
  const deadNow = await page.locator("article.dead").count();
  await page.locator("article.dead").first().getByRole("button", { name: "Delete" }).click();
  check("delete one", (await notice()).includes("deleted"));
  check("one fewer dead letter", (await page.locator("article.dead").count()) === deadNow - 1);
  if ((await page.locator("article.dead").count()) > 0) {
    await page.getByRole("button", { name: "Retry all" }).click();
    check("retry all", /\d+ queued again/.test(await notice()));
  }

  // 4. Jobs: filter by state and name, page, find by id.
  await page.goto(`${BASE_URL}/ui/jobs`);
  await page.selectOption('select[name="state"]', "done");
  await page.selectOption('select[name="name"]', "echo");
  await page.getByRole("button", { name: "Filter" }).click();
  const rows = page.locator("table.jobs tbody tr");
  check("a full first page", (await rows.count()) === 50, `rows=${await rows.count()}`);
  check("only done echo jobs", (await page.locator("table.jobs tbody .state.done").count()) === 50);
  await page.getByRole("link", { name: "older →" }).click();
  check("a second page", (await rows.count()) >= 10 && (await page.locator(".pages span").textContent()) === "page 2");
  await page.fill('input[name="id"]', BUSY_ID);
  await page.getByRole("button", { name: "Find" }).click();
  check("find by id opens the job", page.url().endsWith(`/ui/jobs/${BUSY_ID}`));

  // 5. Job detail: live progress while it runs, cost, then cancel it.
  const progress = page.locator(".progress progress");
  await progress.waitFor();
  const first = Number(await progress.getAttribute("value"));
  await page.waitForFunction(
    (before) => Number(document.querySelector(".progress progress")?.getAttribute("value")) > before,
    first,
    { timeout: 15000 },
  );
  check("progress moves on its own while the job runs", true);
  check("the job shows its payload", (await page.locator("pre").first().textContent()).includes('"ms"'));
  await shot("job");
  await page.getByRole("button", { name: "Cancel" }).click();
  check("cancel a running job", (await notice()).includes("cancel"));
  await page.waitForFunction(() => document.querySelector(".state")?.textContent === "cancelled", null, { timeout: 15000 });
  check("the job ends cancelled", true);
  check("its cost is shown", (await page.locator("dl.cost").count()) === 1);

  // 6. Handlers: pause and resume a job name.
  await page.goto(`${BASE_URL}/ui/handlers`);
  check("handlers listed with versions", (await page.locator("article.handler").count()) >= 3);
  const busy = page.locator("tr", { has: page.locator("code", { hasText: /^busy$/ }) });
  await busy.getByRole("button", { name: "Pause" }).click();
  check("pause", (await notice()).includes("busy paused"));
  check("the pause shows", (await busy.locator(".badge.paused").count()) === 1);
  await shot("handlers");
  await busy.getByRole("button", { name: "Resume" }).click();
  check("resume", (await notice()).includes("busy resumed"));
  check("the pause is gone", (await busy.locator(".badge.paused").count()) === 0);

  // 7. Schedules: the next ticks, run one now.
  await page.goto(`${BASE_URL}/ui/schedules`);
  check("a schedule with its next ticks", (await page.locator("ul.ticks li").count()) === 3);
  await shot("schedules");
  await page.getByRole("button", { name: "Run now" }).click();
  check("run a schedule now", (await notice()).includes("enqueued now"));
  check("it opens the new job", /\/ui\/jobs\/[0-9a-f-]+/.test(page.url()));
} catch (error) {
  await shot("failure").catch(() => {});
  console.log(JSON.stringify({ ok: false, error: String(error), steps }));
  await browser.close();
  process.exit(1);
}
console.log(JSON.stringify({ ok: true, steps }));
await browser.close();
