/**
 * How close the JS runtime's logits must be to the Python runtime's, in units of the reference logits' std
 * (max|got - ref| / std, per step and row; docs/numerics.md).
 */

// fp32: the contract's bound for any fp32 implementation of the graph (docs/numerics.md).
export const FP32_BOUND = 1e-4;

// Quantized graphs per backend. onnxruntime-node runs the same CPU kernels as Python's onnxruntime, so it is held
// to the fp32 bound. onnxruntime-web's wasm MatMulNBits does not quantize the activations as the x86 kernel does
// (accuracy_level 4 there), so its logits differ by a fraction of a quantization step per matrix, summed over the
// layers; the bound is about 3x the worst deviation measured over several random models and token sequences
// (benchmarks/results/web_parity.md). A wrong state, token or weight is off by several std.
export const QUANTIZED_BOUNDS = { node: FP32_BOUND, wasm: 1.0 };

/** @param {string} backend @param {string} precision */
export function boundFor(backend, precision) {
  if (precision === "fp32") return FP32_BOUND;
  const bound = QUANTIZED_BOUNDS[/** @type {keyof typeof QUANTIZED_BOUNDS} */ (backend)];
  if (bound === undefined) throw new Error(`no measured bound for ${precision} on backend ${backend}`);
  return bound;
}
