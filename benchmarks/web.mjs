// The JS runtime (web/src) against the Python runtime, in one run, on the same exports: decode ms/token and prefill
// tokens/s at 512 tokens on wasm with 1 and 2 threads and on onnxruntime-node, per precision, and the quality of the
// web's precision measured on wasm itself. How to read it: docs/performance.md ("In the browser and in Node").
//
//   node benchmarks/web.mjs [--work DIR] [--rounds 10] [--python PYTHON] [--quality-tokens 40000] [--out DIR]
//   node benchmarks/web.mjs --from OUT/web.json     # web.md again from a run's JSON, measuring nothing
//
// Needs `cd web && ONNXRUNTIME_NODE_INSTALL=skip npm ci` and the project's Python (rwkv-export) as --python or
// $RWKV_EDGE_PYTHON (default: python3). benchmarks/web_python.py builds the exports under --work (kept: the
// 0.1B export takes minutes) and is the Python runtime's worker; benchmarks/web_worker.mjs is the JS runtime's.
//
// Decode runs in alternating blocks (every model of one precision, and the Python int8 reference, in turn each
// round, the order reversed every other round), so that a change in the shared machine's speed moves every row
// alike: the ratios are medians of per-round ratios. Writes OUT/web.json and OUT/web.md.
import { execFileSync, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as readline from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.dirname(HERE);
const EVAL_TEXT = path.join(ROOT, "quant", "eval_text.txt"); // what `rwkv-export eval` reads by default
const SETTLE_MS = 100; // between blocks: the workers of the side that ran last keep spinning (docs/performance.md)
const WEB_PRECISION = "int8-dynamic (head float)"; // the web's choice; the reasons are in web.md and the docs
// Bounds of the project's int8 target (docs/quantization.md): perplexity within +1% of fp32, top-1 >= 97%.
const QUALITY_TARGET = { maxPerplexityChange: 0.01, minTop1Agreement: 0.97 };

const { values: args } = parseArgs({
  options: {
    work: {
      type: "string",
      default: path.join(os.tmpdir(), "rwkv-edge-web-bench"),
    },
    rounds: { type: "string", default: "10" },
    block: { type: "string", default: "8" },
    prefill: { type: "string", default: "512" },
    python: {
      type: "string",
      default: process.env.RWKV_EDGE_PYTHON ?? "python3",
    },
    "quality-tokens": { type: "string", default: "40000" },
    out: { type: "string", default: path.join(HERE, "results") },
    from: { type: "string" }, // a web.json: write its web.md again, measuring nothing
  },
});
let rounds = Number(args.rounds);
let block = Number(args.block);
let prefillTokens = Number(args.prefill);

const median = (/** @type {number[]} */ a) => {
  const s = [...a].sort((x, y) => x - y);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const log = (/** @type {string} */ line) => process.stderr.write(line + "\n");
const uptime = () => execFileSync("uptime", { encoding: "utf8" }).trim();

/**
 * A worker process: {label, runtime: "js" | "py", backend, threads, precision, dir}; ask() sends one request.
 * @param {Record<string, any>} w
 */
async function startWorker(w) {
  const config = JSON.stringify({
    dir: w.dir,
    backend: w.backend,
    precision: w.precision,
    threads: w.threads,
  });
  const [exe, argv] =
    w.runtime === "py"
      ? [args.python, [path.join(HERE, "web_python.py"), "worker", config]]
      : [process.execPath, [path.join(HERE, "web_worker.mjs"), config]];
  const child = spawn(exe, argv, { stdio: ["pipe", "pipe", "inherit"] });
  /** @type {((value: any) => void)[]} */
  const waiting = [];
  readline
    .createInterface({ input: child.stdout })
    .on("line", (l) => waiting.shift()?.(JSON.parse(l)));
  const failed = new Promise((_, reject) =>
    child.on(
      "exit",
      (code) =>
        code && reject(new Error(`worker ${w.label} exited with code ${code}`)),
    ),
  );
  const ask = (/** @type {object | null} */ cmd) =>
    Promise.race([
      new Promise((resolve) => {
        waiting.push(resolve);
        if (cmd) child.stdin.write(JSON.stringify(cmd) + "\n");
      }),
      failed,
    ]);
  const ready = await ask(null);
  log(`  opened ${w.label} in ${(ready.loadMs / 1e3).toFixed(1)} s`);
  return {
    ...w,
    ask,
    loadMs: ready.loadMs,
    ort: ready.ort,
    stop: () => child.stdin.end(),
  };
}

/** Decode blocks in alternating order; per worker the block medians (ms/token). */
async function alternate(/** @type {any[]} */ workers) {
  /** @type {Map<string, number[]>} */
  const blocks = new Map(workers.map((w) => [w.label, []]));
  for (let r = 0; r < rounds; r++) {
    for (const w of r % 2 ? [...workers].reverse() : workers) {
      await sleep(SETTLE_MS);
      const { times } = await w.ask({ cmd: "decode", n: block, warm: 4 });
      blocks.get(w.label)?.push(median(times));
    }
  }
  return blocks;
}

/** Fastest of 2 prompts of `prefillTokens` through feed(), in tokens/s. */
async function prefill(/** @type {any} */ w) {
  const ms = [];
  for (let i = 0; i < 2; i++) {
    await sleep(SETTLE_MS);
    ms.push((await w.ask({ cmd: "prefill", tokens: prefillTokens })).ms);
  }
  return prefillTokens / (Math.min(...ms) / 1e3);
}

const ratio = (/** @type {number[]} */ a, /** @type {number[]} */ b) =>
  median(a.map((x, i) => x / b[i]));

/** @param {Record<string, string>} exports */
async function speed(exports) {
  const groups = [
    { name: "fp32", dir: exports.main, precision: "fp32" },
    { name: "int8", dir: exports.main, precision: "int8" },
    { name: "int8-dynamic", dir: exports.main, precision: "int8-dynamic" },
    { name: WEB_PRECISION, dir: exports.web, precision: "int8-dynamic" },
  ];
  const refLabel = "python int8, 2 threads";
  const ref = await startWorker({
    label: refLabel,
    runtime: "py",
    threads: 2,
    precision: "int8",
    dir: exports.main,
  });
  const rows = [];
  for (const g of groups) {
    log(
      `${g.name}: decode in ${rounds} alternating rounds of ${block} tokens, then prefill ${prefillTokens}`,
    );
    const kinds = [
      { runtime: "py", backend: "python", threads: 2 },
      { runtime: "py", backend: "python", threads: 1 },
      { runtime: "js", backend: "node", threads: 2 },
      { runtime: "js", backend: "wasm", threads: 2 },
      { runtime: "js", backend: "wasm", threads: 1 },
    ];
    const workers = [];
    for (const k of kinds) {
      const label = `${k.backend} ${g.name}, ${k.threads}t`;
      workers.push(
        await startWorker({ ...k, label, precision: g.precision, dir: g.dir }),
      );
    }
    const blocks = await alternate([ref, ...workers]);
    const refBlocks = /** @type {number[]} */ (blocks.get(refLabel));
    for (const w of workers) {
      const mine = /** @type {number[]} */ (blocks.get(w.label));
      const python = workers.find(
        (p) => p.runtime === "py" && p.threads === w.threads,
      );
      const decode = median(mine);
      const tokS = await prefill(w);
      rows.push({
        precision: g.name,
        runtime: w.runtime === "py" ? "python" : "js",
        backend: w.backend,
        threads: w.threads,
        decode_ms: +decode.toFixed(2),
        vs_python_same: +ratio(
          mine,
          /** @type {number[]} */ (blocks.get(python.label)),
        ).toFixed(3),
        vs_python_int8_2t: +ratio(mine, refBlocks).toFixed(3),
        prefill_tok_s: +tokS.toFixed(1),
        prefill_vs_stepping: +((tokS * decode) / 1e3).toFixed(1),
        load_s: +(w.loadMs / 1e3).toFixed(2),
        blocks_ms: mine.map((x) => +x.toFixed(1)),
      });
    }
    for (const w of workers) w.stop();
    await sleep(500);
  }
  ref.stop();
  return { rows, pythonOrt: ref.ort };
}

/** Perplexity and top-1 agreement of the web's precision on wasm (and Python, beside it), on the tiny model. */
async function quality(/** @type {string} */ tiny) {
  const max = Number(args["quality-tokens"]);
  const scored = {};
  for (const [runtime, backend] of [
    ["js", "wasm"],
    ["py", "python"],
  ]) {
    for (const precision of ["fp32", "int8-dynamic"]) {
      const label = `${backend} ${precision}`;
      const w = await startWorker({
        label,
        runtime,
        backend,
        threads: 1,
        precision,
        dir: tiny,
      });
      log(`  scoring the eval text through ${label}`);
      scored[label] = await w.ask({ cmd: "score", text: EVAL_TEXT, max });
      w.stop();
    }
  }
  const perplexity = (/** @type {number[]} */ nll) =>
    Math.exp(nll.reduce((a, b) => a + b, 0) / nll.length);
  const agreement = (/** @type {number[]} */ a, /** @type {number[]} */ b) =>
    a.filter((x, i) => x === b[i]).length / a.length;
  const results = [];
  for (const backend of ["wasm", "python"]) {
    const ref = scored[`${backend} fp32`];
    const got = scored[`${backend} int8-dynamic`];
    const change = perplexity(got.nll) / perplexity(ref.nll) - 1;
    const top1 = agreement(got.argmax, ref.argmax);
    results.push({
      backend,
      tokens: ref.tokens,
      fp32_perplexity: +perplexity(ref.nll).toFixed(4),
      perplexity: +perplexity(got.nll).toFixed(4),
      perplexity_change: +change.toFixed(6),
      top1_agreement: +top1.toFixed(4),
      within_target:
        change <= QUALITY_TARGET.maxPerplexityChange &&
        top1 >= QUALITY_TARGET.minTop1Agreement,
    });
  }
  const crossFp32 = agreement(
    scored["wasm fp32"].argmax,
    scored["python fp32"].argmax,
  );
  return {
    precision: WEB_PRECISION,
    model: "embedded default model (RWKV-7 L3 C96, bytes)",
    results,
    crossFp32,
  };
}

/** The web's precision and why, and the targets, from this run's rows. */
function summary(/** @type {any} */ report) {
  const row = (
    /** @type {string} */ precision,
    /** @type {string} */ backend,
    /** @type {number} */ threads,
  ) =>
    report.speed.find(
      (r) =>
        r.precision === precision &&
        r.backend === backend &&
        r.threads === threads,
    );
  const precisions = [...new Set(report.speed.map((r) => r.precision))];
  const wasm2 = precisions
    .map((p) => `${p} ${row(p, "wasm", 2).vs_python_int8_2t}x`)
    .join(", ");
  const chosen = [row(WEB_PRECISION, "wasm", 2), row(WEB_PRECISION, "wasm", 1)];
  const node = report.speed.filter((r) => r.backend === "node");
  const worstNode = Math.max(...node.map((r) => r.vs_python_same));
  const onWasm = report.quality.results.find((r) => r.backend === "wasm");
  const met = (/** @type {boolean} */ ok) => (ok ? "met" : "missed");
  const fastest = precisions.reduce((a, b) =>
    row(b, "wasm", 2).vs_python_int8_2t < row(a, "wasm", 2).vs_python_int8_2t
      ? b
      : a,
  );
  const rank =
    fastest === WEB_PRECISION
      ? "the fastest"
      : `not the fastest (${fastest} is)`;
  return [
    `Web precision: ${WEB_PRECISION}, ${rank} on wasm in this run (decode with 2 threads, x Python int8 with 2 ` +
      `threads: ${wasm2}), and within the quality target on wasm (perplexity ` +
      `${(onWasm.perplexity_change * 100).toFixed(3)}%, top-1 agreement ${(onWasm.top1_agreement * 100).toFixed(2)}%).`,
    "",
    "Targets:",
    `- its wasm decode (2 threads) within 2.5x of Python int8 (2 threads): ${chosen[0].vs_python_int8_2t}x, ` +
      met(chosen[0].vs_python_int8_2t <= 2.5),
    `- its prefill of ${prefillTokens} tokens at least 5x its stepping: ${chosen[1].prefill_vs_stepping}x (1 thread), ` +
      `${chosen[0].prefill_vs_stepping}x (2 threads), ${met(Math.min(...chosen.map((r) => r.prefill_vs_stepping)) >= 5)}`,
    `- onnxruntime-node within 10% of Python at the same precision and threads: at most ${worstNode}x, ` +
      met(worstNode <= 1.1),
  ];
}

function markdown(/** @type {any} */ report) {
  const lines = [
    `machine: \`${JSON.stringify(report.machine)}\``,
    "",
    `load before / after: \`${report.load_before}\` / \`${report.load_after}\``,
    "",
    `RWKV-7 0.1B shape, random weights, batch 1; decode: median of ${rounds} alternating rounds of ${block} tokens ` +
      `(4 untimed first); ratios: medians of per-round ratios; prefill: ${prefillTokens} tokens through feed() ` +
      "(the sequence graph in chunks of 128), fastest of 2; prefill / stepping: prefill tok/s over decode tok/s.",
    "",
    "| precision | runtime | backend | threads | decode ms | x Python, same precision and threads | " +
      "x Python int8 2t | prefill tok/s | prefill / stepping | load s |",
    "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  for (const r of report.speed) {
    lines.push(
      `| ${r.precision} | ${r.runtime} | ${r.backend} | ${r.threads} | ${r.decode_ms} | ${r.vs_python_same} | ` +
        `${r.vs_python_int8_2t} | ${r.prefill_tok_s} | ${r.prefill_vs_stepping}x | ${r.load_s} |`,
    );
  }
  const q = report.quality;
  lines.push(
    "",
    `Quality of ${q.precision} vs fp32, ${q.model}, the eval text (quant/eval_text.txt), ${q.results[0].tokens} ` +
      "positions, stepped one token at a time, batch 1:",
    "",
    "| backend | fp32 perplexity | perplexity | change | top-1 agreement | target (+1%, 97%) |",
    "| --- | ---: | ---: | ---: | ---: | --- |",
  );
  for (const r of q.results) {
    lines.push(
      `| ${r.backend} | ${r.fp32_perplexity} | ${r.perplexity} | ${(r.perplexity_change * 100).toFixed(3)}% | ` +
        `${(r.top1_agreement * 100).toFixed(2)}% | ${r.within_target ? "met" : "missed"} |`,
    );
  }
  lines.push(
    "",
    `fp32 on wasm and in Python pick the same top-1 token at ${(q.crossFp32 * 100).toFixed(2)}% of positions.`,
  );
  lines.push("", ...summary(report));
  return lines.join("\n") + "\n";
}

async function main() {
  if (args.from) {
    const report = JSON.parse(fs.readFileSync(args.from, "utf8"));
    [rounds, block, prefillTokens] = [
      report.rounds,
      report.block,
      report.prefill_tokens,
    ];
    fs.writeFileSync(path.join(args.out, "web.md"), markdown(report));
    return;
  }
  log(`preparing exports under ${args.work} (kept between runs)`);
  const prepared = execFileSync(
    args.python,
    [path.join(HERE, "web_python.py"), "prepare", args.work],
    {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "inherit"],
    },
  );
  const exports = JSON.parse(prepared.trim().split("\n").pop() ?? "{}");
  const webPackage = JSON.parse(
    fs.readFileSync(
      path.join(ROOT, "web", "node_modules", "onnxruntime-web", "package.json"),
      "utf8",
    ),
  );
  const loadBefore = uptime();
  const { rows, pythonOrt } = await speed(exports);
  log("quality on the tiny model");
  const q = await quality(exports.tiny);
  const report = {
    machine: {
      cpu: os.cpus()[0]?.model,
      cores: os.cpus().length,
      node: process.version,
      "onnxruntime-web": webPackage.version,
      "onnxruntime (python)": pythonOrt,
    },
    load_before: loadBefore,
    load_after: uptime(),
    web_precision: WEB_PRECISION,
    rounds,
    block,
    prefill_tokens: prefillTokens,
    speed: rows,
    quality: q,
  };
  fs.mkdirSync(args.out, { recursive: true });
  fs.writeFileSync(
    path.join(args.out, "web.json"),
    JSON.stringify(report, null, 2) + "\n",
  );
  const md = markdown(report);
  fs.writeFileSync(path.join(args.out, "web.md"), md);
  process.stdout.write(md);
}

await main();
