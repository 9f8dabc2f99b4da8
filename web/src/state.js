/**
 * The recurrent state of a batch of sequences, as runtime/state.py holds it: one tensor per manifest state entry,
 * batch axis included, float32. The model's step() replaces or ping-pongs the tensors; nothing here runs a graph.
 *
 * On onnxruntime-node each tensor has two buffers, the current value fed as input and a spare one that the step
 * writes its output into, swapped after each step, so a step allocates no state-sized memory. On WebGPU the
 * tensors stay on the GPU between steps; `await state.download()` brings them back before host access.
 */
import { RWKVEdgeError } from "./errors.js";
import { concreteShape, shapeText } from "./manifest.js";
import { readNpz, writeNpz } from "./npz.js";
import { sizeOf } from "./npy.js";

export const STATE_FORMAT = "rwkv-edge-state/1";
const META_KEY = "__meta__";
const TENSOR_PREFIX = "state.";

/** numpy dtype name -> [ONNX Runtime tensor type, typed array] for the state dtypes a graph can take */
export const STATE_DTYPES = {
  float32: ["float32", Float32Array],
  float64: ["float64", Float64Array],
  float16: ["float16", Uint16Array],
};

/**
 * @typedef {import("./manifest.js").StateSpec} StateSpec
 * @typedef {Float32Array | Float64Array | Uint16Array} StateData
 * @typedef {{data: StateData, shape: number[]}} HostTensor
 */

/** @param {StateSpec} spec */
export function stateDtype(spec) {
  const entry = STATE_DTYPES[/** @type {keyof typeof STATE_DTYPES} */ (spec.dtype)];
  if (!entry) {
    throw new RWKVEdgeError(
      `rwkv.json: state ${JSON.stringify(spec.name)} has dtype ${JSON.stringify(spec.dtype)}; ` +
        `expected one of ${Object.keys(STATE_DTYPES).join(", ")}`,
    );
  }
  return entry;
}

/** @param {StateSpec} spec */
function batchAxis(spec) {
  return spec.shape.indexOf("batch");
}

/**
 * Sizes of the blocks around the batch axis: [outer, inner] with shape = [...outer dims, batch, ...inner dims].
 * @param {number[]} shape @param {number} axis
 */
function around(shape, axis) {
  return [sizeOf(shape.slice(0, axis)), sizeOf(shape.slice(axis + 1))];
}

/**
 * Rows `rows` (in that order) of `data` along `axis`.
 * @param {StateData} data @param {number[]} shape @param {number} axis @param {number[]} rows
 */
export function takeRows(data, shape, axis, rows) {
  const [outer, inner] = around(shape, axis);
  const batch = shape[axis];
  const out = new /** @type {any} */ (data.constructor)(outer * rows.length * inner);
  for (let o = 0; o < outer; o++) {
    rows.forEach((r, i) => {
      const from = (o * batch + r) * inner;
      out.set(data.subarray(from, from + inner), (o * rows.length + i) * inner);
    });
  }
  return out;
}

/**
 * Parts stacked along `axis`: their rows in order.
 * @param {HostTensor[]} parts @param {number} axis
 * @returns {HostTensor}
 */
export function concatRows(parts, axis) {
  const total = parts.reduce((n, p) => n + p.shape[axis], 0);
  const shape = parts[0].shape.slice();
  shape[axis] = total;
  const [outer, inner] = around(shape, axis);
  const out = new /** @type {any} */ (parts[0].data.constructor)(sizeOf(shape));
  for (let o = 0; o < outer; o++) {
    let at = 0;
    for (const p of parts) {
      const rows = p.shape[axis];
      out.set(p.data.subarray(o * rows * inner, (o + 1) * rows * inner), (o * total + at) * inner);
      at += rows;
    }
  }
  return { data: out, shape };
}

/**
 * Fresh state data for `batch` rows: each row is the spec's initial value (init_file) or filled with its init.
 * @param {StateSpec} spec
 * @param {number} batch
 * @param {StateData | undefined} row  one sequence's value, the shape without the batch axis
 * @returns {StateData}
 */
export function initialData(spec, batch, row) {
  const [, Type] = stateDtype(spec);
  const shape = concreteShape(spec, batch);
  const out = new Type(sizeOf(shape));
  if (!row) {
    if (spec.init !== 0) out.fill(spec.dtype === "float16" ? float16Bits(spec.init) : spec.init);
    return out;
  }
  const [outer, inner] = around(shape, batchAxis(spec));
  for (let o = 0; o < outer; o++) {
    const block = row.subarray(o * inner, (o + 1) * inner);
    for (let b = 0; b < batch; b++) out.set(block, (o * batch + b) * inner);
  }
  return out;
}

/** @param {number} value  the float16 bit pattern nearest `value` (round to nearest even) */
function float16Bits(value) {
  const f32 = new Float32Array([value]);
  const bits = new Uint32Array(f32.buffer)[0];
  const sign = (bits >>> 16) & 0x8000;
  const exp = ((bits >>> 23) & 0xff) - 127 + 15;
  let mantissa = bits & 0x7fffff;
  if (exp >= 31) return sign | 0x7c00 | (Number.isNaN(value) ? 0x200 : 0);
  if (exp <= 0) {
    if (exp < -10) return sign;
    mantissa |= 0x800000;
    const shift = 14 - exp;
    const half = mantissa >> shift;
    const rest = mantissa & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    return sign | (half + (rest > mid || (rest === mid && half & 1) ? 1 : 0));
  }
  const half = (exp << 10) | (mantissa >> 13);
  const rest = mantissa & 0x1fff;
  return sign | (half + (rest > 0x1000 || (rest === 0x1000 && half & 1) ? 1 : 0));
}

/**
 * Host arrays by state name checked against the manifest (names, shapes, dtypes, one batch): as Python's
 * check_state_arrays. Returns the batch.
 * @param {StateSpec[]} specs
 * @param {Record<string, {data: unknown, shape: number[], dtype?: string}>} arrays
 * @param {string} [where]  prefix of the messages (a file)
 */
export function checkStateArrays(specs, arrays, where = "state") {
  const expected = specs.map((s) => s.name);
  if (typeof arrays !== "object" || arrays === null) {
    throw new RWKVEdgeError(`${where} must be an object of tensors named ${expected.join(", ")}`);
  }
  for (const name of Object.keys(arrays)) {
    if (!expected.includes(name)) {
      throw new RWKVEdgeError(`${where} has unknown tensor ${JSON.stringify(name)} (expected: ${expected.join(", ")})`);
    }
  }
  /** @type {number | undefined} */
  let batch;
  let batchFrom = "";
  for (const spec of specs) {
    const array = arrays[spec.name];
    if (!array) {
      throw new RWKVEdgeError(
        `${where} is missing tensor ${JSON.stringify(spec.name)} (expected: ${expected.join(", ")})`,
      );
    }
    const shape = array.shape;
    const axis = batchAxis(spec);
    if (!Array.isArray(shape) || shape.length !== spec.shape.length) {
      throw new RWKVEdgeError(
        `${where} tensor ${JSON.stringify(spec.name)}: expected shape ${shapeText(spec)}, ` +
          `found ${JSON.stringify(shape)}`,
      );
    }
    if (batch === undefined) {
      batch = shape[axis];
      batchFrom = spec.name;
    }
    if (shape[axis] !== batch) {
      throw new RWKVEdgeError(
        `${where} tensor ${JSON.stringify(spec.name)} has batch ${shape[axis]}, ` +
          `but ${JSON.stringify(batchFrom)} has batch ${batch}`,
      );
    }
    const want = concreteShape(spec, batch);
    if (want.some((d, i) => d !== shape[i])) {
      throw new RWKVEdgeError(
        `${where} tensor ${JSON.stringify(spec.name)}: expected shape ${JSON.stringify(want)} ` +
          `(${shapeText(spec)}), found ${JSON.stringify(shape)}`,
      );
    }
    const [, Type] = stateDtype(spec);
    const dtype = array.dtype ?? dtypeOfData(array.data);
    if (dtype !== spec.dtype || !(array.data instanceof Type)) {
      throw new RWKVEdgeError(
        `${where} tensor ${JSON.stringify(spec.name)}: expected dtype ${spec.dtype}, ` +
          `found ${dtype ?? typeof array.data}`,
      );
    }
    if (/** @type {StateData} */ (array.data).length !== sizeOf(want)) {
      throw new RWKVEdgeError(
        `${where} tensor ${JSON.stringify(spec.name)}: ${sizeOf(want)} values for shape ${JSON.stringify(want)}, ` +
          `found ${/** @type {StateData} */ (array.data).length}`,
      );
    }
  }
  if (batch === undefined || batch < 1) throw new RWKVEdgeError(`${where} batch must be >= 1, found ${batch}`);
  return batch;
}

/** @param {unknown} data */
function dtypeOfData(data) {
  if (data instanceof Float32Array) return "float32";
  if (data instanceof Float64Array) return "float64";
  if (data instanceof Uint16Array) return "float16";
  return undefined;
}

/**
 * @param {Record<string, unknown> | undefined} arch
 */
function describeArchitecture(arch) {
  if (!arch || typeof arch !== "object") return "an unknown model";
  return `RWKV-${arch.version} (n_layer=${arch.n_layer}, n_embd=${arch.n_embd}, vocab_size=${arch.vocab_size})`;
}

/** @param {unknown} a @param {unknown} b */
function sameArchitecture(a, b) {
  if (!a || !b || typeof a !== "object" || typeof b !== "object") return false;
  const ka = Object.keys(a).sort();
  const kb = Object.keys(b).sort();
  return (
    ka.length === kb.length &&
    ka.every((k, i) => k === kb[i] && /** @type {any} */ (a)[k] === /** @type {any} */ (b)[k])
  );
}

export class State {
  /**
   * Made by model.newState(batch), model.stateFromArrays(arrays) or model.loadState(bytes).
   * @param {import("./model.js").RWKVModel} model
   * @param {any[]} tensors  ONNX Runtime tensors in manifest order, owned by this state
   * @param {number} batch
   */
  constructor(model, tensors, batch) {
    this.model = model;
    this.batch = batch;
    /** @type {StateSpec[]} */
    this.specs = model.manifest.state;
    /** the tensors that hold the state now, in manifest order (the model's step replaces them) */
    this.tensors = tensors;
    /** onnxruntime-node: the buffers the next step writes into (swapped with `tensors` after it) */
    this.spare = /** @type {any[] | null} */ (null);
    /** @type {Map<object, any>} per model: what its step prepared for this state */
    this.bindings = new Map();
    /** @type {Float32Array | null} logits [batch * vocab] after the last step or feed */
    this.logits = null;
  }

  /** Raise unless this state has the layout of `model`'s state and lives where it runs. */
  fits(model) {
    if (model === this.model) return;
    const mine = this.specs.map((s) => `${s.name}${shapeText(s)}`).join(", ");
    const theirs = model.manifest.state.map((/** @type {StateSpec} */ s) => `${s.name}${shapeText(s)}`).join(", ");
    if (mine !== theirs || JSON.stringify(this.specs) !== JSON.stringify(model.manifest.state)) {
      throw new RWKVEdgeError(`state does not fit this model: it has ${mine}; the model expects ${theirs}`);
    }
    if (model.backend !== this.model.backend) {
      throw new RWKVEdgeError(
        `state belongs to a model on backend ${this.model.backend}, this one runs on ${model.backend}; ` +
          "move it with model.stateFromArrays(state.toArrays())",
      );
    }
  }

  /** True when every tensor can be read on the host without downloading it. */
  get onHost() {
    return this.tensors.every((t) => t.location === "cpu" || t.location === undefined);
  }

  /** WebGPU: bring the state to host memory (the next step uploads it again). A no-op on the CPU backends. */
  async download() {
    if (this.onHost) return this;
    const ort = this.model.ort;
    const next = [];
    for (const [i, spec] of this.specs.entries()) {
      const t = this.tensors[i];
      if (t.location === "cpu") {
        next.push(t);
        continue;
      }
      const data = await t.getData();
      next.push(new ort.Tensor(stateDtype(spec)[0], data, t.dims));
      t.dispose();
    }
    this.tensors = next;
    return this;
  }

  /**
   * A host copy of every tensor, by state name.
   * @returns {Record<string, HostTensor & {dtype: string}>}
   */
  toArrays() {
    if (!this.onHost) {
      throw new RWKVEdgeError("state lives on the GPU: `await state.download()` before reading or saving it");
    }
    /** @type {Record<string, HostTensor & {dtype: string}>} */
    const out = {};
    this.specs.forEach((spec, i) => {
      const t = this.tensors[i];
      out[spec.name] = { data: t.data.slice(), shape: concreteShape(spec, this.batch), dtype: spec.dtype };
    });
    return out;
  }

  /** An independent copy (same model). */
  copy() {
    const state = this.model.stateFromArrays(this.toArrays());
    state.logits = this.logits && this.logits.slice();
    return state;
  }

  /**
   * A new state of the given rows, in that order.
   * @param {number | number[]} rows
   */
  select(rows) {
    const list = typeof rows === "number" ? [rows] : Array.isArray(rows) ? rows : null;
    const bad = list ? list.filter((r) => !Number.isInteger(r) || r < 0 || r >= this.batch) : [];
    if (!list || list.length === 0 || bad.length) {
      throw new RWKVEdgeError(
        `rows must be in [0, ${this.batch}) and not empty, ` +
          `found ${list && list.length ? JSON.stringify(bad) : "no rows"}`,
      );
    }
    const host = this.toArrays();
    /** @type {Record<string, HostTensor & {dtype: string}>} */
    const arrays = {};
    for (const spec of this.specs) {
      const h = host[spec.name];
      const shape = h.shape.slice();
      shape[batchAxis(spec)] = list.length;
      arrays[spec.name] = { data: takeRows(h.data, h.shape, batchAxis(spec), list), shape, dtype: spec.dtype };
    }
    const state = this.model.stateFromArrays(arrays);
    if (this.logits) {
      const vocab = this.model.vocabSize;
      state.logits = takeRows(this.logits, [this.batch, vocab], 0, list);
    }
    return state;
  }

  /**
   * One state whose rows are those of `states`, in order (to batch sequences together).
   * @param {State[]} states
   */
  static concat(states) {
    if (!Array.isArray(states) || states.length === 0) throw new RWKVEdgeError("concat needs at least one state");
    const first = states[0];
    for (const s of states.slice(1)) s.fits(first.model);
    const parts = states.map((s) => s.toArrays());
    /** @type {Record<string, HostTensor & {dtype: string}>} */
    const arrays = {};
    for (const spec of first.specs) {
      const joined = concatRows(
        parts.map((p) => p[spec.name]),
        batchAxis(spec),
      );
      arrays[spec.name] = { ...joined, dtype: spec.dtype };
    }
    const state = first.model.stateFromArrays(arrays);
    if (states.every((s) => s.logits)) {
      const vocab = first.model.vocabSize;
      state.logits = /** @type {Float32Array} */ (
        concatRows(
          states.map((s) => ({ data: /** @type {Float32Array} */ (s.logits), shape: [s.batch, vocab] })),
          0,
        ).data
      );
    }
    return state;
  }

  /**
   * The state as an .npz, the file Python's State.save writes: __meta__ (JSON: format, architecture, batch) and
   * state.<name> per tensor.
   * @returns {Uint8Array}
   */
  save() {
    const meta = { format: STATE_FORMAT, architecture: this.model.manifest.architecture, batch: this.batch };
    /** @type {Record<string, import("./npy.js").NpyArray>} */
    const entries = { [META_KEY]: { dtype: "str", shape: [], data: [pythonJson(meta)] } };
    for (const [name, array] of Object.entries(this.toArrays())) {
      entries[TENSOR_PREFIX + name] = { dtype: array.dtype, shape: array.shape, data: array.data };
    }
    return writeNpz(entries);
  }

  /**
   * Host arrays by name from a state file's bytes, checked as Python's State.load checks them.
   * @param {Uint8Array} bytes
   * @param {import("./manifest.js").Manifest} manifest
   * @param {string} [where]
   */
  static parse(bytes, manifest, where = "state file") {
    const notState = () =>
      new RWKVEdgeError(`${where}: not an rwkv-edge state file (expected an .npz written by State.save)`);
    if (!(bytes instanceof Uint8Array)) throw new RWKVEdgeError(`${where}: expected the file's bytes as a Uint8Array`);
    /** @type {Record<string, import("./npy.js").NpyArray>} */
    let entries;
    /** @type {any} */
    let meta;
    try {
      entries = readNpz(bytes, where);
      const metaArray = entries[META_KEY];
      if (!metaArray || metaArray.dtype !== "str" || metaArray.shape.length !== 0) throw notState();
      meta = JSON.parse(/** @type {string[]} */ (metaArray.data)[0]);
    } catch {
      throw notState();
    }
    if (!meta || typeof meta !== "object" || meta.format !== STATE_FORMAT) {
      const found = meta && typeof meta === "object" ? meta.format : undefined;
      throw new RWKVEdgeError(
        `${where}: state format must be ${JSON.stringify(STATE_FORMAT)}, ` +
          `found ${found === undefined ? "none" : JSON.stringify(found)}`,
      );
    }
    if (!sameArchitecture(meta.architecture, manifest.architecture)) {
      throw new RWKVEdgeError(
        `${where}: state was saved for ${describeArchitecture(meta.architecture)}, ` +
          `but this model is ${describeArchitecture(/** @type {any} */ (manifest.architecture))}`,
      );
    }
    /** @type {Record<string, any>} */
    const arrays = {};
    for (const [key, array] of Object.entries(entries)) {
      if (key.startsWith(TENSOR_PREFIX)) arrays[key.slice(TENSOR_PREFIX.length)] = array;
    }
    checkStateArrays(manifest.state, arrays, where);
    return /** @type {Record<string, HostTensor & {dtype: string}>} */ (arrays);
  }
}

/**
 * JSON as Python's json.dumps writes it (", " and ": " separators, non-ASCII escaped), so a state file saved here
 * holds the same __meta__ text as one saved by Python.
 * @param {unknown} value
 */
export function pythonJson(value) {
  if (value === null || typeof value !== "object") {
    const text = JSON.stringify(value);
    return text.replace(/[\u007f-\uffff]/g, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));
  }
  if (Array.isArray(value)) return "[" + value.map(pythonJson).join(", ") + "]";
  return (
    "{" +
    Object.entries(value)
      .map(([k, v]) => `${pythonJson(k)}: ${pythonJson(v)}`)
      .join(", ") +
    "}"
  );
}
