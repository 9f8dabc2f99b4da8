import assert from "node:assert/strict";
import test from "node:test";

import { NumpyRandom } from "../src/random.js";
import { Sampler, applyPenalties, argmax, pairwiseSum, sampleNext, samplingParams } from "../src/sampling.js";

test("numpy's default_rng: the doubles np.random.default_rng(seed).random() draws", () => {
  // values printed by numpy 2 for these seeds
  const want = {
    0: [0.6369616873214543, 0.2697867137638703, 0.04097352393619469],
    42: [0.7739560485559633, 0.4388784397520523, 0.8585979199113825],
    1099511627783: [0.829812891829413, 0.25530515834910417, 0.15379071585298754],
  };
  for (const [seed, values] of Object.entries(want)) {
    const rng = new NumpyRandom(Number(seed));
    assert.deepEqual([rng.random(), rng.random(), rng.random()], values);
  }
});

test("greedy is argmax with the first maximum winning, a NaN counting as the maximum", () => {
  assert.equal(argmax(Float32Array.of(1, 3, 3, 2)), 1);
  assert.equal(argmax(Float32Array.of(-Infinity, -Infinity)), 0);
  assert.equal(argmax(Float32Array.of(1, NaN, 5, NaN)), 1);
  const p = samplingParams({ temperature: 0 });
  assert.deepEqual(sampleNext(Float32Array.of(0, 9, 1, 5, 5, 2), 2, p, new NumpyRandom(0)), [1, 0]);
});

test("a seed reproduces the draws; another seed draws others", () => {
  const logits = Float32Array.from({ length: 50 }, (_, i) => Math.sin(i));
  const draw = (seed) => {
    const s = new Sampler({ temperature: 1.5 }, 1, 50, seed);
    return Array.from({ length: 30 }, () => s.sample(logits)[0]);
  };
  assert.deepEqual(draw(5), draw(5));
  assert.notDeepEqual(draw(5), draw(6));
});

test("top-k keeps the k best (ties with the k-th included), top-p the smallest set reaching p", () => {
  const logits = Float32Array.of(5, 4, 4, 1, 0);
  const seen = (params) => {
    const rng = new NumpyRandom(1);
    const ids = new Set();
    for (let i = 0; i < 400; i++) ids.add(sampleNext(logits, 1, samplingParams(params), rng)[0]);
    return [...ids].sort();
  };
  assert.deepEqual(seen({ topK: 1 }), [0]);
  assert.deepEqual(seen({ topK: 2 }), [0, 1, 2]);
  assert.deepEqual(seen({ topP: 0.01 }), [0], "the best token always stays");
  // probabilities ~ 0.58, 0.21, 0.21, 0.01, 0.004: 0.58 + 0.21 reaches 0.7, so the tie's first member stays
  assert.deepEqual(seen({ topP: 0.7 }), [0, 1]);
  assert.deepEqual(seen({ topP: 0.8 }), [0, 1, 2]);
  assert.deepEqual(seen({}), [0, 1, 2, 3, 4]);
});

test("penalties: repetition divides positive and multiplies negative logits; presence and frequency subtract", () => {
  const logits = Float32Array.of(2, -2, 1, 3);
  const counts = Float32Array.of(1, 2, 0, 3);
  const p = samplingParams({ repetitionPenalty: 2, presencePenalty: 0.5, frequencyPenalty: 0.25 });
  assert.deepEqual(Array.from(applyPenalties(logits, counts, p)), [2 / 2 - 0.75, -4 - 1, 1, 3 / 2 - 1.25]);
  const s = new Sampler({ temperature: 0, repetitionPenalty: 100 }, 1, 4, 0);
  assert.deepEqual([s.sample(logits), s.sample(logits), s.sample(logits)], [[3], [0], [2]]);
  const decaying = new Sampler({ penaltyDecay: 0.5, frequencyPenalty: 1 }, 1, 4, 0);
  decaying.observe([1]);
  decaying.observe([1]);
  assert.deepEqual(Array.from(decaying.counts), [0, 1.5, 0, 0]);
});

test("numpy's pairwise sum", () => {
  const a = Float64Array.from({ length: 1000 }, (_, i) => 1 / (i + 1));
  let plain = 0;
  for (const v of a) plain += v;
  assert.ok(Math.abs(pairwiseSum(a, 0, a.length) - plain) < 1e-12);
  assert.equal(pairwiseSum(Float64Array.of(1, 2, 3), 0, 3), 6);
});

test("bad sampling parameters are refused in one line", () => {
  const bad = [
    [{ temperature: -1 }, "temperature must be >= 0 (0 = greedy), found -1"],
    [{ topP: 1.5 }, "topP must be in [0, 1], found 1.5"],
    [{ topK: 2.5 }, "topK must be a whole number >= 0 (0 = off), found 2.5"],
    [{ repetitionPenalty: 0 }, "repetitionPenalty must be > 0 (1 = off), found 0"],
    [{ penaltyDecay: 0 }, "penaltyDecay must be in (0, 1], found 0"],
    [{ presencePenalty: Infinity }, "presencePenalty must be finite, found Infinity"],
    [{ temperature: "hot" }, 'temperature must be a number, found "hot"'],
  ];
  for (const [params, message] of bad)
    assert.throws(() => samplingParams(/** @type {any} */ (params)), { name: "RWKVEdgeError", message });
  assert.throws(() => new Sampler({}, 1, 4, -3), { message: "seed must be a whole number >= 0, found -3" });
  assert.throws(() => new Sampler({}, 1, 4, 0).sample(new Float32Array(3)), {
    message: "logits must be [1, 4] for this sampler, found 3 values",
  });
});
