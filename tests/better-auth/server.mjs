// A minimal Better Auth server with its JWT plugin, as a frontend would run it, for
// tests/tests/better_auth.rs: email/password sign-up, the memory adapter (no native modules),
// and the plugin's key pair of the algorithm given as the first argument (EdDSA by default).
//
// `COOKIE_CACHE=jwt` (or `compact`) turns the session cookie cache on in that strategy; Better
// Auth itself reads `BETTER_AUTH_SECRETS` (a rotation) from the environment.
//
// It listens on 127.0.0.1 on a free port and prints one JSON line, {"url": "http://…"}, once it
// serves. Better Auth needs its base URL up front, so the port is bound before the auth
// instance is built. It exits when its standard input closes (the test process went away).

import { createServer } from "node:http";

import { betterAuth } from "better-auth";
import { memoryAdapter } from "better-auth/adapters/memory";
import { toNodeHandler } from "better-auth/node";
import { jwt } from "better-auth/plugins";

const KEY_PAIRS = {
  EdDSA: { alg: "EdDSA", crv: "Ed25519" },
  ES256: { alg: "ES256" },
  RS256: { alg: "RS256", modulusLength: 2048 },
};

const algorithm = process.argv[2] ?? "EdDSA";
const keyPairConfig = KEY_PAIRS[algorithm];
if (!keyPairConfig) {
  console.error(`unknown algorithm ${algorithm}; one of ${Object.keys(KEY_PAIRS).join(", ")}`);
  process.exit(2);
}

const server = createServer();
server.listen(0, "127.0.0.1", () => {
  const baseURL = `http://127.0.0.1:${server.address().port}`;
  const auth = betterAuth({
    baseURL,
    secret: "better-auth-fixture-secret-not-used-by-the-task-api",
    database: memoryAdapter({ user: [], session: [], account: [], verification: [], jwks: [] }),
    emailAndPassword: { enabled: true },
    session: process.env.COOKIE_CACHE
      ? { cookieCache: { enabled: true, strategy: process.env.COOKIE_CACHE, maxAge: 300 } }
      : undefined,
    plugins: [jwt({ jwks: { keyPairConfig } })],
    telemetry: { enabled: false },
  });
  server.on("request", toNodeHandler(auth));
  console.log(JSON.stringify({ url: baseURL }));
});

process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
