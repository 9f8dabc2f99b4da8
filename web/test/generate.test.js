import assert from "node:assert/strict";
import test from "node:test";

import { RWKVEdgeError } from "../src/errors.js";
import { StopStringFilter, generate } from "../src/generate.js";
import { loadModel } from "../src/model.js";
import { BytesTokenizer } from "../src/tokenizers/bytes.js";
import { Utf8Stream } from "../src/utf8.js";
import { fakeExport } from "../testing/fake_export.js";

/**
 * A model whose greedy continuation is `script` (token ids), whatever the prompt: each call's logits peak at the
 * next scripted id. Records what it was fed.
 * @param {number[]} script
 */
function scriptedModel(script, vocabSize = 256) {
  let at = 0;
  const next = () => {
    const logits = new Float32Array(vocabSize);
    logits[script[Math.min(at++, script.length - 1)]] = 10;
    return logits;
  };
  return {
    vocabSize,
    fed: /** @type {number[][]} */ ([]),
    stepped: /** @type {number[]} */ ([]),
    newState: () => ({ batch: 1, logits: null }),
    async feed(/** @type {number[]} */ ids, /** @type {any} */ state) {
      this.fed.push(ids);
      return (state.logits = next());
    },
    async step(/** @type {number[]} */ ids, /** @type {any} */ state) {
      this.stepped.push(ids[0]);
      return (state.logits = next());
    },
  };
}

/** @param {string} text */
const bytesOf = (text) => Array.from(new TextEncoder().encode(text));

/** @param {AsyncIterable<string>} gen */
async function pieces(gen) {
  const out = [];
  for await (const p of gen) out.push(p);
  return out;
}

test("utf8 stream: a character split over pushes comes out whole", () => {
  const s = new Utf8Stream();
  const emoji = new TextEncoder().encode("a😀中");
  assert.equal(s.push(emoji.subarray(0, 2)), "a");
  assert.equal(s.push(emoji.subarray(2, 4)), "");
  assert.equal(s.push(emoji.subarray(4, 6)), "😀");
  assert.equal(s.push(emoji.subarray(6)), "中");
  assert.equal(s.push(Uint8Array.of(0xe4, 0xb8)), "");
  assert.equal(s.flush(), "\ufffd");
  assert.equal(new Utf8Stream().push(Uint8Array.of(0xff, 0x41)), "\ufffdA");
});

test("stop strings split over pieces are held back and never emitted", () => {
  const f = new StopStringFilter(["\nQ:", "END"]);
  assert.equal(f.push("answer\n"), "answer");
  assert.equal(f.push("Q"), "");
  assert.equal(f.push("x"), "\nQx");
  assert.equal(f.push("E"), "");
  assert.equal(f.push("NDtail"), "");
  assert.ok(f.stopped);
  assert.equal(f.flush(), "");
  const g = new StopStringFilter(["ab"]);
  assert.equal(g.push("xa"), "x");
  assert.equal(g.flush(), "a");
  assert.throws(() => new StopStringFilter([""]), {
    name: "RWKVEdgeError",
    message: 'stop strings must be non-empty text, found ""',
  });
});

test("generate streams whole characters and stops before a stop string", async () => {
  const model = scriptedModel(bytesOf("héllo 😀 world\nQ: next"));
  const gen = generate(/** @type {any} */ (model), new BytesTokenizer(), "hi", {
    maxTokens: 100,
    temperature: 0,
    stop: ["\nQ:"],
  });
  const out = await pieces(gen);
  assert.equal(out.join(""), "héllo 😀 world");
  assert.ok(out.every((p) => !p.includes("\ufffd")));
  assert.equal(gen.text, "héllo 😀 world");
  assert.equal(gen.finishReason, "stop");
  assert.deepEqual(model.fed, [bytesOf("hi")]);
  // the state has consumed every sampled token, the stop string's included
  assert.deepEqual(gen.tokens, bytesOf("héllo 😀 world\nQ:"));
  assert.deepEqual(model.stepped, gen.tokens);
});

test("generate ends on maxTokens (finish 'length') and on the end-of-text id (finish 'eos')", async () => {
  const long = generate(/** @type {any} */ (scriptedModel(bytesOf("abcdef"))), new BytesTokenizer(), "x", {
    maxTokens: 3,
    temperature: 0,
  });
  assert.equal((await pieces(long)).join(""), "abc");
  assert.equal(long.finishReason, "length");
  const eos = generate(/** @type {any} */ (scriptedModel(bytesOf("ab\0cd"))), new BytesTokenizer(), "x", {
    temperature: 0,
    stopTokenIds: [0],
  });
  assert.equal((await pieces(eos)).join(""), "ab");
  assert.equal(eos.finishReason, "eos");
  assert.deepEqual(eos.tokens, [97, 98, 0]);
});

test("a stop string's prefix at the very end is released", async () => {
  const gen = generate(/** @type {any} */ (scriptedModel(bytesOf("abcE"))), new BytesTokenizer(), "x", {
    maxTokens: 4,
    temperature: 0,
    stop: "END",
  });
  assert.deepEqual(await pieces(gen), ["a", "b", "c", "E"], "the held-back E comes with the end");
  assert.equal(gen.finishReason, "length");
});

test("break out of the loop stops the generation", async () => {
  const model = scriptedModel(bytesOf("abcdefgh"));
  const gen = generate(/** @type {any} */ (model), new BytesTokenizer(), "x", { maxTokens: 8, temperature: 0 });
  for await (const p of gen) if (p === "b") break;
  assert.deepEqual(model.stepped, bytesOf("ab"));
});

test("generate continues a state, and greedy text equals stepping the model by hand", async () => {
  const model = await loadModel({ files: fakeExport({ vocab: 256, nEmbd: 8 }).files });
  const tokenizer = await model.loadTokenizer();
  const first = generate(model, tokenizer, "ab", { maxTokens: 5, temperature: 0 });
  await pieces(first);
  const more = generate(model, tokenizer, "", { maxTokens: 5, temperature: 0, state: first.state });
  await pieces(more);
  const state = model.newState(1);
  let logits = await model.feed(bytesOf("ab"), state);
  const byHand = [];
  for (let i = 0; i < 10; i++) {
    let best = 0;
    for (let v = 1; v < 256; v++) if (logits[v] > logits[best]) best = v;
    byHand.push(best);
    logits = await model.step([best], state);
  }
  assert.deepEqual([...first.tokens, ...more.tokens], byHand);
});

test("bad generate options are refused before anything runs", async () => {
  const model = scriptedModel([1]);
  const tokenizer = new BytesTokenizer();
  const refused = [
    [{ maxTokens: -1 }, "maxTokens must be a whole number >= 0, found -1"],
    [{ maxTokens: 1.5 }, "maxTokens must be a whole number >= 0, found 1.5"],
    [{ topP: 2 }, "topP must be in [0, 1], found 2"],
    [{ stop: [""] }, 'stop strings must be non-empty text, found ""'],
    [{ seed: 1.5 }, "seed must be a whole number >= 0, found 1.5"],
    [{ state: { batch: 2 } }, "generate runs one sequence, but the state has batch 2; pick a row with state.select(i)"],
  ];
  for (const [options, message] of refused) {
    assert.throws(
      () => generate(/** @type {any} */ (model), tokenizer, "x", /** @type {any} */ (options)),
      (e) => e instanceof RWKVEdgeError && e.message === message,
    );
  }
  assert.throws(() => generate(/** @type {any} */ (model), tokenizer, [300]), {
    message: "prompt token id 300 is outside the model's vocabulary [0, 256)",
  });
  assert.throws(() => generate(/** @type {any} */ (model), tokenizer, ""), {
    message: "empty prompt and no logits to continue from: give a prompt, or a state that has been stepped",
  });
  assert.deepEqual(model.fed, []);
});
