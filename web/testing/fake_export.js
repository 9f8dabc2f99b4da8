/**
 * A tiny RWKV-shaped export for the tests, written from JS: the made-up math of tests/fake_model.py, following
 * the graph contract of docs/format.md.
 *
 *   e          = emb[input_ids]                               [batch, C]
 *   att_x_out  = 0.5 * att_x + e   (every layer)              [batch, L, C]   init 0 (or init_file)
 *   att_p_out  = max(att_p, e)     (every layer)              [batch, L, C]   init -1e38
 *   logits     = (mean_L(att_x_out) + skip[input_ids]) @ head [batch, vocab]
 *
 * The sequence graph (input_ids [batch, seq]) computes what stepping seq times does, without a loop.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";

import { writeNpy } from "../src/npy.js";
import { NumpyRandom } from "../src/random.js";
import { FLOAT, INT64, writeModel } from "./onnx_writer.js";

/**
 * @typedef {{vocab?: number, nLayer?: number, nEmbd?: number, seed?: number, withSequence?: boolean,
 *   external?: boolean, initFile?: boolean, manifest?: (m: any) => any}} FakeOptions
 * @typedef {{emb: Float32Array, head: Float32Array, skip: Float32Array, vocab: number, nLayer: number, nEmbd: number,
 *   initAttX: Float32Array | null}} FakeWeights
 */

/** @param {FakeOptions} options @returns {FakeWeights} */
export function fakeWeights(options = {}) {
  const vocab = options.vocab ?? 16;
  const nLayer = options.nLayer ?? 2;
  const nEmbd = options.nEmbd ?? 4;
  const rng = new NumpyRandom(options.seed ?? 0);
  const fill = (/** @type {number} */ n) => Float32Array.from({ length: n }, () => 2 * rng.random() - 1);
  return {
    emb: fill(vocab * nEmbd),
    head: fill(nEmbd * vocab),
    skip: fill(vocab * nEmbd),
    vocab,
    nLayer,
    nEmbd,
    initAttX: options.initFile ? fill(nLayer * nEmbd) : null,
  };
}

/**
 * The step graph's math, one sequence at a time: ids [batch] and state -> logits [batch * vocab], next state.
 * @param {FakeWeights} w
 * @param {number[]} ids
 * @param {{att_x: Float32Array, att_p: Float32Array}} state  [batch, L, C] each
 */
export function fakeStep(w, ids, state) {
  const { nLayer: L, nEmbd: C, vocab: V } = w;
  const attX = new Float32Array(state.att_x.length);
  const attP = new Float32Array(state.att_p.length);
  const logits = new Float32Array(ids.length * V);
  ids.forEach((id, b) => {
    const mixed = new Float64Array(C);
    for (let l = 0; l < L; l++) {
      for (let c = 0; c < C; c++) {
        const i = (b * L + l) * C + c;
        const e = w.emb[id * C + c];
        attX[i] = 0.5 * state.att_x[i] + e;
        attP[i] = Math.max(state.att_p[i], e);
        mixed[c] += attX[i] / L;
      }
    }
    for (let c = 0; c < C; c++) mixed[c] += w.skip[id * C + c];
    for (let v = 0; v < V; v++) {
      let s = 0;
      for (let c = 0; c < C; c++) s += mixed[c] * w.head[c * V + v];
      logits[b * V + v] = s;
    }
  });
  return { logits, state: { att_x: attX, att_p: attP } };
}

/** @param {string} name @param {Float32Array | BigInt64Array} data @param {number[]} dims */
const init = (name, data, dims) => ({ name, type: data instanceof Float32Array ? FLOAT : INT64, dims, data });

/** @param {FakeWeights} w */
function weights(w) {
  return [
    init("emb", w.emb, [w.vocab, w.nEmbd]),
    init("head", w.head, [w.nEmbd, w.vocab]),
    init("skip", w.skip, [w.vocab, w.nEmbd]),
  ];
}

/** @param {FakeWeights} w */
function stateIO(w) {
  const shape = ["batch", w.nLayer, w.nEmbd];
  return {
    inputs: [
      { name: "att_x", type: FLOAT, shape },
      { name: "att_p", type: FLOAT, shape },
    ],
    outputs: [
      { name: "att_x_out", type: FLOAT, shape },
      { name: "att_p_out", type: FLOAT, shape },
    ],
  };
}

const scalars = () => [
  init("half", Float32Array.of(0.5), []),
  init("one", Float32Array.of(1), []),
  init("axis1", BigInt64Array.of(1n), [1]),
  init("last", BigInt64Array.of(-1n), []),
  init("zero_i", BigInt64Array.of(0n), []),
  init("one_i", BigInt64Array.of(1n), []),
];

/** @param {FakeWeights} w */
function stepGraph(w) {
  const io = stateIO(w);
  return {
    name: "fake_rwkv_step",
    nodes: [
      { op: "Gather", inputs: ["emb", "input_ids"], outputs: ["e"] },
      { op: "Unsqueeze", inputs: ["e", "axis1"], outputs: ["e3"] },
      { op: "Mul", inputs: ["att_x", "half"], outputs: ["att_x_half"] },
      { op: "Add", inputs: ["att_x_half", "e3"], outputs: ["att_x_out"] },
      { op: "Max", inputs: ["att_p", "e3"], outputs: ["att_p_out"] },
      { op: "ReduceMean", inputs: ["att_x_out", "axis1"], outputs: ["mean"], attributes: { keepdims: 0 } },
      { op: "Gather", inputs: ["skip", "input_ids"], outputs: ["skip_row"] },
      { op: "Add", inputs: ["mean", "skip_row"], outputs: ["mixed_out"] },
      { op: "MatMul", inputs: ["mixed_out", "head"], outputs: ["logits"] },
    ],
    inputs: [{ name: "input_ids", type: INT64, shape: ["batch"] }, ...io.inputs],
    outputs: [{ name: "logits", type: FLOAT, shape: ["batch", w.vocab] }, ...io.outputs],
    initializers: [...weights(w), ...scalars()],
  };
}

/** @param {FakeWeights} w */
function sequenceGraph(w) {
  const io = stateIO(w);
  return {
    name: "fake_rwkv_sequence",
    nodes: [
      { op: "Gather", inputs: ["emb", "input_ids"], outputs: ["e"] },
      { op: "Shape", inputs: ["input_ids"], outputs: ["seq_1"], attributes: { start: 1, end: 2 } },
      { op: "Squeeze", inputs: ["seq_1"], outputs: ["seq"] },
      { op: "Range", inputs: ["zero_i", "seq", "one_i"], outputs: ["t_i"] },
      { op: "Cast", inputs: ["t_i"], outputs: ["t"], attributes: { to: FLOAT } },
      { op: "Cast", inputs: ["seq"], outputs: ["seq_f"], attributes: { to: FLOAT } },
      { op: "Sub", inputs: ["seq_f", "one"], outputs: ["seq_m1"] },
      { op: "Sub", inputs: ["seq_m1", "t"], outputs: ["age"] },
      { op: "Pow", inputs: ["half", "age"], outputs: ["weight"] },
      { op: "Einsum", inputs: ["e", "weight"], outputs: ["mixed"], attributes: { equation: "btc,t->bc" } },
      { op: "Unsqueeze", inputs: ["mixed", "axis1"], outputs: ["mixed3"] },
      { op: "Pow", inputs: ["half", "seq_f"], outputs: ["decay"] },
      { op: "Mul", inputs: ["att_x", "decay"], outputs: ["att_x_decayed"] },
      { op: "Add", inputs: ["att_x_decayed", "mixed3"], outputs: ["att_x_out"] },
      { op: "ReduceMax", inputs: ["e", "axis1"], outputs: ["e_max"], attributes: { keepdims: 1 } },
      { op: "Max", inputs: ["att_p", "e_max"], outputs: ["att_p_out"] },
      { op: "Gather", inputs: ["input_ids", "last"], outputs: ["last_ids"], attributes: { axis: 1 } },
      { op: "ReduceMean", inputs: ["att_x_out", "axis1"], outputs: ["mean"], attributes: { keepdims: 0 } },
      { op: "Gather", inputs: ["skip", "last_ids"], outputs: ["skip_row"] },
      { op: "Add", inputs: ["mean", "skip_row"], outputs: ["mixed_out"] },
      { op: "MatMul", inputs: ["mixed_out", "head"], outputs: ["logits"] },
    ],
    inputs: [{ name: "input_ids", type: INT64, shape: ["batch", "seq"] }, ...io.inputs],
    outputs: [{ name: "logits", type: FLOAT, shape: ["batch", w.vocab] }, ...io.outputs],
    initializers: [...weights(w), ...scalars()],
  };
}

/**
 * The export's files by name: model.onnx (+ prefill.onnx), rwkv.json, and with `external` the weights in
 * model.onnx.data, which the sequence graph reads too (as a real export's does).
 * @param {FakeOptions} [options]
 * @returns {{files: Record<string, Uint8Array>, weights: FakeWeights, manifest: any}}
 */
export function fakeExport(options = {}) {
  const w = fakeWeights(options);
  const external = options.external ? { location: "model.onnx.data", minBytes: 64 } : undefined;
  /** @type {Record<string, Uint8Array>} */
  const files = {};
  const step = writeModel({ ...stepGraph(w), external });
  files["model.onnx"] = step.model;
  if (external) files["model.onnx.data"] = step.data;
  const graphs = [
    {
      file: "model.onnx",
      kind: "step",
      precision: "fp32",
      input: "input_ids",
      output: "logits",
      opset: 18,
      logits: "last",
    },
  ];
  if (options.withSequence ?? true) {
    const sequence = writeModel({ ...sequenceGraph(w), external: external && { ...external, existing: step.placed } });
    files["prefill.onnx"] = sequence.model;
    graphs.push({ ...graphs[0], file: "prefill.onnx", kind: "sequence" });
  }
  const shape = ["batch", w.nLayer, w.nEmbd];
  if (w.initAttX)
    files["att_x_init.npy"] = writeNpy({ dtype: "float32", shape: [w.nLayer, w.nEmbd], data: w.initAttX });
  let manifest = {
    format: "rwkv-edge/1",
    architecture: {
      version: "7",
      n_layer: w.nLayer,
      n_embd: w.nEmbd,
      n_head: 1,
      head_size: w.nEmbd,
      vocab_size: w.vocab,
      n_ffn: 4 * w.nEmbd,
    },
    tokenizer: { kind: "bytes", file: null },
    graphs,
    state: [
      {
        name: "att_x",
        input: "att_x",
        output: "att_x_out",
        shape,
        dtype: "float32",
        init: 0.0,
        init_file: w.initAttX ? "att_x_init.npy" : null,
      },
      { name: "att_p", input: "att_p", output: "att_p_out", shape, dtype: "float32", init: -1e38, init_file: null },
    ],
    source: { kind: "fake test model", seed: options.seed ?? 0 },
  };
  if (options.manifest) manifest = options.manifest(manifest);
  files["rwkv.json"] = new TextEncoder().encode(JSON.stringify(manifest, null, 2));
  return { files, weights: w, manifest };
}

/**
 * fakeExport written into `dir`; returns what fakeExport does.
 * @param {string} dir @param {FakeOptions} [options]
 */
export function writeFakeExport(dir, options = {}) {
  const made = fakeExport(options);
  mkdirSync(dir, { recursive: true });
  for (const [name, bytes] of Object.entries(made.files)) writeFileSync(path.join(dir, name), bytes);
  return made;
}

/** The state as fakeStep wants it, from a batch's initial values. @param {FakeWeights} w @param {number} batch */
export function fakeInitialState(w, batch) {
  const n = batch * w.nLayer * w.nEmbd;
  const attX = new Float32Array(n);
  if (w.initAttX) for (let b = 0; b < batch; b++) attX.set(w.initAttX, b * w.nLayer * w.nEmbd);
  return { att_x: attX, att_p: new Float32Array(n).fill(-1e38) };
}
