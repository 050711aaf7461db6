// How the browser checks launch Debian's Chromium (`tests/contract/swagger-ui.mjs`,
// `tests/better-auth/browser.mjs`): headless, from CHROMIUM or /usr/bin/chromium, with the flags
// that keep it from calling home on a machine without internet.
export const chromiumOptions = {
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
};
