/** The JS tokenizers against Python's: the same ids for the same text, and decode gives the text back. */
import assert from "node:assert/strict";
import { test } from "node:test";

import { loadModel } from "../../src/index.js";
import { BYTES_EXPORT_DIR, EXPORT_DIR, REFERENCE , SKIP_FIXTURES } from "./fixtures.js";

const { tokenizer: ref } = REFERENCE;

/** @param {string} dir */
async function tokenizerOf(dir) {
  return (await loadModel(dir, { backend: "node" })).loadTokenizer();
}

test("world: the ids of Python's WorldTokenizer on multilingual text with emoji and CJK, and back", { skip: SKIP_FIXTURES }, async () => {
  const world = await tokenizerOf(EXPORT_DIR);
  assert.deepEqual(world.encode(ref.text), ref.world);
  assert.equal(world.decode(ref.world), ref.text);
});

test("world: random tokens decode to Python's bytes, and their text encodes to Python's ids", { skip: SKIP_FIXTURES }, async () => {
  const world = await tokenizerOf(EXPORT_DIR);
  assert.equal(Buffer.from(world.decodeBytes(ref.random_ids)).toString("hex"), ref.random_ids_bytes);
  assert.equal(world.decode(ref.random_ids), ref.random_text);
  assert.deepEqual(world.encode(ref.random_text), ref.random_text_world);
});

test("bytes: the ids of Python's BytesTokenizer, and back", { skip: SKIP_FIXTURES }, async () => {
  const bytes = await tokenizerOf(BYTES_EXPORT_DIR);
  assert.deepEqual(bytes.encode(ref.text), ref.bytes);
  assert.equal(bytes.decode(ref.bytes), ref.text);
});
