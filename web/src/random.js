/**
 * numpy's default generator, np.random.default_rng(seed): PCG64 (XSL-RR output) seeded through SeedSequence, and
 * Generator.random()'s doubles. The same seed draws the same numbers in both runtimes, so a seeded sampler picks
 * the same tokens from the same logits in JS and in Python.
 */

const MASK32 = 0xffffffffn;
const MASK64 = (1n << 64n) - 1n;
const MASK128 = (1n << 128n) - 1n;
const PCG_MULTIPLIER = (0x2360ed051fc65da4n << 64n) | 0x4385df649fccf645n;

// SeedSequence's hash constants (numpy/random/bit_generator.pyx)
const INIT_A = 0x43b0d7e5;
const MULT_A = 0x931e8875;
const INIT_B = 0x8b51f9dd;
const MULT_B = 0x58f38ded;
const MIX_MULT_L = 0xca01f9dd;
const MIX_MULT_R = 0x4973f715;
const XSHIFT = 16;
const POOL_SIZE = 4;

/** @param {number} a @param {number} b  a * b mod 2^32 */
const mul32 = (a, b) => Math.imul(a, b) >>> 0;

/**
 * SeedSequence(seed).generate_state(words, uint32): the words that seed a bit generator.
 * @param {bigint} seed  >= 0
 * @param {number} words
 * @returns {number[]}
 */
export function seedSequenceState(seed, words) {
  /** @type {number[]} the seed as little-endian 32-bit words; 0 is [0] */
  const entropy = [];
  let rest = seed;
  do {
    entropy.push(Number(rest & MASK32));
    rest >>= 32n;
  } while (rest > 0n);
  let hashConst = INIT_A;
  /** @param {number} value */
  const hashmix = (value) => {
    value = (value ^ hashConst) >>> 0;
    hashConst = mul32(hashConst, MULT_A);
    value = mul32(value, hashConst);
    return (value ^ (value >>> XSHIFT)) >>> 0;
  };
  /** @param {number} x @param {number} y */
  const mix = (x, y) => {
    const result = (mul32(MIX_MULT_L, x) - mul32(MIX_MULT_R, y)) >>> 0;
    return (result ^ (result >>> XSHIFT)) >>> 0;
  };
  const pool = [];
  for (let i = 0; i < POOL_SIZE; i++) pool.push(hashmix(i < entropy.length ? entropy[i] : 0));
  for (let src = 0; src < POOL_SIZE; src++) {
    for (let dst = 0; dst < POOL_SIZE; dst++) if (src !== dst) pool[dst] = mix(pool[dst], hashmix(pool[src]));
  }
  for (let src = POOL_SIZE; src < entropy.length; src++) {
    for (let dst = 0; dst < POOL_SIZE; dst++) pool[dst] = mix(pool[dst], hashmix(entropy[src]));
  }
  let hash = INIT_B;
  const out = [];
  for (let i = 0; i < words; i++) {
    let value = (pool[i % POOL_SIZE] ^ hash) >>> 0;
    hash = mul32(hash, MULT_B);
    value = mul32(value, hash);
    out.push((value ^ (value >>> XSHIFT)) >>> 0);
  }
  return out;
}

/** np.random.default_rng(seed) for the draws a sampler makes. */
export class NumpyRandom {
  /** @param {number | bigint} [seed]  a whole number >= 0; absent: seeded from Math.random */
  constructor(seed) {
    const s = seed === undefined || seed === null ? BigInt(Math.floor(Math.random() * 2 ** 52)) : BigInt(seed);
    if (s < 0n) throw new RangeError("seed must be >= 0");
    const w = seedSequenceState(s, 8); // 4 uint64: state high, state low, increment high, increment low
    const u64 = (/** @type {number} */ i) => (BigInt(w[2 * i + 1]) << 32n) | BigInt(w[2 * i]);
    const initState = (u64(0) << 64n) | u64(1);
    const initSeq = (u64(2) << 64n) | u64(3);
    this._inc = ((initSeq << 1n) | 1n) & MASK128;
    this._state = 0n;
    this._advance();
    this._state = (this._state + initState) & MASK128;
    this._advance();
  }

  _advance() {
    this._state = (this._state * PCG_MULTIPLIER + this._inc) & MASK128;
  }

  /** @returns {bigint} the next 64 random bits */
  nextUint64() {
    this._advance();
    const s = this._state;
    const x = ((s >> 64n) ^ s) & MASK64;
    const rot = s >> 122n;
    return ((x >> rot) | (x << ((64n - rot) & 63n))) & MASK64;
  }

  /** @returns {number} a double in [0, 1), as Generator.random() */
  random() {
    return Number(this.nextUint64() >> 11n) * (1 / 9007199254740992);
  }
}
