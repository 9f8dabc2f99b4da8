/**
 * How close the JS runtime's logits must be to the Python runtime's, in units of the reference logits' std
 * (max|got - ref| / std, per step and row; docs/numerics.md), and which of Python's precisions is the reference.
 */

// fp32: the contract's bound for any fp32 implementation of the graph (docs/numerics.md).
export const FP32_BOUND = 1e-4;

/**
 * Quantized graphs, per backend. A lost state or a wrong token puts the logits several std away, so each bound
 * below still catches them. Measured over several random models and token sequences:
 * benchmarks/results/web_parity.md.
 * - node: onnxruntime-node runs the CPU kernels Python's onnxruntime runs, so it is held to the fp32 bound.
 * - wasm int8: onnxruntime-web's MatMulNBits does not quantize the activations as the x86 kernel does
 *   (accuracy_level 4), a fraction of a quantization step per matrix; about 3x the worst deviation measured.
 * - wasm int8-dynamic: held to Python's fp32 logits, not its int8-dynamic ones: the x86 MatMulInteger kernel on a
 *   CPU without VNNI sums uint8 x int8 pairs in saturating 16-bit lanes, which moves the logits further from fp32
 *   than the wasm kernel's exact integer sums do (and by how much depends on the CPU); about 2.3x the worst
 *   deviation from fp32 measured.
 * - wasm int8-rowwise: both kernels sum the integers exactly, but the float ops before a matrix round differently,
 *   and an activation that lands on the other side of a rounding boundary moves its row by a quantization step
 *   (0.083 of std, the worst measured on the tests' model); about 6x that.
 * @type {Record<string, Record<string, {reference: string, bound: number}>>}
 */
export const QUANTIZED = {
  node: {
    int8: { reference: "int8", bound: FP32_BOUND },
    "int8-dynamic": { reference: "int8-dynamic", bound: FP32_BOUND },
    "int8-rowwise": { reference: "int8-rowwise", bound: FP32_BOUND },
    int4: { reference: "int4", bound: FP32_BOUND },
  },
  wasm: {
    int8: { reference: "int8", bound: 1.0 },
    "int8-dynamic": { reference: "fp32", bound: 1.5 },
    "int8-rowwise": { reference: "int8-rowwise", bound: 0.5 },
  },
};

/**
 * The Python precision whose logits a JS `precision` graph on `backend` is compared with, and the bound.
 * @param {string} backend @param {string} precision
 */
export function parityFor(backend, precision) {
  if (precision === "fp32") return { reference: "fp32", bound: FP32_BOUND };
  const entry = QUANTIZED[backend]?.[precision];
  if (!entry) throw new Error(`no measured bound for ${precision} on backend ${backend}`);
  return entry;
}
