/**
 * Pick the next token from logits, one row per sequence, as runtime/sampling.py does and in its order:
 * penalties on raw logits (float32) -> temperature -> top-k -> top-p -> draw (float64). Temperature 0 is greedy:
 * argmax after penalties, the first maximum winning as numpy's argmax. The draws come from numpy's default
 * generator (random.js), so a seed picks the same tokens from the same logits in both runtimes.
 */
import { RWKVEdgeError } from "./errors.js";
import { NumpyRandom } from "./random.js";

/**
 * @typedef {object} SamplingParams
 * @property {number} [temperature]        0 = greedy; default 1
 * @property {number} [topP]               keep the smallest set of tokens whose probability reaches topP; 1 = off
 * @property {number} [topK]               keep the k most likely tokens; 0 = off
 * @property {number} [repetitionPenalty]  divide positive / multiply negative logits of seen tokens; 1 = off
 * @property {number} [presencePenalty]    subtracted once from every seen token; 0 = off
 * @property {number} [frequencyPenalty]   subtracted per occurrence; 0 = off
 * @property {number} [penaltyDecay]       occurrence counts are multiplied by this each step; 1 = off
 */

/**
 * Defaults filled in and every value checked; one line naming the bad one.
 * @param {SamplingParams} [params]
 * @returns {Required<SamplingParams>}
 */
export function samplingParams(params = {}) {
  const p = {
    temperature: params.temperature ?? 1.0,
    topP: params.topP ?? 1.0,
    topK: params.topK ?? 0,
    repetitionPenalty: params.repetitionPenalty ?? 1.0,
    presencePenalty: params.presencePenalty ?? 0.0,
    frequencyPenalty: params.frequencyPenalty ?? 0.0,
    penaltyDecay: params.penaltyDecay ?? 1.0,
  };
  for (const [name, value] of Object.entries(p)) {
    if (typeof value !== "number" || Number.isNaN(value)) {
      throw new RWKVEdgeError(`${name} must be a number, found ${JSON.stringify(value) ?? String(value)}`);
    }
  }
  if (!(p.temperature >= 0)) throw new RWKVEdgeError(`temperature must be >= 0 (0 = greedy), found ${p.temperature}`);
  if (!(p.topP >= 0 && p.topP <= 1)) throw new RWKVEdgeError(`topP must be in [0, 1], found ${p.topP}`);
  if (!Number.isInteger(p.topK) || p.topK < 0) {
    throw new RWKVEdgeError(`topK must be a whole number >= 0 (0 = off), found ${p.topK}`);
  }
  if (!(p.repetitionPenalty > 0)) {
    throw new RWKVEdgeError(`repetitionPenalty must be > 0 (1 = off), found ${p.repetitionPenalty}`);
  }
  if (!Number.isFinite(p.presencePenalty))
    throw new RWKVEdgeError(`presencePenalty must be finite, found ${p.presencePenalty}`);
  if (!Number.isFinite(p.frequencyPenalty)) {
    throw new RWKVEdgeError(`frequencyPenalty must be finite, found ${p.frequencyPenalty}`);
  }
  if (!(p.penaltyDecay > 0 && p.penaltyDecay <= 1)) {
    throw new RWKVEdgeError(`penaltyDecay must be in (0, 1], found ${p.penaltyDecay}`);
  }
  return p;
}

/** @param {Required<SamplingParams>} p */
export function penalizes(p) {
  return p.repetitionPenalty !== 1 || p.presencePenalty !== 0 || p.frequencyPenalty !== 0;
}

/**
 * Penalized logits (a new float32 array), as numpy computes them in apply_penalties.
 * @param {Float32Array} logits  [batch * vocab]
 * @param {Float32Array} counts  [batch * vocab]; > 0 marks a token already seen in that row
 * @param {Required<SamplingParams>} p
 */
export function applyPenalties(logits, counts, p) {
  const out = new Float32Array(logits);
  const rep = Math.fround(p.repetitionPenalty);
  const freq = Math.fround(p.frequencyPenalty);
  const presence = p.presencePenalty;
  const additive = presence !== 0 || freq !== 0;
  for (let i = 0; i < out.length; i++) {
    const c = counts[i];
    if (c > 0 && rep !== 1) out[i] = out[i] > 0 ? out[i] / rep : out[i] * rep;
    // numpy: float64 presence * seen plus float32 frequency * counts, subtracted in float64, stored as float32
    if (additive) out[i] = out[i] - ((c > 0 ? presence : 0) + Math.fround(freq * c));
  }
  return out;
}

/**
 * The index of the first maximum (numpy's argmax: a NaN counts as the maximum, the first one wins).
 * @param {Float32Array | Float64Array} row
 */
export function argmax(row) {
  let best = 0;
  let value = row[0];
  if (Number.isNaN(value)) return 0;
  for (let i = 1; i < row.length; i++) {
    const v = row[i];
    if (v > value) {
      value = v;
      best = i;
    } else if (Number.isNaN(v)) return i;
  }
  return best;
}

/**
 * numpy's pairwise sum (what np.sum does along a contiguous axis), so normalized probabilities round as there.
 * @param {Float64Array} a @param {number} start @param {number} n
 * @returns {number}
 */
export function pairwiseSum(a, start, n) {
  if (n < 8) {
    let s = 0;
    for (let i = 0; i < n; i++) s += a[start + i];
    return s;
  }
  if (n <= 128) {
    const r = [
      a[start],
      a[start + 1],
      a[start + 2],
      a[start + 3],
      a[start + 4],
      a[start + 5],
      a[start + 6],
      a[start + 7],
    ];
    let i = 8;
    for (; i < n - (n % 8); i += 8) for (let j = 0; j < 8; j++) r[j] += a[start + i + j];
    let s = r[0] + r[1] + (r[2] + r[3]) + (r[4] + r[5] + (r[6] + r[7]));
    for (; i < n; i++) s += a[start + i];
    return s;
  }
  let n2 = Math.floor(n / 2);
  n2 -= n2 % 8;
  return pairwiseSum(a, start, n2) + pairwiseSum(a, start + n2, n - n2);
}

/**
 * One token id per row of `logits` [batch * vocab]. No penalties here.
 * @param {Float32Array} logits
 * @param {number} batch
 * @param {Required<SamplingParams>} p
 * @param {{random(): number}} rng
 * @returns {number[]}
 */
export function sampleNext(logits, batch, p, rng) {
  const vocab = logits.length / batch;
  if (!Number.isInteger(vocab) || vocab < 1) {
    throw new RWKVEdgeError(`logits must be [batch, vocab], found ${logits.length} values for a batch of ${batch}`);
  }
  const ids = [];
  if (p.temperature === 0) {
    for (let b = 0; b < batch; b++) ids.push(argmax(logits.subarray(b * vocab, (b + 1) * vocab)));
    return ids;
  }
  const draws = [];
  for (let b = 0; b < batch; b++) draws.push(rng.random());
  const x = new Float64Array(vocab);
  for (let b = 0; b < batch; b++) {
    for (let i = 0; i < vocab; i++) x[i] = logits[b * vocab + i] / p.temperature;
    if (p.topK > 0 && p.topK < vocab) {
      const kth = Float64Array.from(x).sort()[vocab - p.topK]; // ties with the k-th largest stay in
      for (let i = 0; i < vocab; i++) if (!(x[i] >= kth)) x[i] = -Infinity;
    }
    let max = -Infinity;
    for (let i = 0; i < vocab; i++) if (x[i] > max) max = x[i];
    const probs = x; // in place from here on
    for (let i = 0; i < vocab; i++) probs[i] = Math.exp(probs[i] - max);
    const total = pairwiseSum(probs, 0, vocab);
    for (let i = 0; i < vocab; i++) probs[i] /= total;
    if (p.topP < 1) keepTopP(probs, p.topP);
    let cdf = 0;
    const cdfs = new Float64Array(vocab);
    for (let i = 0; i < vocab; i++) cdfs[i] = cdf += probs[i];
    const draw = draws[b] * cdfs[vocab - 1];
    let id = 0;
    while (id < vocab && cdfs[id] <= draw) id++; // the first index whose cdf exceeds the draw
    ids.push(Math.min(id, vocab - 1));
  }
  return ids;
}

/**
 * Zero the tokens outside the top-p set, as sampling.py does: rank by probability (stable: ties in index order),
 * keep a token while the mass ranked above it is short of topP; the best token always stays.
 * @param {Float64Array} probs
 * @param {number} topP
 */
function keepTopP(probs, topP) {
  const vocab = probs.length;
  const sorted = Float64Array.from(probs).sort().reverse();
  // kept ranks; the cumulative sums depend on the values only, not on how ties are ordered
  const keep = new Uint8Array(vocab);
  let cum = 0;
  let lastKept = 0;
  let prefix = true;
  for (let j = 0; j < vocab; j++) {
    cum += sorted[j];
    keep[j] = j === 0 || cum - sorted[j] < topP ? 1 : 0;
    if (keep[j]) {
      if (lastKept !== j - 1 && j > 0) prefix = false;
      lastKept = j;
    }
  }
  if (!prefix) {
    // rounding made the kept ranks non-contiguous: rank every token exactly as a stable argsort does
    const order = Array.from({ length: vocab }, (_, i) => i).sort((a, c) => probs[c] - probs[a] || a - c);
    const drop = order.filter((_, j) => !keep[j]);
    for (const i of drop) probs[i] = 0;
    return;
  }
  const cutoff = sorted[lastKept];
  let firstOfTie = lastKept;
  while (firstOfTie > 0 && sorted[firstOfTie - 1] === cutoff) firstOfTie--;
  let tiesKept = lastKept - firstOfTie + 1; // tokens equal to the cutoff kept, lowest index first
  for (let i = 0; i < vocab; i++) {
    const v = probs[i];
    if (v > cutoff) continue;
    if (v === cutoff && tiesKept > 0) {
      tiesKept--;
      continue;
    }
    probs[i] = 0;
  }
}

/** Sampling with memory: what each row has produced (for the penalties) and the seeded generator. */
export class Sampler {
  /**
   * @param {SamplingParams} params
   * @param {number} batch
   * @param {number} vocabSize
   * @param {number | bigint | {random(): number} | null} [seed]  a whole number >= 0, a generator, or none
   */
  constructor(params, batch, vocabSize, seed) {
    this.params = samplingParams(params);
    this.batch = batch;
    this.vocabSize = vocabSize;
    if (seed !== undefined && seed !== null && typeof seed === "object") this.rng = seed;
    else {
      if (
        seed !== undefined &&
        seed !== null &&
        !((typeof seed === "number" && Number.isInteger(seed) && seed >= 0) || (typeof seed === "bigint" && seed >= 0n))
      ) {
        throw new RWKVEdgeError(`seed must be a whole number >= 0, found ${String(seed)}`);
      }
      this.rng = new NumpyRandom(seed ?? undefined);
    }
    this.counts = new Float32Array(batch * vocabSize);
  }

  /** Count tokens (one per row) as seen; `sample` counts what it picks. @param {number[]} ids */
  observe(ids) {
    const decay = Math.fround(this.params.penaltyDecay);
    if (decay !== 1) for (let i = 0; i < this.counts.length; i++) this.counts[i] *= decay;
    ids.forEach((id, row) => {
      this.counts[row * this.vocabSize + id] += 1;
    });
  }

  /** @param {Float32Array} logits  [batch * vocab] @returns {number[]} */
  sample(logits) {
    if (logits.length !== this.counts.length) {
      throw new RWKVEdgeError(
        `logits must be [${this.batch}, ${this.vocabSize}] for this sampler, found ${logits.length} values`,
      );
    }
    const input = penalizes(this.params) ? applyPenalties(logits, this.counts, this.params) : logits;
    const ids = sampleNext(input, this.batch, this.params, this.rng);
    this.observe(ids);
    return ids;
  }
}
