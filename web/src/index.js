/** rwkv-edge-web: run rwkv-edge exports with ONNX Runtime in the browser (wasm, WebGPU) and in Node. */
export { RWKVEdgeError } from "./errors.js";
export { loadModel, RWKVModel, DEFAULT_PREFILL_CHUNK } from "./model.js";
export { State, STATE_FORMAT } from "./state.js";
export { parseManifest, findGraph, FORMAT, MANIFEST_NAME } from "./manifest.js";
export { BACKENDS, WASM32_LIMIT_BYTES, defaultBackend } from "./backends.js";
export { BytesTokenizer, WorldTokenizer } from "./tokenizers/index.js";
export { Utf8Stream } from "./utf8.js";
export { readNpy, writeNpy } from "./npy.js";
export { readNpz, writeNpz } from "./npz.js";
export { generate, Generation, StopStringFilter } from "./generate.js";
export { Sampler, samplingParams, sampleNext, applyPenalties, argmax } from "./sampling.js";
export { NumpyRandom } from "./random.js";
