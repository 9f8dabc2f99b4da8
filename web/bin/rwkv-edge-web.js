#!/usr/bin/env node
/**
 * rwkv-edge-web generate DIR --prompt TEXT [--max-tokens N] [--temperature T] [--top-p P] [--top-k K]
 *                        [--repetition-penalty R] [--stop TEXT]... [--seed S] [--precision P]
 *                        [--backend node|wasm] [--format onnx|ort] [--threads N]
 *     prints the prompt and its continuation, as `rwkv-export generate` does
 * rwkv-edge-web serve SITE [--port N] [--host 127.0.0.1]
 *     serves a built demo site, cross-origin isolated (wasm threads)
 *
 * A user's error is one line on stderr and exit code 2.
 */
import { parseArgs } from "node:util";

import { RWKVEdgeError, generate, loadModel } from "../src/index.js";

const USAGE = `usage: rwkv-edge-web generate DIR --prompt TEXT [--max-tokens N] [--temperature T] [--top-p P]
                     [--top-k K] [--repetition-penalty R] [--stop TEXT]... [--seed S] [--precision P]
                     [--backend node|wasm] [--format onnx|ort] [--threads N]
       rwkv-edge-web serve SITE [--port N] [--host 127.0.0.1]`;

class UsageError extends Error {}

/** @param {string} name @param {string | undefined} text @param {boolean} whole */
function number(name, text, whole = false) {
  if (text === undefined) return undefined;
  const value = Number(text);
  if (text.trim() === "" || Number.isNaN(value) || (whole && !Number.isInteger(value))) {
    throw new UsageError(`--${name} expects ${whole ? "a whole number" : "a number"}, found ${JSON.stringify(text)}`);
  }
  return value;
}

/** Let a shell user write "\n" for a newline, as the Python CLI does. @param {string} text */
function unescape(text) {
  if (!text.includes("\\")) return text;
  const simple = {
    n: "\n",
    t: "\t",
    r: "\r",
    "\\": "\\",
    "'": "'",
    '"': '"',
    a: "\x07",
    b: "\b",
    f: "\f",
    v: "\v",
    0: "\0",
  };
  return text.replace(/\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)/gs, (whole, e) => {
    if (e.length > 1) return String.fromCodePoint(parseInt(e.slice(1), 16));
    return simple[/** @type {keyof typeof simple} */ (e)] ?? whole;
  });
}

/** @param {string[]} args */
async function runGenerate(args) {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      prompt: { type: "string", default: "\n" },
      "max-tokens": { type: "string" },
      temperature: { type: "string" },
      "top-p": { type: "string" },
      "top-k": { type: "string" },
      "repetition-penalty": { type: "string" },
      stop: { type: "string", multiple: true },
      seed: { type: "string" },
      precision: { type: "string", default: "fp32" },
      backend: { type: "string", default: "node" },
      format: { type: "string", default: "onnx" },
      threads: { type: "string" },
    },
  });
  if (positionals.length !== 1) throw new UsageError("generate takes one export directory");
  const backend = /** @type {string} */ (values.backend);
  if (backend !== "node" && backend !== "wasm") {
    throw new UsageError(
      `--backend must be node or wasm here (WebGPU runs in a browser), found ${JSON.stringify(backend)}`,
    );
  }
  const maxTokens = number("max-tokens", values["max-tokens"], true) ?? 200;
  if (maxTokens < 1) throw new UsageError(`--max-tokens must be >= 1, found ${maxTokens}`);
  const model = await loadModel(positionals[0], {
    backend: /** @type {"node" | "wasm"} */ (backend),
    precision: values.precision,
    format: /** @type {"onnx" | "ort"} */ (values.format),
    threads: number("threads", values.threads, true),
  });
  const tokenizer = await model.loadTokenizer();
  const prompt = unescape(/** @type {string} */ (values.prompt));
  const pieces = generate(model, tokenizer, prompt, {
    maxTokens,
    temperature: number("temperature", values.temperature) ?? 1.0,
    topP: number("top-p", values["top-p"]) ?? 0.85,
    topK: number("top-k", values["top-k"], true) ?? 0,
    repetitionPenalty: number("repetition-penalty", values["repetition-penalty"]) ?? 1.0,
    stop: (values.stop ?? []).map(unescape),
    seed: number("seed", values.seed, true),
  });
  process.stdout.write(prompt);
  for await (const piece of pieces) process.stdout.write(piece);
  process.stdout.write("\n");
  await model.dispose();
}

/** @param {string[]} args */
async function runServe(args) {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { port: { type: "string", default: "8000" }, host: { type: "string", default: "127.0.0.1" } },
  });
  if (positionals.length !== 1) throw new UsageError("serve takes one site directory");
  const { serveStatic } = await import("../src/static_server.js");
  const { server, url } = await serveStatic(positionals[0], {
    port: number("port", values.port, true),
    host: values.host,
  });
  process.stdout.write(`serving ${positionals[0]} at ${url}\n`);
  const close = () => server.close(() => process.exit(0));
  process.on("SIGINT", close);
  process.on("SIGTERM", close);
}

async function main() {
  const [command, ...rest] = process.argv.slice(2);
  if (command === "generate") return runGenerate(rest);
  if (command === "serve") return runServe(rest);
  if (command === "--help" || command === "-h" || command === undefined) {
    process.stdout.write(USAGE + "\n");
    return command === undefined ? process.exit(2) : undefined;
  }
  throw new UsageError(`unknown command ${JSON.stringify(command)}; expected generate or serve`);
}

main().catch((e) => {
  // parseArgs' own errors (unknown option, missing value) are the user's too
  const user = e instanceof RWKVEdgeError || e instanceof UsageError || e?.code?.startsWith?.("ERR_PARSE_ARGS");
  const message = (e instanceof Error ? e.message : String(e)).split("\n")[0];
  process.stderr.write(`${user ? "error" : "internal error"}: ${message}\n`);
  process.exit(user ? 2 : 1);
});
