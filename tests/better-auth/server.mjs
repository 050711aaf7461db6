// A minimal Better Auth server with its JWT plugin, as a frontend would run it, for
// tests/tests/better_auth.rs: email/password sign-up, the memory adapter (no native modules),
// and the plugin's key pair of the algorithm given as the first argument (EdDSA by default).
//
// `COOKIE_CACHE=jwt` (or `compact`) turns the session cookie cache on in that strategy; Better
// Auth itself reads `BETTER_AUTH_SECRETS` (a rotation) from the environment.
// `CLOCK_SKEW_SECS=-7200` runs Better Auth's clock two hours behind, so that what it signs is
// already expired (for the tests of expiry, with Better Auth's own cookies).
//
// `GET /test/sign?sub=…&alg=…` signs a token for `sub` with the JWT plugin's own latest key (a
// test-only route, beside Better Auth's): with `alg=Ed25519`, through `jose`, RFC 9864's name,
// which Better Auth does not emit yet; with any other `alg`, the same key's Ed25519 signature
// under that header, to prove the service pins the key to its algorithm.
//
// As a same-origin frontend (Next.js `rewrites`) does, it proxies every other `/api/*` request,
// headers and cookies untouched, to the task API named by a line `{"proxy": "http://…"}` on its
// standard input, and serves a blank page at `/` for a browser to start from. A second listener,
// another origin on the same host, serves the same blank page: the "other site" of the
// cross-site request forgery tests.
//
// It listens on 127.0.0.1 on free ports and prints one JSON line,
// {"url": "http://…", "elsewhere": "http://…"}, once it serves. Better Auth needs its base URL up
// front, so the port is bound before the auth instance is built. It exits when its standard
// input closes (the test process went away).

import { createPrivateKey, sign } from "node:crypto";
import { createServer, request as forward } from "node:http";
import { createInterface } from "node:readline";

const skewMs = Number(process.env.CLOCK_SKEW_SECS ?? 0) * 1000;
if (skewMs) {
  const RealDate = Date;
  globalThis.Date = class extends RealDate {
    constructor(...args) {
      if (args.length === 0) super(RealDate.now() + skewMs);
      else super(...args);
    }
    static now() {
      return RealDate.now() + skewMs;
    }
  };
}

const { betterAuth } = await import("better-auth");
const { memoryAdapter } = await import("better-auth/adapters/memory");
const { toNodeHandler } = await import("better-auth/node");
const { jwt } = await import("better-auth/plugins");
const { symmetricDecrypt } = await import("better-auth/crypto");
const { SignJWT, importJWK } = await import("jose");

const SECRET = "better-auth-fixture-secret-not-used-by-the-task-api";

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

const tables = { user: [], session: [], account: [], verification: [], jwks: [] };

/// The plugin's latest key pair, as it stored it (the private key encrypted with the secret).
async function pluginKey() {
  const key = tables.jwks.at(-1);
  if (!key) throw new Error("no key yet: take a token from /api/auth/token first");
  const privateJwk = JSON.parse(await symmetricDecrypt({ key: SECRET, data: JSON.parse(key.privateKey) }));
  return { kid: key.id, privateJwk };
}

async function signTest(baseURL, url, res) {
  const alg = url.searchParams.get("alg");
  const { kid, privateJwk } = await pluginKey();
  const now = Math.floor(Date.now() / 1000);
  const claims = { sub: url.searchParams.get("sub"), iss: baseURL, aud: baseURL, iat: now, exp: now + 900 };
  let token;
  if (alg === "Ed25519") {
    const key = await importJWK(privateJwk, "Ed25519");
    token = await new SignJWT(claims).setProtectedHeader({ alg, kid, typ: "JWT" }).sign(key);
  } else {
    const encode = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
    const signingInput = `${encode({ alg, kid, typ: "JWT" })}.${encode(claims)}`;
    const key = createPrivateKey({ key: privateJwk, format: "jwk" });
    token = `${signingInput}.${sign(null, Buffer.from(signingInput), key).toString("base64url")}`;
  }
  res.setHeader("content-type", "application/json");
  res.end(JSON.stringify({ token }));
}

let proxyTarget;

/// The request, as it came, to the task API; its answer, as it came, back.
function proxy(req, res) {
  if (!proxyTarget) {
    res.statusCode = 502;
    return res.end("no task API to proxy to yet");
  }
  const target = new URL(req.url, proxyTarget);
  const upstream = forward(target, { method: req.method, headers: { ...req.headers, host: target.host } }, (answer) => {
    res.writeHead(answer.statusCode, answer.headers);
    answer.pipe(res);
  });
  upstream.on("error", (err) => {
    res.statusCode = 502;
    res.end(String(err));
  });
  req.pipe(upstream);
}

const BLANK_PAGE = "<!doctype html><html><head><title>tasks</title></head><body></body></html>";

function blankPage(res) {
  res.setHeader("content-type", "text/html");
  res.end(BLANK_PAGE);
}

const elsewhere = createServer((req, res) => blankPage(res));
await new Promise((resolve) => elsewhere.listen(0, "127.0.0.1", resolve));

const server = createServer();
server.listen(0, "127.0.0.1", () => {
  const baseURL = `http://127.0.0.1:${server.address().port}`;
  const auth = betterAuth({
    baseURL,
    secret: SECRET,
    database: memoryAdapter(tables),
    emailAndPassword: { enabled: true },
    session: process.env.COOKIE_CACHE
      ? { cookieCache: { enabled: true, strategy: process.env.COOKIE_CACHE, maxAge: 300 } }
      : undefined,
    plugins: [jwt({ jwks: { keyPairConfig } })],
    telemetry: { enabled: false },
  });
  const handler = toNodeHandler(auth);
  server.on("request", (req, res) => {
    const url = new URL(req.url, baseURL);
    if (url.pathname === "/") return blankPage(res);
    if (url.pathname.startsWith("/api/") && !url.pathname.startsWith("/api/auth/")) {
      return proxy(req, res);
    }
    if (url.pathname !== "/test/sign") return handler(req, res);
    signTest(baseURL, url, res).catch((err) => {
      res.statusCode = 500;
      res.end(String(err));
    });
  });
  const elsewhereURL = `http://127.0.0.1:${elsewhere.address().port}`;
  console.log(JSON.stringify({ url: baseURL, elsewhere: elsewhereURL }));
});

const control = createInterface({ input: process.stdin });
control.on("line", (line) => {
  proxyTarget = JSON.parse(line).proxy;
  console.log(JSON.stringify({ proxying: proxyTarget }));
});
control.on("close", () => process.exit(0));
