/**
 * The ORT-format graphs (`rwkv-export ort`) against the .onnx graphs they were converted from, in the same runtime:
 * the same steps give the same logits, on onnxruntime-node and on wasm, every precision the export lists.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { loadModel } from "../../src/index.js";
import { FP32_BOUND } from "./bounds.js";
import { worstStep } from "./deviation.js";
import { ORT_EXPORT_DIR, REFERENCE, SKIP_FIXTURES } from "./fixtures.js";

const STEPS = 16;

/** @param {string} backend @param {string} precision @param {"onnx" | "ort"} format */
async function stepLogits(backend, precision, format) {
  const model = await loadModel(ORT_EXPORT_DIR, { backend, precision, format });
  assert.equal(model.format, format);
  if (format === "ort") assert.ok(model.graphs.decode.ort, `${precision}: the export lists no ORT file`);
  const state = model.newState(2);
  const out = [];
  for (const ids of REFERENCE.step_tokens[2].slice(0, STEPS)) out.push(await model.step(ids, state));
  return out;
}

describe("ORT format against ONNX", { skip: SKIP_FIXTURES }, () => {
  for (const backend of ["node", "wasm"]) {
    for (const precision of Object.keys(REFERENCE.precisions)) {
      test(`${backend} ${precision}: ${STEPS} steps at batch 2 within ${FP32_BOUND} of std`, async (t) => {
        const onnx = await stepLogits(backend, precision, "onnx");
        const ort = await stepLogits(backend, precision, "ort");
        const reference = new Float32Array(onnx.length * onnx[0].length);
        onnx.forEach((logits, i) => reference.set(logits, i * logits.length));
        const worst = worstStep(ort, reference, REFERENCE.vocab_size);
        t.diagnostic(`worst step ${worst.step}: ${worst.deviation.toExponential(2)} of std`);
        assert.ok(worst.deviation <= FP32_BOUND, `step ${worst.step}: ${worst.deviation} of std`);
      });
    }
  }
});
