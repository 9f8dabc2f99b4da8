/**
 * The four ways to run a graph, each with its ONNX Runtime package and execution providers:
 *   node         onnxruntime-node (native CPU; opens graphs by path, mapping their external data)
 *   wasm         onnxruntime-web, the WebAssembly CPU backend (threads only in a cross-origin isolated page)
 *   webgpu       onnxruntime-web/webgpu, the native WebGPU build (runs 8-bit MatMulNBits)
 *   webgpu-jsep  onnxruntime-web with executionProviders ['webgpu']: the older JSEP WebGPU (2- and 4-bit only)
 * and the checks made before any file is loaded: the manifest's graphs[].backends, wasm32's 4 GB memory.
 */
import { RWKVEdgeError } from "./errors.js";

export const BACKENDS = ["wasm", "webgpu", "webgpu-jsep", "node"];
export const WASM32_LIMIT_BYTES = 4 * 1024 ** 3;

const IS_NODE = typeof process !== "undefined" && !!process.versions?.node;

/**
 * @typedef {object} Backend
 * @property {string} name
 * @property {any} ort                       the onnxruntime module
 * @property {string[]} executionProviders
 * @property {boolean} web                   onnxruntime-web: graphs and external data are handed over as bytes
 * @property {boolean} gpu                   state outputs stay on the GPU between steps
 * @property {number | undefined} threads    intra-op threads asked of ONNX Runtime (undefined: its default)
 */

/** The backend a plain loadModel gets: "node" in Node, "wasm" in a browser. */
export function defaultBackend() {
  return IS_NODE ? "node" : "wasm";
}

/**
 * @param {string} name
 * @param {{threads?: number, ort?: any, wasmPaths?: string | Record<string, string>}} options
 * @returns {Promise<Backend>}
 */
export async function openBackend(name, options = {}) {
  if (!BACKENDS.includes(name)) {
    throw new RWKVEdgeError(`unknown backend ${JSON.stringify(name)}; expected one of: ${BACKENDS.join(", ")}`);
  }
  const threads = options.threads;
  if (threads !== undefined && (!Number.isInteger(threads) || threads < 1)) {
    throw new RWKVEdgeError(`threads must be a whole number >= 1, found ${JSON.stringify(threads)}`);
  }
  if (name === "node" && !IS_NODE) throw new RWKVEdgeError('backend "node" runs in Node only; use "wasm" or "webgpu"');
  if (name.startsWith("webgpu") && (typeof navigator === "undefined" || !("gpu" in navigator))) {
    throw new RWKVEdgeError(`backend ${JSON.stringify(name)} needs WebGPU (navigator.gpu), which this runtime lacks`);
  }
  const ort = options.ort ?? (await importOrt(name));
  if (name === "node") {
    return { name, ort, executionProviders: ["cpu"], web: false, gpu: false, threads };
  }
  const env = ort.env;
  env.logLevel = "error";
  if (options.wasmPaths !== undefined) env.wasm.wasmPaths = options.wasmPaths;
  // Worker threads need SharedArrayBuffer: in a page, only when it is cross-origin isolated (COOP + COEP).
  const isolated = IS_NODE || (typeof crossOriginIsolated !== "undefined" && crossOriginIsolated);
  const wasmThreads = isolated ? threads : 1;
  if (wasmThreads !== undefined) env.wasm.numThreads = wasmThreads;
  return {
    name,
    ort,
    executionProviders: name === "wasm" ? ["wasm"] : ["webgpu"],
    web: true,
    gpu: name !== "wasm",
    threads: wasmThreads,
  };
}

/** @param {string} name */
async function importOrt(name) {
  const specifier = { node: "onnxruntime-node", wasm: "onnxruntime-web", "webgpu-jsep": "onnxruntime-web" }[name];
  try {
    return name === "webgpu" ? await import("onnxruntime-web/webgpu") : await import(/* @vite-ignore */ specifier);
  } catch (e) {
    const pkg = name === "webgpu" ? "onnxruntime-web/webgpu" : specifier;
    throw new RWKVEdgeError(
      `backend ${name} needs ${pkg}, which cannot be imported (${/** @type {Error} */ (e).message})`,
    );
  }
}

/**
 * Refuse a graph whose manifest entry lists the backends known to run it and this one is not among them.
 * @param {import("./manifest.js").GraphSpec} graph
 * @param {string} backend
 */
export function checkGraphBackend(graph, backend) {
  if (!graph.backends || graph.backends.includes(backend)) return;
  const needs = graph.needs && graph.needs.length ? graph.needs.join(", ") : "nothing beyond standard ONNX";
  const can = graph.backends.length ? graph.backends.join(", ") : "none";
  throw new RWKVEdgeError(
    `${graph.file} (${graph.kind} graph, ${graph.precision}) cannot run on backend ${backend}: ` +
      `it needs ${needs}; backends that can: ${can}`,
  );
}

/**
 * onnxruntime-web runs in 32-bit WebAssembly: every graph and data file it opens must fit in its 4 GB together.
 * @param {string} backend
 * @param {{name: string, bytes: number | null}[]} files
 * @param {string} precision
 */
export function checkWasmMemory(backend, files, precision) {
  const total = files.reduce((sum, f) => sum + (f.bytes ?? 0), 0);
  if (total <= WASM32_LIMIT_BYTES) return;
  const gib = (total / 1024 ** 3).toFixed(2);
  throw new RWKVEdgeError(
    `model too large for backend ${backend}: the ${precision} graphs and their data are ${gib} GiB ` +
      `(${files.map((f) => f.name).join(", ")}), over WebAssembly's 4 GiB memory; ` +
      "pick a smaller precision (int8, int4) or run it with onnxruntime-node",
  );
}
