import assert from "node:assert/strict";
import { createServer } from "node:http";
import { rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import test from "node:test";

import { RWKVEdgeError, State, loadModel } from "../src/index.js";
import { fakeExport, fakeInitialState, fakeStep, writeFakeExport } from "../testing/fake_export.js";
import { tempDir } from "../testing/tmpdir.js";

/** @param {ArrayLike<number>} a @param {ArrayLike<number>} b */
function maxDiff(a, b) {
  assert.equal(a.length, b.length);
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}

/** What stepping the reference math gives: logits after each row's last token, and the state. */
function reference(weights, rows, state = fakeInitialState(weights, rows.length)) {
  let logits;
  for (let t = 0; t < rows[0].length; t++) {
    const r = fakeStep(
      weights,
      rows.map((row) => row[t]),
      state,
    );
    logits = r.logits;
    state = r.state;
  }
  return { logits, state };
}

/** @param {RegExp | string} message */
const userError = (message) => (/** @type {unknown} */ e) =>
  e instanceof RWKVEdgeError && (typeof message === "string" ? e.message === message : message.test(e.message));

for (const backend of ["node", "wasm"]) {
  test(`${backend}: feed in chunks and step give the graph's math, rows apart`, async () => {
    const { files, weights } = fakeExport({ external: true, initFile: true });
    for (const oneSession of [true, false]) {
      const model = await loadModel({ files }, { backend, threads: 1, prefillChunk: 2, oneSession });
      assert.equal(model.graphs.decode.file, oneSession ? "prefill.onnx" : "model.onnx");
      const rows = [
        [1, 2, 3, 4, 5],
        [9, 8, 7, 6, 5],
      ];
      const state = model.newState(2);
      const want = reference(weights, rows);
      assert.ok(maxDiff(await model.feed(rows, state), want.logits) < 1e-5);
      const next = fakeStep(weights, [3, 4], want.state);
      const got = await model.step([3, 4], state);
      assert.ok(maxDiff(got, next.logits) < 1e-5);
      assert.equal(state.logits, got);
      const host = state.toArrays();
      assert.ok(maxDiff(host.att_x.data, next.state.att_x) < 1e-5);
      assert.deepEqual(host.att_x.shape, [2, 2, 4]);
      // a row alone gives what it gives in the batch
      const alone = model.newState(1);
      await model.feed(rows[1], alone);
      assert.ok(maxDiff(await model.step([4], alone), got.subarray(16, 32)) < 1e-6);
      await model.dispose();
    }
  });
}

test("without a sequence graph feed steps through the step graph", async () => {
  const { files, weights } = fakeExport({ withSequence: false });
  const model = await loadModel({ files });
  assert.equal(model.graphs.sequence, null);
  const state = model.newState(1);
  assert.ok(maxDiff(await model.feed([3, 1, 4, 1, 5], state), reference(weights, [[3, 1, 4, 1, 5]]).logits) < 1e-5);
});

test("a step reuses the state's buffers on onnxruntime-node (ping-pong, no new state arrays)", async () => {
  const { files } = fakeExport();
  const model = await loadModel({ files }, { backend: "node" });
  const state = model.newState(1);
  await model.step([1], state);
  const first = state.tensors.map((t) => t.data);
  await model.step([2], state);
  const second = state.tensors.map((t) => t.data);
  await model.step([3], state);
  assert.deepEqual(
    state.tensors.map((t) => t.data),
    first,
  );
  assert.ok(second.every((d, i) => d !== first[i]));
});

test("state: save and load, select and concat, copy", async () => {
  const { files, weights } = fakeExport({ initFile: true });
  const model = await loadModel({ files });
  const state = model.newState(3);
  await model.feed(
    [
      [1, 2],
      [3, 4],
      [5, 6],
    ],
    state,
  );
  const bytes = state.save();
  const back = model.loadState(bytes);
  assert.equal(back.batch, 3);
  assert.deepEqual(back.toArrays(), state.toArrays());
  const picked = state.select([2, 0]);
  const want = reference(weights, [
    [5, 6],
    [1, 2],
  ]);
  assert.ok(maxDiff(picked.toArrays().att_x.data, want.state.att_x) < 1e-6);
  assert.ok(maxDiff(/** @type {Float32Array} */ (picked.logits), want.logits) < 1e-5);
  const joined = State.concat([state.select(2), state.select([0])]);
  assert.deepEqual(joined.toArrays(), picked.toArrays());
  const copy = state.copy();
  await model.step([1, 1, 1], copy);
  assert.deepEqual(state.toArrays(), back.toArrays(), "stepping a copy leaves the original");
  assert.throws(() => state.select([3]), userError("rows must be in [0, 3) and not empty, found [3]"));
  assert.throws(() => state.select([]), userError("rows must be in [0, 3) and not empty, found no rows"));
  assert.throws(() => State.concat([]), userError("concat needs at least one state"));
});

test("loadState refuses files of another model, format or shape", async () => {
  const { files } = fakeExport();
  const model = await loadModel({ files });
  const other = await loadModel({ files: fakeExport({ nEmbd: 8 }).files });
  assert.throws(
    () => model.loadState(other.newState(1).save()),
    userError(
      "state file: state was saved for RWKV-7 (n_layer=2, n_embd=8, vocab_size=16), " +
        "but this model is RWKV-7 (n_layer=2, n_embd=4, vocab_size=16)",
    ),
  );
  assert.throws(
    () => model.loadState(Uint8Array.of(1, 2, 3)),
    userError("state file: not an rwkv-edge state file (expected an .npz written by State.save)"),
  );
  const { writeNpz } = await import("../src/npz.js");
  const meta = (format) => ({
    dtype: "str",
    shape: [],
    data: [JSON.stringify({ format, architecture: model.manifest.architecture, batch: 1 })],
  });
  assert.throws(
    () => model.loadState(writeNpz({ __meta__: meta("other/1") })),
    userError('state file: state format must be "rwkv-edge-state/1", found "other/1"'),
  );
  const f32 = (shape) => ({ dtype: "float32", shape, data: new Float32Array(shape.reduce((a, b) => a * b, 1)) });
  assert.throws(
    () => model.loadState(writeNpz({ __meta__: meta("rwkv-edge-state/1"), "state.att_x": f32([1, 2, 4]) })),
    userError('state file is missing tensor "att_p" (expected: att_x, att_p)'),
  );
  assert.throws(
    () =>
      model.loadState(
        writeNpz({ __meta__: meta("rwkv-edge-state/1"), "state.att_x": f32([1, 2, 4]), "state.att_p": f32([1, 3, 4]) }),
      ),
    userError('state file tensor "att_p": expected shape [1,2,4] ([batch, 2, 4]), found [1,3,4]'),
  );
  assert.throws(
    () =>
      model.loadState(
        writeNpz({ __meta__: meta("rwkv-edge-state/1"), "state.att_x": f32([1, 2, 4]), "state.att_p": f32([2, 2, 4]) }),
      ),
    userError('state file tensor "att_p" has batch 2, but "att_x" has batch 1'),
  );
});

test("bad input to step, feed and newState is refused in one line", async () => {
  const { files } = fakeExport();
  const model = await loadModel({ files });
  const state = model.newState(2);
  await assert.rejects(
    model.step([1, 16], state),
    userError("token id 16 at position [1] is outside the vocabulary [0, 16)"),
  );
  await assert.rejects(
    model.step([-1, 0], state),
    userError("token id -1 at position [0] is outside the vocabulary [0, 16)"),
  );
  await assert.rejects(model.step([1.5, 0], state), userError("token ids must be integers, found 1.5 at position [0]"));
  await assert.rejects(
    model.step([1], state),
    userError("expected one token id per state row for a batch of 2, found 1 ids"),
  );
  await assert.rejects(
    model.feed([1, 2], state),
    userError("expected token ids shaped [batch, seq] for a batch of 2 (rows of one length >= 1), found 2 ids"),
  );
  await assert.rejects(
    model.feed([[1, 2], [3]], state),
    userError(
      "expected token ids shaped [batch, seq] for a batch of 2 (rows of one length >= 1), found 2 rows of lengths 2, 1",
    ),
  );
  await assert.rejects(
    model.feed([[1], [99]], state),
    userError("token id 99 at position [1, 0] is outside the vocabulary [0, 16)"),
  );
  await assert.rejects(
    model.step([1, 2], /** @type {any} */ ({})),
    userError("expected a State (from model.newState), found Object"),
  );
  assert.throws(() => model.newState(0), userError("batch must be a whole number >= 1, found 0"));
  const other = await loadModel({ files: fakeExport({ nLayer: 3 }).files });
  await assert.rejects(
    other.step([1, 2], state),
    userError(
      "state does not fit this model: it has att_x[batch, 2, 4], att_p[batch, 2, 4]; the model expects att_x[batch, 3, 4], att_p[batch, 3, 4]",
    ),
  );
  // a failed call leaves the state as it was
  assert.equal(state.logits, null);
});

test("loadModel refuses what it cannot open, in one line", async (t) => {
  const dir = tempDir(t);
  await assert.rejects(loadModel(path.join(dir, "nope")), userError(`${path.join(dir, "nope")}: no such directory`));
  await assert.rejects(
    loadModel(dir),
    userError(`${dir}: not an export directory (no rwkv.json); create one with \`rwkv-export export\``),
  );
  writeFakeExport(dir, { external: true });
  await assert.rejects(
    loadModel(path.join(dir, "rwkv.json")),
    userError(`${path.join(dir, "rwkv.json")}: expected an export directory, found a file`),
  );
  await assert.rejects(
    loadModel(dir, { precision: "int4" }),
    userError(/^no step graph of precision int4 in this export \(it has: step\/fp32, sequence\/fp32\)/),
  );
  await assert.rejects(
    loadModel(dir, { format: "tflite" }),
    userError('format must be one of onnx, ort, found "tflite"'),
  );
  await assert.rejects(
    loadModel(dir, { format: "ort" }),
    userError(
      /^prefill.onnx \(sequence graph, fp32\) has no ORT-format file \(graphs\[\]\.ort\); write them with `rwkv-export ort DIR`$/,
    ),
  );
  await assert.rejects(
    loadModel(dir, { format: "ort", backend: "webgpu" }),
    userError('format "ort" runs on the node and wasm backends, not on webgpu; use format "onnx"'),
  );
  await assert.rejects(
    loadModel(dir, { backend: "cuda" }),
    userError('unknown backend "cuda"; expected one of: wasm, webgpu, webgpu-jsep, node'),
  );
  await assert.rejects(
    loadModel(dir, { backend: "webgpu" }),
    userError('backend "webgpu" needs WebGPU (navigator.gpu), which this runtime lacks'),
  );
  await assert.rejects(loadModel(dir, { threads: 0 }), userError("threads must be a whole number >= 1, found 0"));
  await assert.rejects(
    loadModel(dir, { prefillChunk: 0 }),
    userError("prefillChunk must be a whole number >= 1, found 0"),
  );
  await assert.rejects(
    loadModel(/** @type {any} */ (42)),
    userError("model source must be a URL, a directory path or {files: {name: Uint8Array}}, found number"),
  );
  rmSync(path.join(dir, "model.onnx.data"));
  await assert.rejects(
    loadModel(dir, { backend: "wasm" }),
    userError(`${dir}/model.onnx.data: external data of prefill.onnx is missing; re-run \`rwkv-export export\``),
  );
  rmSync(path.join(dir, "prefill.onnx"));
  await assert.rejects(
    loadModel(dir),
    userError(
      `${dir}/prefill.onnx: listed in rwkv.json but missing; re-run \`rwkv-export export\` (sequence graph, fp32)`,
    ),
  );
  writeFileSync(path.join(dir, "prefill.onnx"), "not a graph");
  await assert.rejects(
    loadModel(dir, { backend: "node" }),
    userError(/^prefill.onnx: ONNX Runtime \(node\) cannot load it \(/),
  );
  await assert.rejects(loadModel(dir, { backend: "wasm" }), userError(/^prefill.onnx: not an ONNX graph \(/));
});

test("graphs[].backends: a graph the backend cannot run is refused before loading", async () => {
  const { files } = fakeExport({
    manifest: (m) => {
      m.graphs[1].needs = ["com.microsoft.MatMulNBits:bits=8"];
      m.graphs[1].backends = ["cpu", "node", "wasm", "webgpu"];
      return m;
    },
  });
  await assert.rejects(
    loadModel({ files }, { backend: "webgpu-jsep" }),
    userError(
      "prefill.onnx (sequence graph, fp32) cannot run on backend webgpu-jsep: it needs com.microsoft.MatMulNBits:bits=8; " +
        "backends that can: cpu, node, wasm, webgpu",
    ),
  );
  const model = await loadModel({ files }, { backend: "node" });
  assert.equal(model.backend, "node");
});

test("graphs that do not match rwkv.json are refused", async () => {
  const { files } = fakeExport({ manifest: (m) => ((m.state[1].output = "att_q_out"), m) });
  await assert.rejects(
    loadModel({ files }),
    userError(
      'prefill.onnx does not match rwkv.json: no graph output "att_q_out" (it has att_p_out, att_x_out, logits)',
    ),
  );
});

test("a bad init_file is refused", async () => {
  const { files } = fakeExport({ initFile: true });
  const { writeNpy } = await import("../src/npy.js");
  files["att_x_init.npy"] = writeNpy({ dtype: "float32", shape: [2, 5], data: new Float32Array(10) });
  await assert.rejects(
    loadModel({ files }),
    userError(
      'the given files/att_x_init.npy: initial state of "att_x" must be float32 [2,4] ([batch, 2, 4] without the batch axis), found float32 [2,5]',
    ),
  );
  delete files["att_x_init.npy"];
  await assert.rejects(
    loadModel({ files }),
    userError(/^the given files\/att_x_init.npy: initial state of "att_x" listed in rwkv.json but missing/),
  );
});

test("from a URL: files fetched, sizes checked against wasm32's 4 GiB before anything large is read", async (t) => {
  const { files } = fakeExport({ external: true });
  const reads = [];
  const server = createServer((request, response) => {
    const name = decodeURIComponent(new URL(request.url ?? "/", "http://x").pathname.slice(1));
    const body = files[name];
    if (!body) return response.writeHead(404).end();
    if (request.method === "GET") reads.push(name);
    // the data file claims 5 GiB on HEAD: the check must come from the size alone
    const huge = name === "model.onnx.data";
    response.writeHead(200, { "Content-Length": huge && request.method === "HEAD" ? 5 * 1024 ** 3 : body.length });
    response.end(request.method === "HEAD" ? undefined : body);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(undefined)));
  t.after(() => server.close());
  const url = `http://127.0.0.1:${/** @type {any} */ (server.address()).port}/`;
  await assert.rejects(
    loadModel(url, { backend: "wasm" }),
    userError(
      "model too large for backend wasm: the fp32 graphs and their data are 5.00 GiB (prefill.onnx, model.onnx.data), " +
        "over WebAssembly's 4 GiB memory; pick a smaller precision (int8, int4) or run it with onnxruntime-node",
    ),
  );
  assert.ok(!reads.includes("model.onnx.data"));
  const model = await loadModel(url, { backend: "node" });
  assert.equal(model.vocabSize, 16);
  await assert.rejects(
    loadModel(url + "nope/"),
    userError(`${url}nope/: not an export directory (no rwkv.json); create one with \`rwkv-export export\``),
  );
});

test("loadTokenizer: the tokenizer rwkv.json names, or one line saying why not", async () => {
  const world = (file) =>
    fakeExport({
      vocab: 300,
      manifest: (m) => ((m.tokenizer = { kind: "world", file }), m),
    }).files;
  const files = world("vocab.txt");
  files["vocab.txt"] = new TextEncoder().encode("1 'a' 1\n2 'b' 1\n299 'ab' 2\n");
  const tokenizer = await (await loadModel({ files })).loadTokenizer();
  assert.equal(tokenizer.kind, "world");
  assert.deepEqual(tokenizer.encode("aab"), [1, 299]);
  const missing = await loadModel({ files: world("vocab.txt") });
  await assert.rejects(
    missing.loadTokenizer(),
    userError('world tokenizer file "vocab.txt" not found in the given files'),
  );
  const neox = await loadModel({
    files: fakeExport({ manifest: (m) => ((m.tokenizer = { kind: "neox20b", file: "tokenizer.json" }), m) }).files,
  });
  await assert.rejects(neox.loadTokenizer(), userError(/^tokenizer kind "neox20b" is not supported in rwkv-edge-web/));
});
