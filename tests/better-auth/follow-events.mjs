// A frontend's live list, as Next.js apps write it: `@microsoft/fetch-event-source` (the
// browser's EventSource cannot send an Authorization header) following the task API's event
// stream. Run by tests/tests/better_auth.rs: prints `{"open":200}` once the stream is open,
// then each event as a JSON line, and exits after `count` of them.
//
//   node follow-events.mjs <base URL> <token> <count>
import { fetchEventSource } from "@microsoft/fetch-event-source";

// The package is written for browsers: it schedules retries with `window.setTimeout` (Node
// has the same functions on its global object) and, when it stops, forgets its visibility
// listener on `document` (Node has no page to hide).
globalThis.window ??= globalThis;
globalThis.document ??= { hidden: false, addEventListener() {}, removeEventListener() {} };

const [baseUrl, token, count] = process.argv.slice(2);
const stop = new AbortController();
let seen = 0;

await fetchEventSource(`${baseUrl}/api/tasks/events`, {
  headers: { Authorization: `Bearer ${token}` },
  fetch,
  openWhenHidden: true,
  signal: stop.signal,
  async onopen(response) {
    if (!response.ok) {
      throw new Error(`the stream answered ${response.status}`);
    }
    console.log(JSON.stringify({ open: response.status }));
  },
  onmessage(message) {
    console.log(JSON.stringify({ id: message.id, event: message.event, data: JSON.parse(message.data) }));
    seen += 1;
    if (seen >= Number(count)) {
      stop.abort();
    }
  },
  onerror(error) {
    throw error; // no silent retries in a test
  },
});
