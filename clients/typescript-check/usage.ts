// What a TypeScript frontend writes against the task API, with types generated from
// openapi.json by openapi-typescript and calls made through openapi-fetch. It is type-checked
// (tsc --strict), never run: if the document lies about a shape, this stops compiling.

import { fetchEventSource } from "@microsoft/fetch-event-source";
import createClient from "openapi-fetch";

import type { components, paths } from "./generated/api";

type Task = components["schemas"]["Task"];
type Change = components["schemas"]["Change"];
type Problem = components["schemas"]["Problem"];
type Health = components["schemas"]["Health"];

// Compile-time facts about the generated types.
type Equals<A, B> =
  (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
const descriptionIsStringOrNull: Equals<Task["description"], string | null> = true;
const problemTypeIsAboutBlank: Equals<Problem["type"], "about:blank"> = true;
const healthStatuses: Equals<
  Health["status"],
  "healthy" | "degraded" | "unhealthy" | "draining"
> = true;
const changeOps: Equals<Change["op"], "upsert" | "delete"> = true;
const priorities: Equals<Task["priority"], "low" | "medium" | "high" | "urgent"> = true;
const tagsAreStrings: Equals<Task["tags"], string[]> = true;
const dueDateIsStringOrNull: Equals<Task["due_date"], string | null> = true;
export const facts = [
  descriptionIsStringOrNull,
  problemTypeIsAboutBlank,
  healthStatuses,
  changeOps,
  priorities,
  tagsAreStrings,
  dueDateIsStringOrNull,
];

/** What the frontends that crashed on thin tasks do with every task, unguarded. */
function badge(task: Task): string {
  const label = task.priority.charAt(0).toUpperCase() + task.priority.slice(1);
  const due = task.due_date === null ? "" : ` due ${new Date(task.due_date).toLocaleDateString()}`;
  return `${label}${due} ${task.tags.map((tag) => `#${tag}`).join(" ")}`;
}

/** What a frontend shows for a failed call: the problem's detail, and each field's message. */
function explain(problem: Problem): string {
  const fields = (problem.errors ?? []).map((e) => `${e.field}: ${e.message}`);
  return [`${problem.status} ${problem.title}: ${problem.detail}`, ...fields].join("\n");
}

/** The description's length, as the issue's frontend computed it: `null` must be handled. */
function descriptionLength(task: Task): number {
  return task.description === null ? 0 : task.description.length;
}

export async function everyOperation(baseUrl: string, token: string, userId: string) {
  const api = createClient<paths>({ baseUrl, headers: { Authorization: `Bearer ${token}` } });

  const health = await api.GET("/health");
  if (health.data) {
    const jwks: "ok" | "unavailable" | undefined = health.data.jwks;
    console.log(health.data.status, health.data.database, jwks);
  }

  // List with every parameter; the total comes in a header.
  const listed = await api.GET("/api/tasks", {
    params: { query: { status: "pending", sort: "updated", order: "desc", limit: 50, offset: 0 } },
  });
  if (listed.error) {
    throw new Error(explain(listed.error));
  }
  const tasks: Task[] = listed.data;
  const total = Number(listed.response.headers.get("X-Total-Count"));
  console.log(tasks.map(descriptionLength), tasks.map(badge), total);

  // Each filter of the richer tasks, and all of them at once, with the aliases frontends use.
  const filters = [
    { search: "milk" },
    { q: "milk" },
    { priority: "high,urgent" },
    { tag: ["home", "work"] },
    { completed: false },
    { due_after: "2026-12-01", due_before: "2026-12-31T00:00:00Z" },
    { overdue: true },
    { sort: "due_date" as const },
    { sort_by: "priority" as const, sort_order: "desc" as const },
    {
      search: "milk", tag: ["home"], priority: "high", completed: false,
      due_after: "2026-12-01", sort: "due_date" as const, limit: 50,
    },
  ];
  for (const query of filters) {
    const found = await api.GET("/api/tasks", { params: { query } });
    console.log(found.data?.map(badge), found.response.headers.get("X-Total-Count"));
  }

  // The next page: the cursor from `Link: <…after=…>; rel="next"`, with the same sort and order.
  const link = listed.response.headers.get("Link");
  const after: string | undefined = link?.match(/[?&]after=([^&>]+)/)?.[1];
  if (after !== undefined) {
    const next = await api.GET("/api/tasks", {
      params: { query: { status: "pending", sort: "updated", order: "desc", limit: 50, after } },
    });
    console.log(next.data?.length);
  }

  // Create; the new task's ETag and Location are headers. The key makes a retry safe: sent
  // again after a lost answer, it gets the same answer (`Idempotent-Replayed: true`).
  const key = crypto.randomUUID();
  const created = await api.POST("/api/tasks", {
    params: { header: { "Idempotency-Key": key } },
    body: {
      title: "Buy groceries",
      description: "Milk, eggs",
      completed: false,
      priority: "high",
      due_date: new Date(Date.now() + 86_400_000).toISOString(),
      tags: ["errands", "home"],
    },
  });
  if (created.error) {
    throw new Error(explain(created.error));
  }
  const task: Task = created.data;
  const etag = created.response.headers.get("ETag") ?? "*";
  console.log(created.response.headers.get("Location"));

  // Get, asking whether it changed since the ETag we hold (304: no body).
  const fetched = await api.GET("/api/tasks/{id}", {
    params: { path: { id: task.id }, header: { "If-None-Match": etag } },
  });
  if (fetched.response.status === 304) {
    console.log("unchanged");
  } else if (fetched.data) {
    console.log(descriptionLength(fetched.data));
  }

  // Update: clear the description with null, only if nobody changed the task meanwhile.
  const updated = await api.PUT("/api/tasks/{id}", {
    params: { path: { id: task.id }, header: { "If-Match": etag } },
    body: { description: null, due_date: null, tags: ["errands"], priority: "urgent" },
  });
  if (updated.error) {
    // 412 when the task moved on; 422 with `errors` when the body breaks the schema.
    console.log(updated.response.status === 412 ? "reload first" : explain(updated.error));
  }
  const nextEtag = updated.response.headers.get("ETag") ?? "*";

  // Toggle completion, guarded the same way; a retried toggle with its key flips once.
  const toggled = await api.PATCH("/api/tasks/{id}/complete", {
    params: { path: { id: task.id }, header: { "If-Match": nextEtag, "Idempotency-Key": key + "-toggle" } },
  });
  if (toggled.response.status === 409) {
    // The first request with this key is still running: ask again after Retry-After.
    console.log(toggled.response.headers.get("Retry-After"));
  }
  const completed: boolean | undefined = toggled.data?.completed;
  console.log(completed);

  // Delete: 204, no body.
  const deleted = await api.DELETE("/api/tasks/{id}", { params: { path: { id: task.id } } });
  if (deleted.error) {
    console.log(explain(deleted.error));
  }

  await syncOnce(api, new Map());

  // The live stream through openapi-fetch too (a frontend follows it with `followChanges`
  // below): the body is a stream of events, not JSON.
  const live = await api.GET("/api/tasks/events", {
    params: { header: { "Last-Event-ID": "djEuMA" }, query: {} },
    parseAs: "stream",
  });
  if (live.response.status === 429) {
    console.log("too many open streams");
  }
  await live.response.body?.cancel();
  await api.GET("/api/{user_id}/tasks/events", { params: { path: { user_id: userId } }, parseAs: "stream" });

  // The same operations under the original frontend's paths.
  const path = { user_id: userId };
  const mine = await api.GET("/api/{user_id}/tasks", { params: { path, query: { status: "all" } } });
  const own = await api.POST("/api/{user_id}/tasks", { params: { path }, body: { title: "Call mom" } });
  if (own.data) {
    const item = { ...path, id: own.data.id };
    await api.GET("/api/{user_id}/tasks/{id}", { params: { path: item } });
    await api.PUT("/api/{user_id}/tasks/{id}", {
      params: { path: item },
      body: { title: "Call mom tonight", completed: true },
    });
    await api.PATCH("/api/{user_id}/tasks/{id}/complete", { params: { path: item } });
    await api.DELETE("/api/{user_id}/tasks/{id}", { params: { path: item } });
  }
  if (mine.error) {
    // 403 exists on this style only: the path's user id is not the token's subject.
    console.log(mine.response.status === 403 ? "not your list" : explain(mine.error));
  }
}

type Api = ReturnType<typeof createClient<paths>>;

/** The sync loop of docs/contract.md: apply upserts and deletes, keep the cursor, start over on
 * 410. Returns the cursor to resume from next time. */
export async function syncOnce(api: Api, local: Map<number, Task>, since?: string): Promise<string> {
  let cursor = since;
  for (;;) {
    const { data, error, response } = await api.GET("/api/tasks/changes", {
      params: { query: cursor === undefined ? { limit: 500 } : { since: cursor, limit: 500 } },
    });
    if (response.status === 410) {
      local.clear();
      cursor = undefined; // too old: a full sync again
      continue;
    }
    if (error) {
      throw new Error(explain(error));
    }
    for (const change of data.changes) {
      if (change.op === "upsert") {
        local.set(change.task.id, change.task);
      } else {
        local.delete(change.id);
      }
    }
    cursor = data.cursor;
    if (!data.more) {
      return cursor;
    }
  }
}

/** The live list of docs/contract.md: every change as it happens, through
 * `@microsoft/fetch-event-source` (the browser's EventSource cannot send a token). It starts
 * from a sync's cursor, so nothing falls between the first load and the stream. The stream ends
 * when the token expires: the loop reconnects with a fresh token and the last event's id, and
 * the server sends what was missed first. On `resync` (offline for longer than deletions are
 * kept) it syncs again from scratch, then follows from there. */
export async function followChanges(
  baseUrl: string,
  freshToken: () => Promise<string>,
  local: Map<number, Task>,
  fullSync: () => Promise<string>, // e.g. () => syncOnce(api, local): returns its cursor
  signal: AbortSignal,
): Promise<void> {
  let cursor = await fullSync();
  while (!signal.aborted) {
    let tooOld = false;
    await fetchEventSource(`${baseUrl}/api/tasks/events`, {
      headers: { Authorization: `Bearer ${await freshToken()}`, "Last-Event-ID": cursor },
      signal,
      openWhenHidden: true,
      async onopen(response) {
        if (!response.ok) {
          throw new Error(`the event stream answered ${response.status}`); // 401, 429: stop
        }
      },
      onmessage(message) {
        if (message.event === "resync") {
          tooOld = true;
          return;
        }
        const change: Change = JSON.parse(message.data);
        if (change.op === "upsert") {
          local.set(change.task.id, change.task);
        } else {
          local.delete(change.id);
        }
        cursor = message.id;
      },
      onerror(error) {
        throw error; // no blind retries with a token that may have expired
      },
    });
    if (tooOld) {
      local.clear();
      cursor = await fullSync();
    }
  }
}
