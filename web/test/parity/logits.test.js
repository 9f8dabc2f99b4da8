/**
 * The JS runtime's logits against the Python runtime's on the same export: 64 steps at batch 1 and 2, and a prompt
 * fed through the sequence graph in chunks, on onnxruntime-node and on onnxruntime-web's wasm backend (in Node).
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { loadModel } from "../../src/index.js";
import { parityFor } from "./bounds.js";
import { stdDeviation, worstStep } from "./deviation.js";
import { EXPORT_DIR, REFERENCE, SKIP_FIXTURES, readF32 } from "./fixtures.js";

const BACKENDS = ["node", "wasm"];
const vocab = REFERENCE.vocab_size;

describe("logits against the Python runtime", { skip: SKIP_FIXTURES }, () => {
  for (const backend of BACKENDS) {
    for (const precision of Object.keys(REFERENCE.precisions)) {
      const { reference, bound } = parityFor(backend, precision);
      const files = REFERENCE.precisions[reference];
      describe(`${backend} ${precision} against Python ${reference}`, () => {
        /** @type {Promise<import("../../src/index.js").RWKVModel>} */
        let opened;
        const model = () =>
          (opened ??= loadModel(EXPORT_DIR, { backend, precision, prefillChunk: REFERENCE.prefill_chunk }));

        for (const batch of [1, 2]) {
          test(`${REFERENCE.steps} steps at batch ${batch} within ${bound} of std`, async (t) => {
            const m = await model();
            const state = m.newState(batch);
            const got = [];
            for (const ids of REFERENCE.step_tokens[batch]) got.push(await m.step(ids, state));
            const worst = worstStep(got, readF32(files.steps[batch]), vocab);
            t.diagnostic(`worst step ${worst.step}: ${worst.deviation.toExponential(2)} of std`);
            assert.ok(worst.deviation <= bound, `step ${worst.step}: ${worst.deviation} of std, bound ${bound}`);
          });

          test(`sequence graph feed at batch ${batch} within ${bound} of std`, async (t) => {
            const m = await model();
            const prompt = REFERENCE.feed_tokens[batch];
            const got = await m.feed(batch === 1 ? prompt[0] : prompt, m.newState(batch));
            const deviation = stdDeviation(got, readF32(files.feed[batch]), vocab);
            t.diagnostic(`${deviation.toExponential(2)} of std`);
            assert.ok(deviation <= bound, `feed: ${deviation} of std, bound ${bound}`);
          });
        }
      });
    }
  }
});
