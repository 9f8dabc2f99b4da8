/** The byte tokenizer of the project's tiny default model: id = byte value of the UTF-8 text. */
import { RWKVEdgeError } from "../errors.js";

export class BytesTokenizer {
  kind = "bytes";
  vocabSize = 256;
  /** every byte is text, none is reserved */
  eosId = null;

  /** @param {string} text @returns {number[]} */
  encode(text) {
    return Array.from(new TextEncoder().encode(text));
  }

  /** @param {Iterable<number>} ids @returns {Uint8Array} */
  decodeBytes(ids) {
    const list = Array.from(ids);
    for (const id of list) checkId(this, id);
    return Uint8Array.from(list);
  }

  /** @param {Iterable<number>} ids @returns {string} */
  decode(ids) {
    return new TextDecoder().decode(this.decodeBytes(ids));
  }
}

/**
 * @param {{kind: string, vocabSize: number}} tokenizer
 * @param {number} id
 */
export function checkId(tokenizer, id) {
  if (!Number.isInteger(id) || id < 0 || id >= tokenizer.vocabSize) {
    throw new RWKVEdgeError(`token id ${id} is outside the ${tokenizer.kind} vocabulary [0, ${tokenizer.vocabSize})`);
  }
}
