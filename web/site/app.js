/**
 * The demo page: reads what to do from the URL (options.js), loads the model under model/ with the runtime under
 * src/, streams the continuation into #output, and shows backend, precision and speed. Every failure ends as one
 * line on the page and data-state="error"; nothing is fetched from outside the site.
 */
import { choosePrecision, modelPrecisions, readOptions } from "./options.js";
import { View } from "./view.js";

const MODEL_DIR = "./model/";
const ADAPTER_TIMEOUT_MS = 15000; // requestAdapter can stall on a broken driver: give up rather than hang

const view = new View(document);

window.addEventListener("error", (event) => view.fail(event.error ?? event.message));
window.addEventListener("unhandledrejection", (event) => view.fail(event.reason));
view.form.addEventListener("submit", (event) => {
  event.preventDefault();
  location.search = view.formQuery().toString(); // the URL says what ran: reload with the form's values
});

main().catch((error) => view.fail(error));

async function main() {
  const options = readOptions(location.search);
  view.fillForm(options);
  if (options.prompt === null) {
    view.setState("ready", "enter a prompt");
    return;
  }
  if (!options.prompt) throw new Error("prompt is empty: give some text to continue");
  view.setState("loading", "loading the model");
  const runtime = await import("./src/index.js");
  if (options.backend === "webgpu") await requireWebGPU();

  const manifest = runtime.parseManifest(await readFile(MODEL_DIR + runtime.MANIFEST_NAME));
  const precision = choosePrecision(manifest, options.backend, options.precision);
  view.addPrecisions(modelPrecisions(manifest), options.precision);
  view.showRun(options.backend, precision);
  const threads = Math.min(4, navigator.hardwareConcurrency || 1); // used when the page is cross-origin isolated
  const model = await runtime.loadModel(MODEL_DIR, { backend: options.backend, precision, threads });
  const tokenizer = await model.loadTokenizer();

  view.setState("generating", "reading the prompt");
  const promptIds = tokenizer.encode(options.prompt);
  const state = model.newState(1);
  const fed = performance.now();
  await model.feed(promptIds, state);
  const started = performance.now();
  view.showPromptTime(promptIds.length, started - fed);
  view.setState("generating");

  // an empty prompt continues from the fed state: generation proper, timed apart from the prompt
  const generation = runtime.generate(model, tokenizer, [], {
    state,
    maxTokens: options.maxTokens,
    temperature: options.temperature,
    topP: options.topP,
    seed: options.seed,
  });
  for await (const piece of generation) {
    view.append(piece);
    view.showSpeed(generation.tokens.length, performance.now() - started);
  }
  view.showSpeed(generation.tokens.length, performance.now() - started);
  view.finish(generation.tokens, generation.finishReason);
}

/** @param {string} url */
async function readFile(url) {
  let response;
  try {
    response = await fetch(url);
  } catch (error) {
    throw new Error(`${url}: cannot fetch it (${/** @type {Error} */ (error).message})`);
  }
  if (!response.ok) throw new Error(`${url}: not found (HTTP ${response.status}); build the site with rwkv-export web`);
  return new Uint8Array(await response.arrayBuffer());
}

/** backend=webgpu needs an adapter; without one, say so instead of letting ONNX Runtime fail later. */
async function requireWebGPU() {
  const gpu = /** @type {any} */ (navigator).gpu;
  if (!gpu) throw new Error("WebGPU is not available in this browser (no navigator.gpu); use backend=wasm");
  let timer;
  const timeout = new Promise((resolve) => (timer = setTimeout(() => resolve("timeout"), ADAPTER_TIMEOUT_MS)));
  const adapter = await Promise.race([gpu.requestAdapter(), timeout]).finally(() => clearTimeout(timer));
  if (adapter === "timeout") throw new Error(`WebGPU: no adapter after ${ADAPTER_TIMEOUT_MS / 1000} s; use backend=wasm`);
  if (!adapter) throw new Error("WebGPU: this browser found no GPU adapter; use backend=wasm");
}
