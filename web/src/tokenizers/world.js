/**
 * The RWKV World tokenizer (vocab v20230424), as runtime/tokenizer.py's WorldTokenizer: greedy longest match over
 * the UTF-8 bytes, so both give the same ids on any text.
 *
 * The vocab file has lines `id literal byte_length`, the literal a Python str or bytes literal with escapes.
 * Tokens are kept as "binary strings" (one char per byte) so that a Map does the lookups; for each 2-byte prefix
 * the token lengths starting with it, longest first, say which lengths can match at all.
 */
import { RWKVEdgeError } from "../errors.js";
import { checkId } from "./bytes.js";

export const WORLD_VOCAB_NAME = "rwkv_vocab_v20230424.txt";

const SIMPLE_ESCAPES = {
  "\\": 0x5c,
  "'": 0x27,
  '"': 0x22,
  a: 0x07,
  b: 0x08,
  f: 0x0c,
  n: 0x0a,
  r: 0x0d,
  t: 0x09,
  v: 0x0b,
};

/**
 * A Python string or bytes literal (as repr writes them, and the other escapes Python reads) -> its bytes
 * (UTF-8 for a str). Throws a plain Error saying what is wrong.
 * @param {string} literal
 * @returns {Uint8Array}
 */
export function parsePythonLiteral(literal) {
  const prefix = /^[a-zA-Z]*/.exec(literal)?.[0] ?? "";
  const lower = prefix.toLowerCase();
  if (!["", "b", "u"].includes(lower)) throw new Error(`unsupported string prefix ${prefix}`);
  const isBytes = lower === "b";
  const quote = literal[prefix.length];
  if ((quote !== "'" && quote !== '"') || literal.length < prefix.length + 2 || literal[literal.length - 1] !== quote) {
    throw new Error("not a quoted literal");
  }
  const body = literal.slice(prefix.length + 1, -1);
  /** @type {number[]} code points (str) or bytes */
  const out = [];
  const chars = Array.from(body);
  for (let i = 0; i < chars.length; i++) {
    const ch = chars[i];
    if (ch === quote) throw new Error("unescaped quote inside the literal");
    if (ch !== "\\") {
      const cp = /** @type {number} */ (ch.codePointAt(0));
      if (isBytes && cp > 0x7f) throw new Error("bytes literal with a non-ASCII character");
      out.push(cp);
      continue;
    }
    const next = chars[++i];
    if (next === undefined) throw new Error("literal ends in a backslash");
    if (next in SIMPLE_ESCAPES) {
      out.push(SIMPLE_ESCAPES[/** @type {keyof typeof SIMPLE_ESCAPES} */ (next)]);
    } else if (/[0-7]/.test(next)) {
      let digits = next;
      while (digits.length < 3 && /[0-7]/.test(chars[i + 1] ?? "")) digits += chars[++i];
      const value = parseInt(digits, 8);
      if (isBytes && value > 0xff) throw new Error(`octal escape \\${digits} out of range`);
      out.push(value);
    } else if (next === "x" || (!isBytes && (next === "u" || next === "U"))) {
      const width = next === "x" ? 2 : next === "u" ? 4 : 8;
      const hex = chars.slice(i + 1, i + 1 + width).join("");
      if (!new RegExp(`^[0-9a-fA-F]{${width}}$`).test(hex)) throw new Error(`truncated \\${next} escape`);
      const value = parseInt(hex, 16);
      if (value > 0x10ffff) throw new Error(`escape \\${next}${hex} is not a code point`);
      out.push(value);
      i += width;
    } else if (next === "\n") {
      // a line continuation: nothing
    } else if (!isBytes && next === "N") {
      throw new Error("\\N{...} escapes are not supported");
    } else {
      out.push(0x5c, /** @type {number} */ (next.codePointAt(0))); // Python keeps an unknown escape as written
    }
  }
  if (isBytes) return Uint8Array.from(out);
  return new TextEncoder().encode(
    String.fromCodePoint(...out.map((cp) => (cp >= 0xd800 && cp <= 0xdfff ? 0xfffd : cp))),
  );
}

/** @param {Uint8Array} bytes @returns {string} one char per byte */
function binary(bytes) {
  let out = "";
  for (let i = 0; i < bytes.length; i += 8192) out += String.fromCharCode(...bytes.subarray(i, i + 8192));
  return out;
}

/**
 * Parse the vocab file's text -> id -> token bytes.
 * @param {string} text
 * @param {string} [where]  the file, for messages
 * @returns {Map<number, Uint8Array>}
 */
export function readWorldVocab(text, where = WORLD_VOCAB_NAME) {
  /** @type {Map<number, Uint8Array>} */
  const tokens = new Map();
  const lines = text.split(/\r\n|\r|\n/);
  lines.forEach((line, index) => {
    if (!line) return;
    const first = line.indexOf(" ");
    const last = line.lastIndexOf(" ");
    const short = JSON.stringify(line.slice(0, 60));
    let id;
    let token;
    let byteLength;
    try {
      if (first < 0 || last <= first) throw new Error("expected three fields");
      id = parseStrictInt(line.slice(0, first));
      token = parsePythonLiteral(line.slice(first + 1, last));
      byteLength = parseStrictInt(line.slice(last + 1));
    } catch (e) {
      throw new RWKVEdgeError(
        `${where}:${index + 1}: expected \`id 'token' byte_length\`, ` +
          `found ${short} (${/** @type {Error} */ (e).message})`,
      );
    }
    if (token.length !== byteLength || id < 0) {
      throw new RWKVEdgeError(
        `${where}:${index + 1}: token ${short} should be ${byteLength} bytes with a non-negative id`,
      );
    }
    tokens.set(id, token);
  });
  if (tokens.size === 0) throw new RWKVEdgeError(`${where}: empty world vocab`);
  return tokens;
}

/** @param {string} text  Python's int(): optional sign, digits, underscores between digits, spaces around */
function parseStrictInt(text) {
  const t = text.trim();
  if (!/^[+-]?\d+(_\d+)*$/.test(t)) throw new Error(`invalid literal for int(): ${JSON.stringify(text)}`);
  return Number(t.replaceAll("_", ""));
}

export class WorldTokenizer {
  kind = "world";
  /** id 0 has no bytes; World models use it as end of document */
  eosId = 0;

  /** @param {Map<number, Uint8Array>} tokens  id -> bytes (readWorldVocab) */
  constructor(tokens) {
    const ids = [...tokens.keys()].sort((a, b) => a - b);
    this.vocabSize = ids[ids.length - 1] + 1;
    /** @type {Uint8Array[]} ids without a token decode to nothing */
    this._idToBytes = new Array(this.vocabSize).fill(new Uint8Array(0));
    /** @type {Map<string, number>} */
    this._tokenToId = new Map();
    for (const id of ids) {
      const bytes = /** @type {Uint8Array} */ (tokens.get(id));
      this._idToBytes[id] = bytes;
      this._tokenToId.set(binary(bytes), id); // a token listed twice keeps its last id, as the rwkv package does
    }
    /** @type {Map<string, Set<number>>} */
    const lengths = new Map();
    for (const token of this._tokenToId.keys()) {
      if (token.length < 2) continue;
      const prefix = token.slice(0, 2);
      if (!lengths.has(prefix)) lengths.set(prefix, new Set());
      /** @type {Set<number>} */ (lengths.get(prefix)).add(token.length);
    }
    /** @type {Map<string, number[]>} */
    this._lengthsByPrefix = new Map();
    for (const [prefix, set] of lengths)
      this._lengthsByPrefix.set(
        prefix,
        [...set].sort((a, b) => b - a),
      );
  }

  /** @param {string} text  the vocab file's contents @param {string} [where] */
  static fromText(text, where) {
    return new WorldTokenizer(readWorldVocab(text, where));
  }

  /** @param {string} text @returns {number[]} */
  encode(text) {
    return this.encodeBytes(new TextEncoder().encode(text));
  }

  /** @param {Uint8Array} bytes @returns {number[]} */
  encodeBytes(bytes) {
    const data = binary(bytes);
    const tokenToId = this._tokenToId;
    const lengthsByPrefix = this._lengthsByPrefix;
    /** @type {number[]} */
    const ids = [];
    const end = data.length;
    let pos = 0;
    while (pos < end) {
      let found;
      let length = 1;
      const candidates = end - pos >= 2 ? lengthsByPrefix.get(data.slice(pos, pos + 2)) : undefined;
      if (candidates) {
        for (const l of candidates) {
          if (pos + l > end) continue;
          const id = tokenToId.get(data.slice(pos, pos + l));
          if (id !== undefined) {
            found = id;
            length = l;
            break;
          }
        }
      }
      if (found === undefined) {
        length = 1;
        found = tokenToId.get(data[pos]);
        if (found === undefined) {
          const hex = "0x" + data.charCodeAt(pos).toString(16).padStart(2, "0");
          throw new RWKVEdgeError(`world vocab has no token for byte ${hex}; the vocab file is incomplete`);
        }
      }
      ids.push(found);
      pos += length;
    }
    return ids;
  }

  /** @param {Iterable<number>} ids @returns {Uint8Array} */
  decodeBytes(ids) {
    const parts = [];
    let total = 0;
    for (const id of ids) {
      checkId(this, id);
      const bytes = this._idToBytes[id];
      parts.push(bytes);
      total += bytes.length;
    }
    const out = new Uint8Array(total);
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  /** @param {Iterable<number>} ids @returns {string} */
  decode(ids) {
    return new TextDecoder().decode(this.decodeBytes(ids));
  }
}
