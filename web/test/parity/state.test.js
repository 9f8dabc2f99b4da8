/**
 * State files across languages: a state Python saved (State.save) resumes in JS with Python's next logits; a state
 * JS saved is written to RWKV_EDGE_WEB_OUT, where tests/test_web_parity.py loads it with State.load and continues.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";

import { loadModel } from "../../src/index.js";
import { FP32_BOUND } from "./bounds.js";
import { stdDeviation } from "./deviation.js";
import { EXPORT_DIR, OUT, REFERENCE, readF32, readFixture , SKIP_FIXTURES } from "./fixtures.js";

const { state: ref } = REFERENCE;

for (const backend of ["node", "wasm"]) {
  test(`${backend}: a state saved in Python resumes with Python's next logits`, { skip: SKIP_FIXTURES }, async () => {
    const model = await loadModel(EXPORT_DIR, { backend, prefillChunk: REFERENCE.prefill_chunk });
    const state = model.loadState(readFixture(ref.file));
    assert.equal(state.batch, ref.next_tokens.length);
    const logits = await model.step(ref.next_tokens, state);
    const deviation = stdDeviation(logits, readF32(ref.next_logits), REFERENCE.vocab_size);
    assert.ok(deviation <= FP32_BOUND, `${deviation} of std, bound ${FP32_BOUND}`);
  });
}

test("node: a state saved in JS after the same prompt, for Python to load", { skip: SKIP_FIXTURES }, async () => {
  const model = await loadModel(EXPORT_DIR, { backend: "node", prefillChunk: REFERENCE.prefill_chunk });
  const state = model.newState(ref.prompt.length);
  await model.feed(ref.prompt, state);
  const bytes = state.save();
  fs.writeFileSync(path.join(OUT, "js_b2.npz"), bytes);
  // JS reads its own file back to the same next logits as the state it saved.
  const again = model.loadState(bytes);
  const expected = await model.step(ref.next_tokens, state);
  assert.deepEqual(await model.step(ref.next_tokens, again), expected);
});
