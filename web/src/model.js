/**
 * RWKVModel: an export directory opened with ONNX Runtime (onnxruntime-node or onnxruntime-web), as
 * runtime/session.py opens it.
 *
 *   const model = await loadModel("out/", { backend: "node", precision: "int8" });
 *   const state = model.newState(1);
 *   let logits = await model.feed(promptIds, state);   // Float32Array [batch * vocab], state holds the prompt
 *   logits = await model.step([nextId], state);          // one token per row; the state advances
 *
 * On the CPU backends one session serves prompts and decoding, as in the Python runtime: step() runs the sequence
 * graph with a one-token chunk (its WKV nodes take their step branch), so the weights are held once. WebGPU opens
 * the step graph for decoding and the sequence graph for prompts.
 */
import { checkGraphBackend, checkWasmMemory, defaultBackend, openBackend } from "./backends.js";
import { RWKVEdgeError, firstLine } from "./errors.js";
import { MANIFEST_NAME, concreteShape, findGraph, parseManifest, shapeText } from "./manifest.js";
import { readNpy } from "./npy.js";
import { externalDataLocations } from "./onnx_external.js";
import { openSource } from "./sources.js";
import { State, checkStateArrays, initialData, stateDtype } from "./state.js";
import { loadTokenizer } from "./tokenizers/index.js";

export const DEFAULT_PREFILL_CHUNK = 128;
const FORMATS = ["onnx", "ort"];

/**
 * @typedef {import("./manifest.js").Manifest} Manifest
 * @typedef {import("./manifest.js").GraphSpec} GraphSpec
 * @typedef {object} LoadOptions
 * @property {"wasm" | "webgpu" | "webgpu-jsep" | "node"} [backend]  default: "node" in Node, "wasm" in a browser
 * @property {string} [precision]      a graphs[].precision of the manifest; default "fp32"
 * @property {"onnx" | "ort"} [format] "ort": the graphs' ORT-format files (graphs[].ort); default "onnx"
 * @property {number} [threads]        intra-op threads (wasm: only in a cross-origin isolated page, else 1)
 * @property {number} [prefillChunk]   tokens per sequence-graph call; default 128
 * @property {boolean} [useSequenceGraph]  false: prompts are stepped token by token; default true
 * @property {boolean} [oneSession]    decode through the sequence graph too (default: on the CPU backends)
 * @property {any} [ort]               an onnxruntime module to use instead of importing the backend's package
 * @property {string | Record<string, string>} [wasmPaths]  onnxruntime-web's env.wasm.wasmPaths
 */

/**
 * Open an export directory.
 * @param {string | URL | {files: Record<string, Uint8Array | ArrayBuffer>}} source
 * @param {LoadOptions} [options]
 * @returns {Promise<RWKVModel>}
 */
export async function loadModel(source, options = {}) {
  const opts = checkOptions(options);
  const files = await openSource(source);
  if (!(await files.exists(MANIFEST_NAME))) {
    throw new RWKVEdgeError(
      `${files.where}: not an export directory (no ${MANIFEST_NAME}); create one with \`rwkv-export export\``,
    );
  }
  const manifest = parseManifest(await files.read(MANIFEST_NAME));
  for (const spec of manifest.state) stateDtype(spec);
  const stepGraph = findGraph(manifest, "step", opts.precision);
  const sequenceGraph = opts.useSequenceGraph
    ? (manifest.graphs.find((g) => g.kind === "sequence" && g.precision === opts.precision) ?? null)
    : null;
  const oneSession = (opts.oneSession ?? !opts.backend.startsWith("webgpu")) && sequenceGraph !== null;
  const graphs = oneSession ? [sequenceGraph] : sequenceGraph ? [stepGraph, sequenceGraph] : [stepGraph];
  for (const graph of graphs) checkGraphBackend(/** @type {GraphSpec} */ (graph), opts.backend);
  const paths = graphs.map((g) => graphFile(/** @type {GraphSpec} */ (g), opts.format));
  for (const [i, path] of paths.entries()) {
    if (!(await files.exists(path))) {
      const what = opts.format === "ort" ? "its ORT-format file, listed in rwkv.json," : "listed in rwkv.json but";
      const command = opts.format === "ort" ? "ort" : "export";
      throw new RWKVEdgeError(
        `${files.where}/${path}: ${what} missing; re-run \`rwkv-export ${command}\` ` +
          `(${graphs[i]?.kind} graph, ${opts.precision})`,
      );
    }
  }
  const backend = await openBackend(opts.backend, opts);
  const sessions = backend.web
    ? await openWebSessions(files, paths, backend, manifest, opts)
    : await openNodeSessions(files, paths, backend);
  graphs.forEach((g, i) => checkGraphIO(sessions[i], /** @type {GraphSpec} */ (g), manifest, paths[i]));
  const initial = await readInitialValues(files, manifest);
  return new RWKVModel({
    manifest,
    backend,
    precision: opts.precision,
    format: opts.format,
    stepGraph,
    sequenceGraph,
    decodeGraph: oneSession ? /** @type {GraphSpec} */ (sequenceGraph) : stepGraph,
    decodeSession: sessions[0],
    sequenceSession: sequenceGraph ? sessions[sessions.length - 1] : null,
    prefillChunk: opts.prefillChunk,
    initial,
    files,
  });
}

/** @param {LoadOptions} options */
function checkOptions(options) {
  if (typeof options !== "object" || options === null) throw new RWKVEdgeError("loadModel options must be an object");
  const backend = options.backend ?? defaultBackend();
  const precision = options.precision ?? "fp32";
  const format = options.format ?? "onnx";
  const prefillChunk = options.prefillChunk ?? DEFAULT_PREFILL_CHUNK;
  if (typeof precision !== "string" || !precision) {
    throw new RWKVEdgeError(`precision must be a graphs[].precision of rwkv.json, found ${JSON.stringify(precision)}`);
  }
  if (!FORMATS.includes(format)) {
    throw new RWKVEdgeError(`format must be one of ${FORMATS.join(", ")}, found ${JSON.stringify(format)}`);
  }
  if (format === "ort" && backend.startsWith("webgpu")) {
    // ORT-format graphs are saved after ORT's CPU-side fusions, whose nodes WebGPU hands back to the CPU without
    // the GPU data they need: only the .onnx graphs run there.
    throw new RWKVEdgeError(`format "ort" runs on the node and wasm backends, not on ${backend}; use format "onnx"`);
  }
  if (!Number.isInteger(prefillChunk) || prefillChunk < 1) {
    throw new RWKVEdgeError(`prefillChunk must be a whole number >= 1, found ${JSON.stringify(prefillChunk)}`);
  }
  return {
    ...options,
    backend,
    precision,
    format,
    prefillChunk,
    useSequenceGraph: options.useSequenceGraph ?? true,
  };
}

/** @param {GraphSpec} graph @param {string} format */
function graphFile(graph, format) {
  if (format === "onnx") return graph.file;
  if (!graph.ort) {
    throw new RWKVEdgeError(
      `${graph.file} (${graph.kind} graph, ${graph.precision}) has no ORT-format file (graphs[].ort); ` +
        "write them with `rwkv-export ort DIR`",
    );
  }
  return graph.ort;
}

/** @param {any} backend */
function baseSessionOptions(backend) {
  /** @type {Record<string, any>} */
  const options = {
    executionProviders: backend.executionProviders,
    graphOptimizationLevel: "all",
    logSeverityLevel: 3,
  };
  if (!backend.web && backend.threads !== undefined) options.intraOpNumThreads = backend.threads;
  return options;
}

/**
 * onnxruntime-node: by path where the files are on disk (ORT maps the external data), else from bytes.
 * @param {import("./sources.js").Source} files @param {string[]} paths @param {any} backend
 */
async function openNodeSessions(files, paths, backend) {
  const sessions = [];
  for (const path of paths) {
    const options = baseSessionOptions(backend);
    let model;
    if (files.localPath) model = files.localPath(path);
    else {
      model = await files.read(path);
      const external = path.endsWith(".ort") ? [] : externalLocations(model, path);
      if (external.length) {
        options.externalData = await Promise.all(external.map(async (p) => ({ path: p, data: await files.read(p) })));
      }
    }
    sessions.push(await createSession(backend, model, options, path));
  }
  return sessions;
}

/**
 * onnxruntime-web: graphs and their external data as bytes, each data file read once; checked against wasm32's
 * memory from the sizes before any of it is read.
 * @param {import("./sources.js").Source} files @param {string[]} paths @param {any} backend
 * @param {Manifest} manifest @param {{precision: string}} opts
 */
async function openWebSessions(files, paths, backend, manifest, opts) {
  const graphsBytes = await Promise.all(paths.map((p) => files.read(p)));
  const externals = paths.map((p, i) => (p.endsWith(".ort") ? [] : externalLocations(graphsBytes[i], p)));
  const dataNames = [...new Set(externals.flat())];
  /** @type {{name: string, bytes: number | null}[]} */
  const sized = paths.map((p, i) => ({ name: p, bytes: graphsBytes[i].byteLength }));
  for (const name of dataNames) {
    if (!(await files.exists(name))) {
      const user = paths[externals.findIndex((e) => e.includes(name))];
      throw new RWKVEdgeError(
        `${files.where}/${name}: external data of ${user} is missing; re-run \`rwkv-export export\``,
      );
    }
    // every session copies the data it reads into the WebAssembly memory
    const users = externals.filter((e) => e.includes(name)).length;
    const bytes = await files.size(name);
    for (let u = 0; u < users; u++) sized.push({ name, bytes });
  }
  checkWasmMemory(backend.name, sized, opts.precision);
  /** @type {Map<string, Uint8Array>} */
  const data = new Map();
  for (const name of dataNames) data.set(name, await files.read(name));
  const stateOutputs = manifest.state.map((s) => s.output);
  const sessions = [];
  for (const [i, path] of paths.entries()) {
    const options = baseSessionOptions(backend);
    if (externals[i].length) options.externalData = externals[i].map((p) => ({ path: p, data: data.get(p) }));
    if (backend.gpu) {
      // the state stays on the GPU from one call to the next; only the logits come back
      options.preferredOutputLocation = Object.fromEntries(stateOutputs.map((n) => [n, "gpu-buffer"]));
    }
    sessions.push(await createSession(backend, graphsBytes[i], options, path));
  }
  return sessions;
}

/** @param {Uint8Array} model @param {string} path */
function externalLocations(model, path) {
  try {
    return externalDataLocations(model);
  } catch (e) {
    throw new RWKVEdgeError(`${path}: not an ONNX graph (${/** @type {Error} */ (e).message})`);
  }
}

/** @param {any} backend @param {string | Uint8Array} model @param {object} options @param {string} path */
async function createSession(backend, model, options, path) {
  try {
    return await backend.ort.InferenceSession.create(model, options);
  } catch (e) {
    throw new RWKVEdgeError(`${path}: ONNX Runtime (${backend.name}) cannot load it (${firstLine(e)})`);
  }
}

/** @param {any} session @param {GraphSpec} graph @param {Manifest} manifest @param {string} path */
function checkGraphIO(session, graph, manifest, path) {
  const inputs = session.inputNames;
  const outputs = session.outputNames;
  for (const name of [graph.input, ...manifest.state.map((s) => s.input)]) {
    if (!inputs.includes(name)) {
      throw new RWKVEdgeError(
        `${path} does not match rwkv.json: no graph input ${JSON.stringify(name)} ` +
          `(it has ${inputs.slice().sort().join(", ")})`,
      );
    }
  }
  for (const name of [graph.output, ...manifest.state.map((s) => s.output)]) {
    if (!outputs.includes(name)) {
      throw new RWKVEdgeError(
        `${path} does not match rwkv.json: no graph output ${JSON.stringify(name)} ` +
          `(it has ${outputs.slice().sort().join(", ")})`,
      );
    }
  }
}

/**
 * State tuning: each init_file .npy, one sequence's value (the shape without the batch axis), checked.
 * @param {import("./sources.js").Source} files @param {Manifest} manifest
 * @returns {Promise<Map<string, import("./state.js").StateData>>}
 */
async function readInitialValues(files, manifest) {
  const values = new Map();
  for (const spec of manifest.state) {
    if (spec.init_file === null) continue;
    const where = `${files.where}/${spec.init_file}`;
    if (!(await files.exists(spec.init_file))) {
      throw new RWKVEdgeError(
        `${where}: initial state of ${JSON.stringify(spec.name)} listed in rwkv.json but missing; ` +
          "re-run `rwkv-export export`",
      );
    }
    let array;
    try {
      array = readNpy(await files.read(spec.init_file), where);
    } catch {
      throw new RWKVEdgeError(
        `${where}: not a .npy array (the initial state of ${JSON.stringify(spec.name)}); re-run \`rwkv-export export\``,
      );
    }
    const row = spec.shape.filter((d) => d !== "batch");
    if (array.dtype !== spec.dtype || row.length !== array.shape.length || row.some((d, i) => d !== array.shape[i])) {
      throw new RWKVEdgeError(
        `${where}: initial state of ${JSON.stringify(spec.name)} must be ${spec.dtype} ${JSON.stringify(row)} ` +
          `(${shapeText(spec)} without the batch axis), found ${array.dtype} ${JSON.stringify(array.shape)}`,
      );
    }
    values.set(spec.name, array.data);
  }
  return values;
}

export class RWKVModel {
  /** @param {any} parts  see loadModel */
  constructor(parts) {
    /** @type {Manifest} */
    this.manifest = parts.manifest;
    /** @type {string} "node", "wasm", "webgpu" or "webgpu-jsep" */
    this.backend = parts.backend.name;
    /** the onnxruntime module in use */
    this.ort = parts.backend.ort;
    this.precision = parts.precision;
    this.format = parts.format;
    this.vocabSize = parts.manifest.architecture.vocab_size;
    this.prefillChunk = parts.prefillChunk;
    /** the graphs opened: {step, sequence, decode} (step stays unopened when the sequence graph decodes) */
    this.graphs = { step: parts.stepGraph, sequence: parts.sequenceGraph, decode: parts.decodeGraph };
    this.oneSession = parts.decodeGraph.kind === "sequence";
    this._decodeSession = parts.decodeSession;
    this._sequenceSession = parts.sequenceSession;
    this._initial = parts.initial;
    this._files = parts.files;
    this._pingPong = parts.backend.name === "node"; // writes outputs into preallocated tensors
    this._gpu = parts.backend.gpu;
    const specs = this.manifest.state;
    this._stateInputs = specs.map((s) => s.input);
    this._stateOutputs = specs.map((s) => s.output);
    this._stateTypes = specs.map((s) => stateDtype(s)[0]);
  }

  // --- state ------------------------------------------------------------------------------------------
  /**
   * A fresh state: every row starts from the manifest's initial state (init_file, else init).
   * @param {number} [batch]
   */
  newState(batch = 1) {
    if (!Number.isInteger(batch) || batch < 1) {
      throw new RWKVEdgeError(`batch must be a whole number >= 1, found ${JSON.stringify(batch)}`);
    }
    const tensors = this.manifest.state.map(
      (spec, i) =>
        new this.ort.Tensor(
          this._stateTypes[i],
          initialData(spec, batch, this._initial.get(spec.name)),
          concreteShape(spec, batch),
        ),
    );
    return new State(this, tensors, batch);
  }

  /**
   * A state from host arrays by name ({data, shape}), as state.toArrays() gives them; names, shapes and dtypes
   * are checked. The data is copied.
   * @param {Record<string, {data: any, shape: number[], dtype?: string}>} arrays
   */
  stateFromArrays(arrays) {
    const batch = checkStateArrays(this.manifest.state, arrays);
    const tensors = this.manifest.state.map(
      (spec, i) => new this.ort.Tensor(this._stateTypes[i], arrays[spec.name].data.slice(), concreteShape(spec, batch)),
    );
    return new State(this, tensors, batch);
  }

  /**
   * A state from a state file's bytes (what Python's State.save writes), with Python's State.load checks.
   * @param {Uint8Array} bytes
   */
  loadState(bytes) {
    return this.stateFromArrays(State.parse(bytes, this.manifest));
  }

  /** The tokenizer rwkv.json names (bytes or world). */
  async loadTokenizer() {
    return loadTokenizer(this.manifest.tokenizer, this._files);
  }

  // --- running ----------------------------------------------------------------------------------------
  /**
   * Feed one token per row; returns the logits [batch * vocab] and advances `state`.
   * @param {number[]} ids
   * @param {State} state
   * @returns {Promise<Float32Array>}
   */
  async step(ids, state) {
    const binding = this._binding(state);
    const row = this._checkIds(ids, state.batch);
    const buffer = binding.ids;
    for (let r = 0; r < state.batch; r++) buffer[r] = BigInt(row[r]);
    const logits = await this._run(this._decodeSession, binding.idsTensor, state, binding);
    state.logits = logits;
    return logits;
  }

  /**
   * Feed a prompt: ids (number[], batch 1) or one list per row (number[][], equal lengths). Runs the sequence graph
   * in chunks of prefillChunk tokens (or steps, without one). Returns the logits after the last token.
   * @param {number[] | number[][]} ids
   * @param {State} state
   * @returns {Promise<Float32Array>}
   */
  async feed(ids, state) {
    const binding = this._binding(state);
    const rows = this._checkRows(ids, state.batch);
    const length = rows[0].length;
    if (!this._sequenceSession) {
      for (let t = 0; t < length; t++)
        await this.step(
          rows.map((r) => r[t]),
          state,
        );
      return /** @type {Float32Array} */ (state.logits);
    }
    const graph = this.graphs.sequence;
    for (let start = 0; start < length; start += this.prefillChunk) {
      const chunk = Math.min(this.prefillChunk, length - start);
      const data = new BigInt64Array(state.batch * chunk);
      rows.forEach((r, b) => {
        for (let t = 0; t < chunk; t++) data[b * chunk + t] = BigInt(r[start + t]);
      });
      const idsTensor = new this.ort.Tensor("int64", data, [state.batch, chunk]);
      let logits = await this._run(this._sequenceSession, idsTensor, state, binding, graph);
      if (graph.logits === "all" && chunk > 1) logits = lastPositions(logits, state.batch, chunk, this.vocabSize);
      state.logits = logits;
    }
    return /** @type {Float32Array} */ (state.logits);
  }

  /**
   * One call of `session` with the state's current tensors; the state advances. Returns the logits output.
   * @param {any} session @param {any} idsTensor @param {State} state @param {any} binding @param {GraphSpec} [graph]
   */
  async _run(session, idsTensor, state, binding, graph = this.graphs.decode) {
    const feeds = binding.feeds;
    feeds[graph.input] = idsTensor;
    const inputs = state.tensors;
    for (let i = 0; i < inputs.length; i++) feeds[this._stateInputs[i]] = inputs[i];
    let out;
    try {
      if (this._pingPong) {
        const spare = /** @type {any[]} */ (state.spare);
        const fetches = binding.fetches;
        fetches[graph.output] = null; // ORT allocates the logits: the caller keeps them
        for (let i = 0; i < spare.length; i++) fetches[this._stateOutputs[i]] = spare[i];
        out = await session.run(feeds, fetches);
        state.spare = inputs;
        state.tensors = spare;
      } else {
        out = await session.run(feeds);
        const next = this._stateOutputs.map((n) => out[n]);
        if (this._gpu) for (const t of inputs) if (t.location === "gpu-buffer") t.dispose();
        state.tensors = next;
      }
    } catch (e) {
      throw new RWKVEdgeError(`ONNX Runtime (${this.backend}) failed to run ${graph.file}: ${firstLine(e)}`);
    }
    return out[graph.output].data;
  }

  /**
   * What step and feed reuse for this model and state: the ids buffer and tensor, the feeds and fetches objects,
   * and on onnxruntime-node the spare tensors the outputs are written into.
   * @param {State} state
   */
  _binding(state) {
    if (!(state instanceof State)) {
      throw new RWKVEdgeError(`expected a State (from model.newState), found ${describeValue(state)}`);
    }
    let binding = state.bindings.get(this);
    if (binding) return binding;
    state.fits(this);
    const ids = new BigInt64Array(state.batch);
    const dims = this.graphs.decode.kind === "sequence" ? [state.batch, 1] : [state.batch];
    /** @type {Record<string, any>} */
    const fetches = {};
    if (this._pingPong && !state.spare) {
      state.spare = this.manifest.state.map(
        (spec, i) =>
          new this.ort.Tensor(
            this._stateTypes[i],
            new (stateDtype(spec)[1])(state.tensors[i].data.length),
            concreteShape(spec, state.batch),
          ),
      );
    }
    binding = { ids, idsTensor: new this.ort.Tensor("int64", ids, dims), feeds: {}, fetches };
    state.bindings.set(this, binding);
    return binding;
  }

  /** @param {unknown} ids @param {number} batch @returns {number[]} */
  _checkIds(ids, batch) {
    const list = typeof ids === "number" ? [ids] : ids;
    if (!Array.isArray(list) && !ArrayBuffer.isView(list)) {
      throw new RWKVEdgeError(
        `expected one token id per state row for a batch of ${batch}, found ${describeValue(ids)}`,
      );
    }
    const row = /** @type {number[]} */ (Array.from(/** @type {ArrayLike<number>} */ (list), Number));
    if (row.length !== batch) {
      throw new RWKVEdgeError(`expected one token id per state row for a batch of ${batch}, found ${row.length} ids`);
    }
    row.forEach((id, i) => this._checkId(id, `[${i}]`));
    return row;
  }

  /** @param {unknown} ids @param {number} batch @returns {number[][]} */
  _checkRows(ids, batch) {
    if (!Array.isArray(ids) && !ArrayBuffer.isView(ids)) {
      throw new RWKVEdgeError(
        `expected token ids (number[] or number[][]) for a batch of ${batch}, found ${describeValue(ids)}`,
      );
    }
    const list = /** @type {any[]} */ (Array.from(/** @type {ArrayLike<any>} */ (ids)));
    const nested = list.length > 0 && list.every((r) => Array.isArray(r) || ArrayBuffer.isView(r));
    const rows = nested
      ? list.map((r) => Array.from(r, Number))
      : batch === 1 && list.length
        ? [list.map(Number)]
        : null;
    if (!rows || rows.length !== batch || rows[0].length === 0 || rows.some((r) => r.length !== rows[0].length)) {
      const found = nested
        ? `${list.length} rows of lengths ${list.map((r) => r.length).join(", ")}`
        : `${list.length} ids`;
      throw new RWKVEdgeError(
        `expected token ids shaped [batch, seq] for a batch of ${batch} (rows of one length >= 1), found ${found}`,
      );
    }
    rows.forEach((r, b) => r.forEach((id, t) => this._checkId(id, `[${b}, ${t}]`)));
    return rows;
  }

  /** @param {number} id @param {string} where */
  _checkId(id, where) {
    if (!Number.isInteger(id)) throw new RWKVEdgeError(`token ids must be integers, found ${id} at position ${where}`);
    if (id < 0 || id >= this.vocabSize) {
      throw new RWKVEdgeError(`token id ${id} at position ${where} is outside the vocabulary [0, ${this.vocabSize})`);
    }
  }

  /** Release the ONNX Runtime sessions. */
  async dispose() {
    await this._decodeSession.release?.();
    if (this._sequenceSession && this._sequenceSession !== this._decodeSession) await this._sequenceSession.release?.();
  }
}

/** @param {Float32Array} logits [batch, seq, vocab] @param {number} batch @param {number} seq @param {number} vocab */
function lastPositions(logits, batch, seq, vocab) {
  const out = new Float32Array(batch * vocab);
  for (let b = 0; b < batch; b++)
    out.set(logits.subarray((b * seq + seq - 1) * vocab, (b * seq + seq) * vocab), b * vocab);
  return out;
}

/** @param {unknown} value */
function describeValue(value) {
  if (value === null) return "null";
  if (Array.isArray(value)) return "a list";
  if (typeof value === "object") return /** @type {object} */ (value).constructor?.name ?? "an object";
  return `${typeof value} ${JSON.stringify(value)}`;
}
