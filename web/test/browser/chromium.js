/**
 * Headless Chromium (/usr/bin/chromium, driven by playwright-core) opening pages of sites served on 127.0.0.1 by
 * the runtime's static server. A page run waits for data-state "done" or "error" within a time limit and records
 * every request the page made, so a test can tell that nothing came from outside the site.
 */
import { chromium } from "playwright-core";

import { serveStatic } from "../../src/static_server.js";

export const CHROMIUM = process.env.RWKV_EDGE_CHROMIUM || "/usr/bin/chromium";
const QUIET = ["--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"];
// WebGPU on a machine without a GPU: Chromium's SwiftShader adapter (slow, but computes what a GPU would).
const SWIFTSHADER = ["--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader", "--use-vulkan=swiftshader"];

/** @param {{webgpu: boolean}} options */
export async function launch({ webgpu }) {
  const args = ["--no-sandbox", ...QUIET, ...(webgpu ? SWIFTSHADER : ["--disable-gpu"])];
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args });
}

/** Serve `root` on a free port of 127.0.0.1; resolves to {url, close}. @param {string} root */
export async function serve(root) {
  const { server, url } = await serveStatic(root, { host: "127.0.0.1", port: 0 });
  return { url, close: () => new Promise((resolve) => server.close(resolve)) };
}

/**
 * @typedef {object} PageRun
 * @property {string} state        data-state at the end ("done" or "error")
 * @property {string} output       #output's text
 * @property {number[] | null} tokens  the generated ids (#output's data-tokens)
 * @property {string} error        #error's text
 * @property {Record<string, string>} shown  backend, precision, tokens/s ... as the page shows them
 * @property {string[]} requests   every URL the page asked for
 * @property {string[]} console    the page's console errors
 * @property {number} ms
 * @property {import("playwright-core").Page} page
 */

/**
 * Open `url` in a new page and wait until the page says it is done or failed.
 * @param {import("playwright-core").Browser} browser @param {string} url @param {number} timeoutMs
 * @returns {Promise<PageRun>}
 */
export async function runPage(browser, url, timeoutMs) {
  const page = await browser.newPage({ viewport: { width: 1000, height: 640 } });
  /** @type {string[]} */
  const requests = [];
  /** @type {string[]} */
  const consoleErrors = [];
  page.on("request", (request) => requests.push(request.url()));
  page.on("console", (message) => message.type() === "error" && consoleErrors.push(message.text()));
  const started = Date.now();
  await page.goto(url);
  await page.waitForFunction(() => ["done", "error"].includes(document.body.dataset.state ?? ""), null, {
    timeout: timeoutMs,
  });
  const seen = await page.evaluate(() => {
    const text = (/** @type {string} */ id) => document.getElementById(id)?.textContent ?? "";
    const tokens = document.getElementById("output")?.dataset.tokens;
    return {
      state: document.body.dataset.state ?? "",
      output: text("output"),
      tokens: tokens ? JSON.parse(tokens) : null,
      error: text("error"),
      shown: {
        backend: text("backend-used"),
        precision: text("precision-used"),
        tokens: text("token-count"),
        speed: text("speed"),
      },
    };
  });
  return { ...seen, requests, console: consoleErrors, ms: Date.now() - started, page };
}
