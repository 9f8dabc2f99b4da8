// Types of rwkv-edge-web's public API (src/index.js).

export class RWKVEdgeError extends Error {}

export type Backend = "wasm" | "webgpu" | "webgpu-jsep" | "node";
export type ModelSource = string | URL | { files: Record<string, Uint8Array | ArrayBuffer> };

export interface Architecture {
  version: string;
  n_layer: number;
  n_embd: number;
  n_head: number;
  head_size: number;
  vocab_size: number;
  n_ffn: number;
}
export interface TokenizerSpec {
  kind: "world" | "neox20b" | "bytes";
  file: string | null;
}
export interface GraphSpec {
  file: string;
  kind: "step" | "sequence";
  precision: string;
  input: string;
  output: string;
  opset: number;
  logits: "last" | "all";
  rescale_every: number;
  needs: string[] | null;
  backends: string[] | null;
  ort: string | null;
}
export interface StateSpec {
  name: string;
  input: string;
  output: string;
  shape: (number | "batch")[];
  dtype: string;
  init: number;
  init_file: string | null;
}
export interface Manifest {
  format: string;
  architecture: Architecture;
  tokenizer: TokenizerSpec;
  graphs: GraphSpec[];
  state: StateSpec[];
  source: Record<string, unknown>;
}

export interface LoadOptions {
  /** default: "node" in Node, "wasm" in a browser */
  backend?: Backend;
  /** a graphs[].precision of the manifest; default "fp32" */
  precision?: string;
  /** "ort": the graphs' ORT-format files (graphs[].ort); default "onnx" */
  format?: "onnx" | "ort";
  /** intra-op threads; wasm uses them only in a cross-origin isolated page (else 1) */
  threads?: number;
  /** tokens per sequence-graph call; default 128 */
  prefillChunk?: number;
  /** false: prompts are stepped token by token; default true */
  useSequenceGraph?: boolean;
  /** decode through the sequence graph (one session); default: true on node and wasm, false on WebGPU */
  oneSession?: boolean;
  /** an onnxruntime module to use instead of importing the backend's package */
  ort?: unknown;
  /** onnxruntime-web's env.wasm.wasmPaths */
  wasmPaths?: string | Record<string, string>;
}

export type StateData = Float32Array | Float64Array | Uint16Array;
export interface HostTensor {
  data: StateData;
  shape: number[];
  dtype: string;
}

export class State {
  readonly model: RWKVModel;
  readonly batch: number;
  readonly specs: StateSpec[];
  /** logits [batch * vocab] after the last step or feed */
  logits: Float32Array | null;
  /** true unless WebGPU keeps the tensors on the GPU */
  readonly onHost: boolean;
  download(): Promise<State>;
  toArrays(): Record<string, HostTensor>;
  copy(): State;
  select(rows: number | number[]): State;
  static concat(states: State[]): State;
  /** the .npz Python's State.save writes */
  save(): Uint8Array;
}

export interface Tokenizer {
  readonly kind: string;
  readonly vocabSize: number;
  readonly eosId: number | null;
  encode(text: string): number[];
  decode(ids: Iterable<number>): string;
  decodeBytes(ids: Iterable<number>): Uint8Array;
}
export class BytesTokenizer implements Tokenizer {
  readonly kind: "bytes";
  readonly vocabSize: 256;
  readonly eosId: null;
  encode(text: string): number[];
  decode(ids: Iterable<number>): string;
  decodeBytes(ids: Iterable<number>): Uint8Array;
}
export class WorldTokenizer implements Tokenizer {
  constructor(tokens: Map<number, Uint8Array>);
  static fromText(text: string, where?: string): WorldTokenizer;
  readonly kind: "world";
  readonly vocabSize: number;
  readonly eosId: 0;
  encode(text: string): number[];
  encodeBytes(bytes: Uint8Array): number[];
  decode(ids: Iterable<number>): string;
  decodeBytes(ids: Iterable<number>): Uint8Array;
}

export class RWKVModel {
  readonly manifest: Manifest;
  readonly backend: Backend;
  readonly precision: string;
  readonly format: "onnx" | "ort";
  readonly vocabSize: number;
  readonly prefillChunk: number;
  readonly oneSession: boolean;
  /** the graphs opened: `decode` is the one step() runs */
  readonly graphs: { step: GraphSpec; sequence: GraphSpec | null; decode: GraphSpec };
  readonly ort: unknown;
  newState(batch?: number): State;
  stateFromArrays(arrays: Record<string, { data: StateData; shape: number[]; dtype?: string }>): State;
  loadState(bytes: Uint8Array): State;
  loadTokenizer(): Promise<Tokenizer>;
  /** one token per row -> logits [batch * vocab] */
  step(ids: number[], state: State): Promise<Float32Array>;
  /** number[] (batch 1) or number[][] (one row each) -> logits after the last token [batch * vocab] */
  feed(ids: number[] | number[][], state: State): Promise<Float32Array>;
  dispose(): Promise<void>;
}

export function loadModel(source: ModelSource, options?: LoadOptions): Promise<RWKVModel>;

export interface SamplingParams {
  temperature?: number;
  topP?: number;
  topK?: number;
  repetitionPenalty?: number;
  presencePenalty?: number;
  frequencyPenalty?: number;
  penaltyDecay?: number;
}
export interface GenerateOptions extends SamplingParams {
  maxTokens?: number;
  stop?: string | string[];
  stopTokenIds?: number[];
  seed?: number | bigint | null;
  state?: State;
}
export class Generation implements AsyncIterableIterator<string> {
  readonly state: State;
  readonly tokens: number[];
  readonly text: string;
  readonly finishReason: "stop" | "eos" | "length" | null;
  [Symbol.asyncIterator](): Generation;
  next(): Promise<IteratorResult<string, undefined>>;
  return(): Promise<IteratorResult<string, undefined>>;
}
export function generate(
  model: RWKVModel,
  tokenizer: Tokenizer,
  prompt: string | number[],
  options?: GenerateOptions,
): Generation;

export class StopStringFilter {
  constructor(stops: string[]);
  readonly stopped: boolean;
  push(text: string): string;
  flush(): string;
}
export class Sampler {
  constructor(
    params: SamplingParams,
    batch: number,
    vocabSize: number,
    seed?: number | bigint | { random(): number } | null,
  );
  readonly counts: Float32Array;
  observe(ids: number[]): void;
  sample(logits: Float32Array): number[];
}
export function samplingParams(params?: SamplingParams): Required<SamplingParams>;
export function sampleNext(
  logits: Float32Array,
  batch: number,
  params: Required<SamplingParams>,
  rng: { random(): number },
): number[];
export function applyPenalties(
  logits: Float32Array,
  counts: Float32Array,
  params: Required<SamplingParams>,
): Float32Array;
export function argmax(row: Float32Array | Float64Array): number;
export class NumpyRandom {
  constructor(seed?: number | bigint);
  nextUint64(): bigint;
  random(): number;
}
export class Utf8Stream {
  push(bytes: Uint8Array): string;
  flush(): string;
}

export interface NpyArray {
  dtype: string;
  shape: number[];
  data: ArrayBufferView | string[];
}
export function readNpy(bytes: Uint8Array, what?: string): NpyArray;
export function writeNpy(array: NpyArray): Uint8Array;
export function readNpz(bytes: Uint8Array, what?: string): Record<string, NpyArray>;
export function writeNpz(arrays: Record<string, NpyArray>): Uint8Array;

export function parseManifest(input: string | Uint8Array | object): Manifest;
export function findGraph(manifest: Manifest, kind: "step" | "sequence", precision: string): GraphSpec;
export const FORMAT: "rwkv-edge/1";
export const MANIFEST_NAME: "rwkv.json";
export const STATE_FORMAT: "rwkv-edge-state/1";
export const DEFAULT_PREFILL_CHUNK: number;
export const BACKENDS: Backend[];
export const WASM32_LIMIT_BYTES: number;
export function defaultBackend(): Backend;
