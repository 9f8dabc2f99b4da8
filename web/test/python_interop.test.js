// What the Python runtime writes, read here, and the other way round (needs RWKV_EDGE_PYTHON with rwkv-edge).
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import test from "node:test";

import { generate, loadModel } from "../src/index.js";
import { WorldTokenizer } from "../src/tokenizers/world.js";
import { writeFakeExport } from "../testing/fake_export.js";
import { SKIP_PYTHON, runPython } from "../testing/python.js";
import { tempDir } from "../testing/tmpdir.js";

const VOCAB = new URL("../../runtime/data/rwkv_vocab_v20230424.txt", import.meta.url);

test("state files: Python's State.load reads ours, loadState reads Python's", { skip: SKIP_PYTHON }, async (t) => {
  const dir = tempDir(t);
  writeFakeExport(path.join(dir, "m"), { initFile: true });
  const model = await loadModel(path.join(dir, "m"));
  const state = model.newState(2);
  await model.feed(
    [
      [1, 2, 3],
      [4, 5, 6],
    ],
    state,
  );
  writeFileSync(path.join(dir, "ours.npz"), state.save());
  const out = runPython(
    `import sys, json
from rwkv_edge.runtime import RWKVModel
from rwkv_edge.runtime.state import State
m = RWKVModel.load(sys.argv[1])
s = State.load(sys.argv[2], m)
print(json.dumps({k: v.ravel().tolist() for k, v in s.to_numpy().items()}))
t = m.new_state(1)
m.feed([7, 8, 9], t)
t.save(sys.argv[3])`,
    [path.join(dir, "m"), path.join(dir, "ours.npz"), path.join(dir, "theirs.npz")],
  );
  const seen = JSON.parse(out);
  const host = state.toArrays();
  assert.deepEqual(seen.att_x, Array.from(host.att_x.data));
  assert.deepEqual(seen.att_p, Array.from(host.att_p.data));
  const theirs = model.loadState(new Uint8Array(readFileSync(path.join(dir, "theirs.npz"))));
  const mine = model.newState(1);
  await model.feed([7, 8, 9], mine);
  assert.deepEqual(theirs.toArrays(), mine.toArrays());
});

test("seeded sampling picks the tokens Python's generate picks", { skip: SKIP_PYTHON }, async (t) => {
  const dir = tempDir(t);
  writeFakeExport(dir, { vocab: 256, nEmbd: 8 });
  const model = await loadModel(dir);
  const tokenizer = await model.loadTokenizer();
  const cases = [
    { temperature: 0 },
    { temperature: 1, seed: 7 },
    { temperature: 0.8, topP: 0.7, seed: 1 },
    { temperature: 1.2, topK: 20, seed: 2 },
    { temperature: 1, repetitionPenalty: 1.3, presencePenalty: 0.2, frequencyPenalty: 0.1, penaltyDecay: 0.9, seed: 3 },
  ];
  const ours = [];
  for (const c of cases) {
    const g = generate(model, tokenizer, "ab", { maxTokens: 24, ...c });
    for await (const _ of g);
    ours.push(g.tokens);
  }
  const theirs = JSON.parse(
    runPython(
      `import sys, json
from rwkv_edge.runtime import RWKVModel, generate
m = RWKVModel.load(sys.argv[1]); tok = m.load_tokenizer()
names = {"topP": "top_p", "topK": "top_k", "repetitionPenalty": "repetition_penalty", "presencePenalty": "presence_penalty",
         "frequencyPenalty": "frequency_penalty", "penaltyDecay": "penalty_decay"}
out = []
for c in json.loads(sys.argv[2]):
    g = generate(m, tok, "ab", max_new_tokens=24, **{names.get(k, k): v for k, v in c.items()})
    list(g)
    out.append(g.tokens)
print(json.dumps(out))`,
      [dir, JSON.stringify(cases)],
    ),
  );
  assert.deepEqual(ours, theirs);
});

test("the World tokenizer gives the Python runtime's ids", { skip: SKIP_PYTHON }, () => {
  const tokenizer = WorldTokenizer.fromText(readFileSync(VOCAB, "utf-8"));
  const texts = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "中文分词测试：人工智能正在改变世界。日本語のテキストも。한국어 문장도.",
    "emoji 😀👍🏽👨‍👩‍👧‍👦 and flags 🇫🇷🇯🇵, math ∑∫√, accents éàüß",
    "code:\n\tdef f(x):\n\t\treturn x ** 2  # comment\r\n\u0000\u0001 bytes \ufffd",
    "   many    spaces\n\n\n\nnewlines",
  ];
  const ids = JSON.parse(
    runPython(
      `import sys, json
from rwkv_edge.runtime.tokenizer import WorldTokenizer
tok = WorldTokenizer.from_file(sys.argv[1])
texts = json.loads(sys.stdin.read())
print(json.dumps({"ids": [tok.encode(t) for t in texts], "size": tok.vocab_size}))`,
      [VOCAB.pathname],
      JSON.stringify(texts),
    ),
  );
  assert.equal(tokenizer.vocabSize, ids.size);
  texts.forEach((text, i) => {
    assert.deepEqual(tokenizer.encode(text), ids.ids[i]);
    assert.equal(tokenizer.decode(tokenizer.encode(text)), text);
  });
});

test("format ort: the graphs' ORT-format files give the ONNX graphs' logits", { skip: SKIP_PYTHON }, async (t) => {
  const dir = tempDir(t);
  writeFakeExport(dir, {
    manifest: (m) => {
      for (const g of m.graphs) g.ort = g.file.replace(/\.onnx$/, ".ort");
      return m;
    },
  });
  runPython(
    "import sys, runpy; sys.argv = ['convert', sys.argv[1]]; runpy.run_module('onnxruntime.tools.convert_onnx_models_to_ort', run_name='__main__')",
    [dir],
  );
  for (const backend of ["node", "wasm"]) {
    const onnx = await loadModel(dir, { backend, threads: 1 });
    const ort = await loadModel(dir, { backend, threads: 1, format: "ort" });
    const a = onnx.newState(1);
    const b = ort.newState(1);
    assert.deepEqual(await ort.feed([1, 2, 3], b), await onnx.feed([1, 2, 3], a));
    assert.deepEqual(await ort.step([4], b), await onnx.step([4], a));
  }
});
