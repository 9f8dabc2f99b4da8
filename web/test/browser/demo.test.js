/**
 * The demo site (rwkv-export web) in headless Chromium, against what tests/test_web_browser.py prepared:
 *   RWKV_EDGE_WEB_SITES      a folder of sites: good/ (built), missing-graph/, bad-format/
 *   RWKV_EDGE_WEB_EXPECT     expect.json: the Python runtime's greedy tokens per run, the default precision
 *   RWKV_EDGE_WEB_ARTIFACTS  where the screenshots go (one per backend)
 * Without them (a plain `npm test`) these tests are skipped: pytest runs them.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";

import { launch, runPage, serve } from "./chromium.js";

const SITES = process.env.RWKV_EDGE_WEB_SITES ?? "";
const EXPECT = process.env.RWKV_EDGE_WEB_EXPECT ?? "";
const ARTIFACTS = process.env.RWKV_EDGE_WEB_ARTIFACTS ?? "";
const SKIP = SITES && EXPECT && ARTIFACTS ? false : "run through pytest tests/test_web_browser.py";

const GENERATE_MS = { wasm: 60_000, webgpu: 240_000 }; // SwiftShader compiles every kernel on its first run
const ERROR_MS = 20_000; // a page that cannot run says so quickly

/**
 * @typedef {{backend: "wasm" | "webgpu", prompt: string, max_tokens: number, precision: string, tokens: number[],
 *   text: string}} GreedyRun
 * @type {{greedy: GreedyRun[], default_precision: Record<string, string>, graphs: string[]}}
 */
const expect = SKIP ? { greedy: [], default_precision: {}, graphs: [] } : JSON.parse(fs.readFileSync(EXPECT, "utf8"));

/** @param {Record<string, string | number>} params */
function query(params) {
  return "?" + new URLSearchParams(Object.entries(params).map(([k, v]) => [k, String(v)])).toString();
}

describe("demo site in headless Chromium", { skip: SKIP }, () => {
  /** @type {{url: string, close: () => Promise<unknown>}} */
  let server;
  /** @type {import("playwright-core").Browser} */
  let browser;

  before(async () => {
    server = await serve(SITES);
    browser = await launch({ webgpu: true });
  });
  after(async () => {
    await browser?.close();
    await server?.close();
  });

  /** Every request went to the site's own server. @param {import("./chromium.js").PageRun} run */
  function assertOnlySite(run) {
    const outside = run.requests.filter((u) => !u.startsWith(server.url) && !u.startsWith("data:"));
    assert.deepEqual(outside, [], "the page fetched from outside the site");
  }

  for (const run of expect.greedy) {
    test(`${run.backend}: greedy ${run.max_tokens} tokens equal the Python runtime's`, async (t) => {
      const url = server.url + "good/index.html" + query({
        prompt: run.prompt,
        max_tokens: run.max_tokens,
        temperature: 0,
        precision: run.precision,
        backend: run.backend,
      });
      const page = await runPage(browser, url, GENERATE_MS[run.backend]);
      await page.page.screenshot({ path: path.join(ARTIFACTS, `web-demo-${run.backend}.png`), fullPage: true });
      t.diagnostic(`${page.ms} ms, ${page.shown.speed} tokens/s`);
      assert.equal(page.state, "done", `page error: ${page.error}`);
      assert.deepEqual(page.tokens, run.tokens);
      assert.equal(page.output, run.text);
      assert.equal(page.shown.backend, run.backend);
      assert.equal(page.shown.precision, run.precision);
      assert.equal(page.shown.tokens, String(run.tokens.length));
      assert.match(page.shown.speed, /^\d+(\.\d+)?$/);
      assertOnlySite(page);
      await page.page.close();
    });
  }

  for (const [backend, precision] of Object.entries(expect.default_precision)) {
    test(`${backend}: without precision in the URL the page runs ${precision}`, async () => {
      const url = server.url + "good/index.html" + query({ prompt: "Hi", max_tokens: 2, backend });
      const page = await runPage(browser, url, GENERATE_MS.wasm);
      assert.equal(page.state, "done", `page error: ${page.error}`);
      assert.equal(page.shown.precision, precision);
      assert.equal(page.tokens?.length, 2);
      await page.page.close();
    });
  }

  /** @param {string} site @param {Record<string, string | number>} params @param {RegExp} message */
  async function assertPageError(site, params, message, target = browser) {
    const page = await runPage(target, server.url + site + "/index.html" + query(params), ERROR_MS);
    assert.equal(page.state, "error");
    assert.match(page.error, message);
    assert.doesNotMatch(page.error, /\n/, "one line");
    assertOnlySite(page);
    await page.page.close();
  }

  test("a missing graph file: an error on the page naming it", async () => {
    const names = new RegExp(expect.graphs.map((g) => g.replace(".", "\\.")).join("|"));
    await assertPageError("missing-graph", { prompt: "Hi", max_tokens: 2, precision: "fp32" }, names);
  });

  test("an unknown manifest format: an error on the page naming it", async () => {
    await assertPageError("bad-format", { prompt: "Hi", max_tokens: 2 }, /rwkv-edge\/99/);
  });

  test("a bad URL parameter: an error on the page naming it", async () => {
    await assertPageError("good", { prompt: "Hi", max_tokens: "many" }, /max_tokens=many/);
  });

  test("backend=webgpu in a browser without WebGPU: an error on the page, not a hang", async () => {
    const plain = await launch({ webgpu: false });
    try {
      await assertPageError("good", { prompt: "Hi", max_tokens: 2, backend: "webgpu" }, /WebGPU/, plain);
    } finally {
      await plain.close();
    }
  });
});
