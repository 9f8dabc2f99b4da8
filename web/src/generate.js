/**
 * Streaming text generation, as runtime/generate.py: prompt in, whole-character text pieces out, stop strings
 * honoured and never emitted.
 *
 *   const gen = generate(model, tokenizer, "Q: why is the sky blue?\nA:", { maxTokens: 200, stop: ["\nQ:"], seed: 0 });
 *   for await (const piece of gen) output.textContent += piece;
 *   gen.state         // continue from here: generate(model, tokenizer, nextTurn, { state: gen.state })
 *   gen.finishReason  // "stop", "eos" or "length"
 */
import { RWKVEdgeError } from "./errors.js";
import { Sampler, samplingParams } from "./sampling.js";
import { Utf8Stream } from "./utf8.js";

/**
 * Cuts a text stream at the first stop string, which may arrive split over several pieces: text that could still
 * be the start of a stop string is held back until the next piece decides.
 */
export class StopStringFilter {
  /** @param {string[]} stops */
  constructor(stops) {
    for (const s of stops) {
      if (typeof s !== "string" || !s) {
        throw new RWKVEdgeError(`stop strings must be non-empty text, found ${JSON.stringify(s) ?? String(s)}`);
      }
    }
    this.stops = stops.slice();
    this._pending = "";
    this.stopped = false;
  }

  /** Add text; returns what is safe to emit now. After a stop is found, `stopped` is true. @param {string} text */
  push(text) {
    if (this.stopped) return "";
    this._pending += text;
    const hits = this.stops.map((s) => this._pending.indexOf(s)).filter((i) => i >= 0);
    if (hits.length) {
      const out = this._pending.slice(0, Math.min(...hits));
      this._pending = "";
      this.stopped = true;
      return out;
    }
    const keep = this._possibleStopStart();
    const out = this._pending.slice(0, this._pending.length - keep);
    this._pending = this._pending.slice(this._pending.length - keep);
    return out;
  }

  /** The stream ended without a stop: release what was held back. */
  flush() {
    const out = this._pending;
    this._pending = "";
    return this.stopped ? "" : out;
  }

  /** Length of the longest tail of the pending text that is a proper prefix of some stop string. */
  _possibleStopStart() {
    let longest = 0;
    for (const s of this.stops) {
      for (let k = Math.min(s.length - 1, this._pending.length); k > longest; k--) {
        if (this._pending.endsWith(s.slice(0, k))) {
          longest = k;
          break;
        }
      }
    }
    return longest;
  }
}

/**
 * @typedef {import("./sampling.js").SamplingParams & {
 *   maxTokens?: number, stop?: string | string[], stopTokenIds?: number[], seed?: number | bigint | null,
 *   state?: import("./state.js").State }} GenerateOptions
 */

/**
 * An async iterator of text pieces. Once it is exhausted: `state` has consumed the prompt and every token in
 * `tokens` (the sampled ids, a stop string's or end-of-text's included), `text` is what was yielded, and
 * `finishReason` is "stop" (a stop string), "eos" (an end-of-text id) or "length".
 */
export class Generation {
  /** @param {any} parts  see generate */
  constructor(parts) {
    this.model = parts.model;
    this.tokenizer = parts.tokenizer;
    /** @type {import("./state.js").State} */
    this.state = parts.state;
    /** @type {number[]} */
    this.tokens = [];
    this.text = "";
    /** @type {"stop" | "eos" | "length" | null} */
    this.finishReason = null;
    this._promptIds = parts.promptIds;
    this._sampler = parts.sampler;
    this._maxTokens = parts.maxTokens;
    this._stopTokenIds = parts.stopTokenIds;
    this._stops = new StopStringFilter(parts.stop);
    this._pieces = this._run();
  }

  [Symbol.asyncIterator]() {
    return this;
  }

  /** @returns {Promise<IteratorResult<string, undefined>>} */
  async next() {
    const result = await this._pieces.next();
    if (!result.done) this.text += result.value;
    return result;
  }

  /** Stop early (a `break` out of `for await`). @returns {Promise<IteratorResult<string, undefined>>} */
  async return() {
    await this._pieces.return(undefined);
    return { done: true, value: undefined };
  }

  /** @returns {AsyncGenerator<string, undefined>} */
  async *_run() {
    const { model, tokenizer, state } = this;
    // an empty prompt continues right where the state's last step left off
    let logits = this._promptIds.length ? await model.feed(this._promptIds, state) : state.logits;
    const utf8 = new Utf8Stream();
    this.finishReason = "length";
    for (let n = 0; n < this._maxTokens; n++) {
      const token = this._sampler.sample(this._decodable(logits))[0];
      this.tokens.push(token);
      logits = await model.step([token], state); // keep the state in step with `tokens`
      if (this._stopTokenIds.has(token)) {
        this.finishReason = "eos";
        break;
      }
      const piece = this._stops.push(utf8.push(tokenizer.decodeBytes([token])));
      if (piece) yield piece;
      if (this._stops.stopped) {
        this.finishReason = "stop";
        return undefined;
      }
    }
    let tail = this._stops.push(utf8.flush());
    if (this._stops.stopped) this.finishReason = "stop";
    else tail += this._stops.flush();
    if (tail) yield tail;
    return undefined;
  }

  /**
   * A model's vocab can be wider than its tokenizer's (padding rows, a bytes tokenizer on a bigger vocab): never
   * sample an id that cannot be decoded.
   * @param {Float32Array} logits
   */
  _decodable(logits) {
    const n = this.tokenizer.vocabSize;
    if (logits.length <= n) return logits;
    const masked = new Float32Array(logits);
    masked.fill(-Infinity, n);
    return masked;
  }
}

/**
 * Stream the continuation of `prompt` (text, or token ids) as whole-character text pieces. Options are checked
 * here, before anything runs. `state` (batch 1) continues an earlier conversation; `stopTokenIds` defaults to the
 * tokenizer's end-of-text id (World: 0). Penalties count generated tokens only.
 * @param {import("./model.js").RWKVModel} model
 * @param {import("./tokenizers/bytes.js").BytesTokenizer | import("./tokenizers/world.js").WorldTokenizer} tokenizer
 * @param {string | number[]} prompt
 * @param {GenerateOptions} [options]
 * @returns {Generation}
 */
export function generate(model, tokenizer, prompt, options = {}) {
  const params = samplingParams(options);
  const maxTokens = options.maxTokens ?? 256;
  if (!Number.isInteger(maxTokens) || maxTokens < 0) {
    throw new RWKVEdgeError(`maxTokens must be a whole number >= 0, found ${JSON.stringify(maxTokens)}`);
  }
  const stop = typeof options.stop === "string" ? [options.stop] : (options.stop ?? []);
  if (!Array.isArray(stop)) throw new RWKVEdgeError("stop must be a string or a list of strings");
  let promptIds;
  if (typeof prompt === "string") promptIds = tokenizer.encode(prompt);
  else if (Array.isArray(prompt)) promptIds = prompt.slice();
  else throw new RWKVEdgeError(`prompt must be text or a list of token ids, found ${typeof prompt}`);
  const bad = promptIds.find((t) => !Number.isInteger(t) || t < 0 || t >= model.vocabSize);
  if (bad !== undefined) {
    throw new RWKVEdgeError(`prompt token id ${bad} is outside the model's vocabulary [0, ${model.vocabSize})`);
  }
  let state = options.state;
  if (state === undefined || state === null) state = model.newState(1);
  else if (state.batch !== 1) {
    throw new RWKVEdgeError(
      `generate runs one sequence, but the state has batch ${state.batch}; pick a row with state.select(i)`,
    );
  }
  if (!promptIds.length && !state.logits) {
    throw new RWKVEdgeError(
      "empty prompt and no logits to continue from: give a prompt, or a state that has been stepped",
    );
  }
  const stopTokenIds = options.stopTokenIds ?? (tokenizer.eosId === null ? [] : [tokenizer.eosId]);
  const sampler = new Sampler(params, 1, model.vocabSize, options.seed);
  return new Generation({
    model,
    tokenizer,
    promptIds,
    state,
    sampler,
    maxTokens,
    stop,
    stopTokenIds: new Set(stopTokenIds),
  });
}
