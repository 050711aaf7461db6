// Swagger UI at /docs, used as a person would, in headless Chromium (Debian's, driven by
// playwright-core): Authorize with a bearer token, then "Try it out" on create (twice, with an
// Idempotency-Key: the second is a replay), list, toggle and the change feed; each must answer
// with its status and the task. The page must make no request to any
// host but the server's own (its assets are embedded). On failure a screenshot is saved.
//
//   node swagger-ui.mjs BASE_URL TOKEN SCREENSHOT_DIR
//
// Run by `cargo xtask contract`, which starts the server and mints the token.

import { mkdirSync } from "node:fs";
import { join } from "node:path";

import { chromium } from "playwright-core";

import { chromiumOptions } from "../chromium.mjs";

const [baseUrl, token, screenshots] = process.argv.slice(2);
if (!baseUrl || !token || !screenshots) {
  console.error("usage: node swagger-ui.mjs BASE_URL TOKEN SCREENSHOT_DIR");
  process.exit(2);
}
const origin = new URL(baseUrl).origin;

const browser = await chromium.launch(chromiumOptions);
const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
const elsewhere = [];
page.on("request", (request) => {
  const url = new URL(request.url());
  if (["http:", "https:", "ws:", "wss:"].includes(url.protocol) && url.origin !== origin) {
    elsewhere.push(request.url());
  }
});

/** Expands an operation, clicks "Try it out" and "Execute"; returns the live response. */
async function tryItOut(operationId, tag, edit) {
  const operation = page.locator(`#operations-${tag}-${operationId}`);
  await operation.locator(".opblock-summary").first().click();
  // A second run finds the operation still in "try it out" mode (its button says "Cancel"),
  // with the last response shown.
  const tryOut = operation.locator("button.try-out__btn").first();
  await tryOut.waitFor();
  if ((await tryOut.innerText()).trim() === "Try it out") {
    await tryOut.click();
  }
  await operation.locator("button.execute").waitFor();
  const clear = operation.locator("button.btn-clear");
  if ((await clear.count()) > 0) {
    await clear.click();
  }
  if (edit) {
    await edit(operation);
  }
  await operation.locator("button.execute").click();
  const row = operation.locator(".live-responses-table tbody tr.response").first();
  await row.waitFor({ timeout: 10_000 });
  const status = Number((await row.locator("td.response-col_status").innerText()).trim());
  const body = await row.locator("td.response-col_description pre").first().innerText();
  await operation.locator(".opblock-summary").first().click(); // collapse again
  return { status, body };
}

function expect(condition, message) {
  if (!condition) {
    throw new Error(message);
  }
}

let failed = false;
try {
  await page.goto(`${baseUrl}/docs`, { waitUntil: "networkidle" });
  await page.locator(".swagger-ui .info .title").waitFor();

  // Authorize: the bearer scheme (the first of the two; the cookie alternative is for
  // same-origin browsers, and the dialog lists it after), the token pasted once.
  await page.locator(".scheme-container button.authorize").click();
  const dialog = page.locator(".modal-ux");
  const bearer = dialog.locator(".auth-container").first();
  await bearer.getByText("BearerAuth").first().waitFor();
  await bearer.locator("input").first().fill(token);
  await bearer.locator("button.authorize").click();
  await bearer.locator("button.btn-done").click();

  const title = `From Swagger UI ${Date.now()}`;
  const key = `swagger-ui-${Date.now()}`;
  const createWithKey = async (operation) => {
    await operation.locator("tr[data-param-name='Idempotency-Key'] input").fill(key);
    const body = operation.locator("textarea.body-param__text");
    await body.fill(JSON.stringify({ title, description: null }));
  };
  const created = await tryItOut("create_task", "Tasks", createWithKey);
  expect(created.status === 201, `create answered ${created.status}: ${created.body}`);
  const task = JSON.parse(created.body);
  expect(task.title === title && task.description === null, `created ${created.body}`);
  const retried = await tryItOut("create_task", "Tasks", createWithKey);
  expect(retried.status === 201, `the retried create answered ${retried.status}: ${retried.body}`);
  expect(JSON.parse(retried.body).id === task.id, `the retry made another task: ${retried.body}`);

  const listed = await tryItOut("list_tasks", "Tasks");
  expect(listed.status === 200, `list answered ${listed.status}: ${listed.body}`);
  expect(JSON.parse(listed.body).some((t) => t.id === task.id), `the list lacks ${task.id}`);

  const toggled = await tryItOut("toggle_task", "Tasks", async (operation) => {
    await operation.locator("tr[data-param-name='id'] input").fill(String(task.id));
  });
  expect(toggled.status === 200, `toggle answered ${toggled.status}: ${toggled.body}`);
  const after = JSON.parse(toggled.body);
  expect(after.id === task.id && after.completed === true, `toggled ${toggled.body}`);

  const synced = await tryItOut("list_changes", "Tasks");
  expect(synced.status === 200, `changes answered ${synced.status}: ${synced.body}`);
  const feed = JSON.parse(synced.body);
  const upserted = feed.changes.find((c) => c.op === "upsert" && c.task.id === task.id);
  expect(upserted && upserted.task.completed === true && feed.cursor, `changes: ${synced.body}`);

  expect(elsewhere.length === 0, `requests to other hosts: ${elsewhere.join(", ")}`);
  console.log(
    `Swagger UI: authorized; create 201 and its keyed retry (the same task ${task.id}), list 200, ` +
      `toggle 200, changes 200 with the task; no other host`,
  );
} catch (error) {
  failed = true;
  mkdirSync(screenshots, { recursive: true });
  const file = join(screenshots, "swagger-ui-failure.png");
  await page.screenshot({ path: file, fullPage: true }).catch(() => {});
  console.error(`Swagger UI check failed: ${error.message}\nscreenshot: ${file}`);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
