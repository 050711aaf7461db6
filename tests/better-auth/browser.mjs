// A same-origin frontend, used in headless Chromium (Debian's, driven by playwright-core) as a
// person's browser would, for tests/tests/better_auth.rs:
//
// 1. On the frontend's origin (server.mjs, which proxies `/api/*` to the task API), sign up with
//    Better Auth, then create, toggle and list tasks with plain `fetch` calls: no token code, no
//    Authorization header, only the cookies Better Auth set.
// 2. On another origin of the same host (so the browser does send those cookies), forge writes
//    as an attacker's page would: a form posted to the frontend's proxy, and `fetch` calls with
//    credentials to the proxy and to the task API directly.
// 3. Back on the frontend, list again.
//
//   node browser.mjs FRONTEND_URL ELSEWHERE_URL TASK_API_URL
//
// Prints one JSON line with what each step saw; the Rust test judges it.

import { chromium } from "playwright-core";

import { chromiumOptions } from "../chromium.mjs";

const [frontend, elsewhere, taskApi] = process.argv.slice(2);
if (!frontend || !elsewhere || !taskApi) {
  console.error("usage: node browser.mjs FRONTEND_URL ELSEWHERE_URL TASK_API_URL");
  process.exit(2);
}

const browser = await chromium.launch(chromiumOptions);
try {
  const context = await browser.newContext();
  const authorizationHeaders = [];
  context.on("request", (request) => {
    if (request.headers().authorization) authorizationHeaders.push(request.url());
  });

  const app = await context.newPage();
  await app.goto(`${frontend}/`);
  const signedIn = await app.evaluate(async () => {
    const json = (method, body) => ({
      method,
      headers: { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const email = `${crypto.randomUUID()}@example.com`;
    const signUp = await fetch(
      "/api/auth/sign-up/email",
      json("POST", { email, password: "correct horse battery", name: "Browser" }),
    );
    const user = (await signUp.json()).user;
    const created = [];
    for (const title of ["from the browser", "with cookies only"]) {
      const response = await fetch("/api/tasks", json("POST", { title }));
      created.push({ status: response.status, task: await response.json() });
    }
    const first = created[0].task;
    const toggle = await fetch(`/api/${user.id}/tasks/${first.id}/complete`, { method: "PATCH" });
    const listed = await fetch(`/api/${user.id}/tasks`);
    return {
      userId: user.id,
      cookies: document.cookie,
      created,
      toggleStatus: toggle.status,
      listStatus: listed.status,
      listed: await listed.json(),
    };
  });

  const attacker = await context.newPage();
  await attacker.goto(`${elsewhere}/`);
  // A form that posts JSON-looking text to the frontend's proxy: no preflight, cookies sent.
  const formAnswer = attacker.waitForResponse((response) => response.url() === `${frontend}/api/tasks`);
  await attacker.evaluate((action) => {
    const form = document.createElement("form");
    form.method = "POST";
    form.action = action;
    form.enctype = "text/plain";
    const input = document.createElement("input");
    input.name = '{"title": "forged by a form", "x": "';
    input.value = '"}';
    form.append(input);
    document.body.append(form);
    form.submit();
  }, `${frontend}/api/tasks`);
  const form = await formAnswer;
  const formStatus = form.status();
  const formBody = await form.text();

  await attacker.goto(`${elsewhere}/`);
  const forgedFetches = [];
  for (const target of [`${frontend}/api/tasks`, `${taskApi}/api/tasks`]) {
    const answer = attacker.waitForResponse((response) => response.url() === target);
    const outcome = await attacker.evaluate(async (url) => {
      try {
        const response = await fetch(url, {
          method: "POST",
          mode: "no-cors",
          credentials: "include",
          headers: { "content-type": "text/plain" },
          body: JSON.stringify({ title: "forged by fetch" }),
        });
        return response.type;
      } catch (error) {
        return `failed: ${error}`;
      }
    }, target);
    forgedFetches.push({ target, outcome, status: (await answer).status() });
  }

  const after = await app.evaluate(async (userId) => (await fetch(`/api/${userId}/tasks`)).json(), signedIn.userId);
  console.log(
    JSON.stringify({ signedIn, formStatus, formBody, forgedFetches, after, authorizationHeaders }),
  );
} finally {
  await browser.close();
}
