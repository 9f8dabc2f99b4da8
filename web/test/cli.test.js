import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import test from "node:test";
import { fileURLToPath } from "node:url";

import { generate, loadModel } from "../src/index.js";
import { writeFakeExport } from "../testing/fake_export.js";
import { tempDir } from "../testing/tmpdir.js";

const BIN = fileURLToPath(new URL("../bin/rwkv-edge-web.js", import.meta.url));

/** @param {string[]} args */
const cli = (args) => spawnSync(process.execPath, [BIN, ...args], { encoding: "utf-8" });

test("generate prints the prompt and the model's greedy continuation", async (t) => {
  const dir = tempDir(t);
  writeFakeExport(dir, { vocab: 256, nEmbd: 8 });
  const model = await loadModel(dir);
  const want = generate(model, await model.loadTokenizer(), "a\nb", { maxTokens: 12, temperature: 0 });
  for await (const _ of want);
  for (const backend of ["node", "wasm"]) {
    const run = cli([
      "generate",
      dir,
      "--prompt",
      "a\\nb",
      "--max-tokens",
      "12",
      "--temperature",
      "0",
      "--backend",
      backend,
      "--threads",
      "1",
    ]);
    assert.equal(run.stderr, "");
    assert.equal(run.status, 0);
    assert.equal(run.stdout, "a\nb" + want.text + "\n");
  }
});

test("user errors are one line on stderr and exit code 2", (t) => {
  const dir = tempDir(t);
  writeFakeExport(dir);
  const cases = [
    [["generate", path.join(dir, "nope")], `error: ${path.join(dir, "nope")}: no such directory`],
    [["generate", dir, "--precision", "int8"], /^error: no step graph of precision int8 in this export/],
    [["generate", dir, "--max-tokens", "x"], 'error: --max-tokens expects a whole number, found "x"'],
    [
      ["generate", dir, "--backend", "webgpu"],
      'error: --backend must be node or wasm here (WebGPU runs in a browser), found "webgpu"',
    ],
    [["generate", dir, "--top-p", "3"], "error: topP must be in [0, 1], found 3"],
    [["generate", dir, "--nope"], /^error: Unknown option '--nope'/],
    [["generate"], "error: generate takes one export directory"],
    [["frobnicate"], 'error: unknown command "frobnicate"; expected generate or serve'],
    [["serve", path.join(dir, "nope")], `error: ${path.join(dir, "nope")}: no such directory (expected a built site)`],
  ];
  for (const [args, message] of cases) {
    const run = cli(/** @type {string[]} */ (args));
    assert.equal(run.status, 2, `${args.join(" ")}: ${run.stderr}`);
    assert.equal(run.stderr.split("\n").length, 2, run.stderr);
    if (typeof message === "string") assert.equal(run.stderr.trimEnd(), message);
    else assert.match(run.stderr, message);
  }
});

test("serve: a cross-origin isolated static site with the right MIME types", async (t) => {
  const site = tempDir(t);
  mkdirSync(path.join(site, "model"));
  writeFileSync(path.join(site, "index.html"), "<!doctype html><title>x</title>");
  writeFileSync(path.join(site, "ort.wasm"), Uint8Array.of(0, 97, 115, 109));
  writeFileSync(path.join(site, "page.mjs"), "export {};");
  writeFileSync(path.join(site, "model", "rwkv.json"), "{}");
  const server = spawn(process.execPath, [BIN, "serve", site, "--port", "0"], { stdio: ["ignore", "pipe", "pipe"] });
  t.after(() => server.kill());
  const url = await new Promise((resolve, reject) => {
    let out = "";
    server.stdout.on("data", (chunk) => {
      out += chunk;
      const found = /at (http:\/\/127\.0\.0\.1:\d+\/)/.exec(out);
      if (found) resolve(found[1]);
    });
    server.on("exit", (code) => reject(new Error(`serve exited with ${code}`)));
  });
  const cases = [
    ["", "text/html; charset=utf-8"],
    ["ort.wasm", "application/wasm"],
    ["page.mjs", "text/javascript; charset=utf-8"],
    ["model/rwkv.json", "application/json; charset=utf-8"],
  ];
  for (const [name, type] of cases) {
    const response = await fetch(url + name);
    assert.equal(response.status, 200, name);
    assert.equal(response.headers.get("content-type"), type);
    assert.equal(response.headers.get("cross-origin-opener-policy"), "same-origin");
    assert.equal(response.headers.get("cross-origin-embedder-policy"), "require-corp");
    await response.arrayBuffer();
  }
  const head = await fetch(url + "ort.wasm", { method: "HEAD" });
  assert.equal(head.headers.get("content-length"), "4");
  assert.equal((await fetch(url + "missing.js")).status, 404);
  assert.equal((await fetch(url + "..%2f..%2fetc%2fpasswd")).status, 403);
});
