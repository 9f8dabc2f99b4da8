// One model opened with the JS runtime (web/src) in its own process, driven by benchmarks/web.mjs: JSON requests
// on stdin, one JSON reply per line on stdout (the protocol is in benchmarks/web_python.py's docstring). A process
// per backend and thread count: onnxruntime-web's wasm threads are fixed once per process.
//
//   node benchmarks/web_worker.mjs '{"dir": "...", "backend": "wasm", "precision": "int8-dynamic", "threads": 2}'
import * as fs from "node:fs";
import * as readline from "node:readline";

import { loadModel } from "../web/src/index.js";

const cfg = JSON.parse(process.argv[2]);
const start = performance.now();
const model = await loadModel(cfg.dir, {
  backend: cfg.backend,
  precision: cfg.precision,
  threads: cfg.threads,
});
const loadMs = performance.now() - start;

// timing feeds any fixed sequence of ids (a linear congruential generator)
let seed = 12345;
const nextId = () => {
  seed = (seed * 1103515245 + 12345) % 2147483648;
  return seed % model.vocabSize;
};
const ids = (/** @type {number} */ n) => Array.from({ length: n }, nextId);

/** -log softmax(logits)[target] in float64, and the argmax (the first of ties, as numpy's) */
function nllAndArgmax(
  /** @type {Float32Array} */ logits,
  /** @type {number} */ target,
) {
  let max = -Infinity;
  let best = 0;
  for (let i = 0; i < logits.length; i++) {
    if (logits[i] > max) {
      max = logits[i];
      best = i;
    }
  }
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  return [max + Math.log(sum) - logits[target], best];
}

const state = model.newState(1);
const rl = readline.createInterface({ input: process.stdin });
process.stdout.write(JSON.stringify({ ready: true, loadMs }) + "\n");
for await (const line of rl) {
  const cmd = JSON.parse(line);
  let reply;
  if (cmd.cmd === "decode") {
    for (const id of ids(cmd.warm ?? 4)) await model.step([id], state);
    const times = [];
    for (const id of ids(cmd.n)) {
      const begin = performance.now();
      await model.step([id], state);
      times.push(performance.now() - begin);
    }
    reply = { times };
  } else if (cmd.cmd === "prefill") {
    const prompt = ids(cmd.tokens);
    const fresh = model.newState(1);
    const begin = performance.now();
    await model.feed(prompt, fresh);
    reply = { ms: performance.now() - begin };
  } else if (cmd.cmd === "score") {
    const tokenizer = await model.loadTokenizer();
    const tokens = tokenizer
      .encode(fs.readFileSync(cmd.text, "utf8"))
      .slice(0, cmd.max + 1);
    const fresh = model.newState(1);
    const nll = [];
    const argmax = [];
    for (let i = 0; i + 1 < tokens.length; i++) {
      const [value, best] = nllAndArgmax(
        await model.step([tokens[i]], fresh),
        tokens[i + 1],
      );
      nll.push(value);
      argmax.push(best);
    }
    reply = { nll, argmax, tokens: tokens.length - 1 };
  } else break;
  process.stdout.write(JSON.stringify(reply) + "\n");
}
process.exit(0);
