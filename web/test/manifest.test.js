import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import test from "node:test";

import { RWKVEdgeError } from "../src/errors.js";
import { findGraph, parseManifest } from "../src/manifest.js";
import { MANIFEST_SCHEMA } from "../src/manifest_schema.js";
import { fakeExport } from "../testing/fake_export.js";

const RUNTIME_SCHEMA = new URL("../../runtime/manifest.schema.json", import.meta.url);

/** A valid manifest, changed by `edit`. @param {(m: any) => void} edit */
function manifestWith(edit) {
  const { manifest } = fakeExport();
  const m = structuredClone(manifest);
  edit(m);
  return m;
}

/** @param {(m: any) => void} edit @param {string} message */
function refuses(edit, message) {
  assert.throws(
    () => parseManifest(manifestWith(edit)),
    (e) => e instanceof RWKVEdgeError && e.message === message,
  );
}

test("the schema is the Python runtime's", { skip: !existsSync(RUNTIME_SCHEMA) && "runtime/ not beside web/" }, () => {
  assert.deepEqual(MANIFEST_SCHEMA, JSON.parse(readFileSync(RUNTIME_SCHEMA, "utf-8")));
});

test("a valid manifest reads with defaults filled and unknown fields dropped", () => {
  const m = parseManifest(
    manifestWith((m) => {
      delete m.graphs[0].input;
      delete m.state[0].dtype;
      m.graphs[0].future_field = 1;
      m.graphs[0].backends = ["node", "wasm"];
      m.newer_top_level = {};
    }),
  );
  assert.equal(m.graphs[0].input, "input_ids");
  assert.equal(m.graphs[0].rescale_every, 0);
  assert.equal(m.graphs[0].ort, null);
  assert.deepEqual(m.graphs[0].backends, ["node", "wasm"]);
  assert.equal("future_field" in m.graphs[0], false);
  assert.equal(m.state[0].dtype, "float32");
  assert.equal(m.state[1].init, -1e38);
});

test("manifest errors name the field in one line", () => {
  refuses((m) => (m.format = "rwkv-edge/2"), 'rwkv.json: format: expected "rwkv-edge/1", found "rwkv-edge/2"');
  refuses((m) => delete m.architecture.n_layer, "rwkv.json: architecture.n_layer is missing");
  refuses((m) => (m.architecture.n_embd = "4"), 'rwkv.json: architecture.n_embd: expected a whole number, found "4"');
  refuses(
    (m) => (m.architecture.vocab_size = 0),
    "rwkv.json: architecture.vocab_size: expected a whole number >= 1, found 0",
  );
  refuses(
    (m) => (m.architecture.version = "8"),
    'rwkv.json: architecture.version: expected one of "4", "5", "5.1", "5.2", "6", "7", found "8"',
  );
  refuses(
    (m) => (m.graphs[0].precision = "fp64"),
    'rwkv.json: graphs[0].precision: expected one of "fp32", "fp16", "int8", "int4", "int8-dynamic", "int8-rowwise", found "fp64"',
  );
  refuses((m) => (m.graphs = []), "rwkv.json: graphs: expected at least 1 entry, found none");
  refuses(
    (m) => (m.tokenizer.kind = "gpt2"),
    'rwkv.json: tokenizer.kind: expected one of "world", "neox20b", "bytes", found "gpt2"',
  );
  refuses((m) => (m.state[0].shape = [2, 4]), 'rwkv.json: state[0].shape: expected exactly one "batch" entry, found 0');
  refuses(
    (m) => (m.state[0].shape = ["batch", 0, 4]),
    'rwkv.json: state[0].shape[1]: expected "batch" or a whole number >= 1, found 0',
  );
  refuses(
    (m) => (m.graphs[1].backends = "wasm"),
    'rwkv.json: graphs[1].backends: expected a list or null, found "wasm"',
  );
  assert.throws(() => parseManifest("{"), /^RWKVEdgeError: rwkv.json: not valid JSON/);
  assert.throws(() => parseManifest("[]"), { message: "rwkv.json: expected an object, found a list" });
});

test("paths must stay inside the export directory", () => {
  const words = "expected a plain relative path inside the export directory";
  refuses((m) => (m.graphs[0].file = "/etc/passwd"), `rwkv.json: graphs[0].file: ${words}, found "/etc/passwd"`);
  refuses((m) => (m.graphs[0].file = "../model.onnx"), `rwkv.json: graphs[0].file: ${words}, found "../model.onnx"`);
  refuses((m) => (m.graphs[0].file = "a\\b.onnx"), `rwkv.json: graphs[0].file: ${words}, found "a\\\\b.onnx"`);
  refuses((m) => (m.state[0].init_file = "x/./y.npy"), `rwkv.json: state[0].init_file: ${words}, found "x/./y.npy"`);
  refuses((m) => (m.graphs[0].ort = "../m.ort"), `rwkv.json: graphs[0].ort: ${words}, found "../m.ort"`);
  parseManifest(manifestWith((m) => (m.graphs[0].file = "graphs/model.onnx")));
});

test("findGraph says what the export has", () => {
  const m = parseManifest(manifestWith(() => {}));
  assert.equal(findGraph(m, "sequence", "fp32").file, "prefill.onnx");
  assert.throws(() => findGraph(m, "step", "int8"), {
    message:
      "no step graph of precision int8 in this export (it has: step/fp32, sequence/fp32); " +
      "run `rwkv-export quantize` or pick another precision",
  });
});
