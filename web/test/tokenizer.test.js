import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import test from "node:test";

import { RWKVEdgeError } from "../src/errors.js";
import { BytesTokenizer } from "../src/tokenizers/bytes.js";
import { WorldTokenizer, parsePythonLiteral, readWorldVocab } from "../src/tokenizers/world.js";

const VOCAB = new URL("../../runtime/data/rwkv_vocab_v20230424.txt", import.meta.url);

/** @param {string} text */
const bytesOf = (text) => Array.from(new TextEncoder().encode(text));

test("bytes tokenizer: id = byte of the UTF-8 text", () => {
  const t = new BytesTokenizer();
  assert.deepEqual(t.encode("hé"), [104, 195, 169]);
  assert.equal(t.decode([104, 195, 169]), "hé");
  assert.equal(t.eosId, null);
  assert.throws(() => t.decodeBytes([256]), {
    name: "RWKVEdgeError",
    message: "token id 256 is outside the bytes vocabulary [0, 256)",
  });
});

test("Python literals: str and bytes, with the escapes repr writes and the others Python reads", () => {
  /** @param {string} literal */
  const parse = (literal) => Array.from(parsePythonLiteral(literal));
  assert.deepEqual(parse("'a b'"), bytesOf("a b"));
  assert.deepEqual(parse('"it\'s"'), bytesOf("it's"));
  assert.deepEqual(parse("'it\\'s'"), bytesOf("it's"));
  assert.deepEqual(parse("'\\n\\t\\r\\\\'"), [10, 9, 13, 92]);
  assert.deepEqual(parse("'\\xe9'"), bytesOf("é"), "\\x in a str is a code point");
  assert.deepEqual(parse("b'\\xe9'"), [0xe9], "\\x in bytes is a byte");
  assert.deepEqual(parse("'\\u4e2d\\U0001F600'"), bytesOf("中😀"));
  assert.deepEqual(parse("b'\\u4e2d'"), bytesOf("\\u4e2d"), "no \\u escape in bytes");
  assert.deepEqual(parse("'中'"), bytesOf("中"));
  assert.deepEqual(parse("'\\0\\101\\7'"), [0, 65, 7]);
  assert.deepEqual(parse("'\\q'"), bytesOf("\\q"), "an unknown escape stays as written");
  assert.throws(() => parsePythonLiteral("'abc"), /not a quoted literal/);
  assert.throws(() => parsePythonLiteral("f'x'"), /unsupported string prefix f/);
  assert.throws(() => parsePythonLiteral("b'é'"), /non-ASCII/);
  assert.throws(() => parsePythonLiteral("'\\x4'"), /truncated \\x escape/);
});

const SMALL = [
  "1 'a' 1",
  "2 'b' 1",
  "3 'ab' 2",
  "4 'abc' 3",
  "5 'bc' 2",
  "6 b'\\xe4' 1",
  "7 b'\\xb8' 1",
  "8 b'\\xad' 1",
  "9 '中' 3",
  "10 b'\\xe4\\xb8' 2",
  "11 ' ' 1",
  "12 'abcd' 4",
].join("\n");

test("greedy longest match over bytes, as the Python WorldTokenizer", () => {
  const t = WorldTokenizer.fromText(SMALL);
  assert.equal(t.vocabSize, 13);
  assert.equal(t.eosId, 0);
  assert.deepEqual(t.encode("abc"), [4]);
  assert.deepEqual(t.encode("abcab"), [4, 3]);
  assert.deepEqual(t.encode("abcd"), [12]);
  assert.deepEqual(t.encode("abca"), [4, 1], "'abca' is no token: the next length down matches");
  assert.deepEqual(t.encode("bcab"), [5, 3]);
  assert.deepEqual(t.encode("a b"), [1, 11, 2]);
  assert.deepEqual(t.encode(""), []);
});

test("a byte the vocab lacks is refused in one line", () => {
  const t = WorldTokenizer.fromText(SMALL);
  assert.throws(() => t.encode("abd"), {
    name: "RWKVEdgeError",
    message: "world vocab has no token for byte 0x64; the vocab file is incomplete",
  });
});

test("CJK bytes split across tokens decode back whole", () => {
  const t = WorldTokenizer.fromText(SMALL);
  assert.deepEqual(t.encode("中"), [9]);
  assert.deepEqual(Array.from(t.decodeBytes([10, 8])), bytesOf("中"));
  assert.equal(t.decode([10, 8, 11, 12]), "中 abcd");
  assert.equal(t.decode([0]), "", "id 0 has no bytes");
  assert.throws(() => t.decode([13]), { message: "token id 13 is outside the world vocabulary [0, 13)" });
});

test("a token listed twice keeps its last id", () => {
  const t = WorldTokenizer.fromText("1 'a' 1\n2 'ab' 2\n5 'ab' 2\n3 'b' 1");
  assert.deepEqual(t.encode("ab"), [5]);
});

test("bad vocab lines are refused with the file and line", () => {
  assert.throws(
    () => readWorldVocab("1 'a' 1\n2 'b 1", "v.txt"),
    (e) => e instanceof RWKVEdgeError && /^v.txt:2: expected `id 'token' byte_length`, found "2 'b 1"/.test(e.message),
  );
  assert.throws(() => readWorldVocab("1 'ab' 3", "v.txt"), {
    message: "v.txt:1: token \"1 'ab' 3\" should be 3 bytes with a non-negative id",
  });
  assert.throws(() => readWorldVocab("x 'a' 1", "v.txt"), /^RWKVEdgeError: v.txt:1: expected/);
  assert.throws(() => readWorldVocab("\n\n", "v.txt"), { message: "v.txt: empty world vocab" });
});

test(
  "the real World vocab: size, round trips, known ids",
  { skip: !existsSync(VOCAB) && "runtime/ not beside web/" },
  () => {
    const t = WorldTokenizer.fromText(readFileSync(VOCAB, "utf-8"));
    assert.equal(t.vocabSize, 65530);
    for (const text of ["Hello world", "中文 and 😀 emoji 👨‍👩‍👧", "\n\n\t  x", "\u0000\u007f\u0080"]) {
      assert.equal(t.decode(t.encode(text)), text);
    }
    // every single byte has a token, and ids 1..256 are the bytes 0x00..0xff
    for (let b = 0; b < 256; b++) assert.deepEqual(t.encodeBytes(Uint8Array.of(b)), [b + 1]);
  },
);
