import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import test from "node:test";

import { readNpy, writeNpy } from "../src/npy.js";
import { readNpz, writeNpz } from "../src/npz.js";
import { SKIP_PYTHON, runPython } from "../testing/python.js";
import { tempDir } from "../testing/tmpdir.js";

test(".npy round trip for every dtype the state files use, and more", () => {
  const arrays = [
    { dtype: "float32", shape: [2, 3], data: Float32Array.of(1, -2, 3.5, 1e-38, -1e38, 0) },
    { dtype: "float64", shape: [3], data: Float64Array.of(Math.PI, -0, 1e300) },
    { dtype: "float16", shape: [2], data: Uint16Array.of(0x3c00, 0xc000) },
    { dtype: "int64", shape: [2, 1], data: BigInt64Array.of(-5n, 1n << 40n) },
    { dtype: "int32", shape: [], data: Int32Array.of(7) },
    { dtype: "uint8", shape: [0], data: new Uint8Array(0) },
    { dtype: "bool", shape: [2], data: Uint8Array.of(1, 0) },
    { dtype: "str", shape: [], data: ['{"format": "rwkv-edge-state/1", "é": "😀"}'] },
    { dtype: "str", shape: [2], data: ["ab", ""] },
  ];
  for (const array of arrays) {
    const bytes = writeNpy(/** @type {any} */ (array));
    const headerEnd = bytes.indexOf(0x0a) + 1;
    assert.equal(headerEnd % 64, 0, "numpy aligns the data to 64 bytes");
    const back = readNpy(bytes);
    assert.equal(back.dtype, array.dtype);
    assert.deepEqual(back.shape, array.shape);
    assert.deepEqual(Array.from(/** @type {any} */ (back.data)), Array.from(/** @type {any} */ (array.data)));
  }
});

test("the header is numpy's, byte for byte", () => {
  const bytes = writeNpy({ dtype: "float32", shape: [1, 3, 96], data: new Float32Array(288) });
  const header = new TextDecoder("latin1").decode(bytes.subarray(10, bytes.indexOf(0x0a)));
  assert.equal(header.trimEnd(), "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 96), }");
  assert.equal(bytes[6], 1);
  assert.equal(new DataView(bytes.buffer).getUint16(8, true), 118);
  const meta = writeNpy({ dtype: "str", shape: [], data: ["ab"] });
  assert.match(
    new TextDecoder("latin1").decode(meta.subarray(10, 80)),
    /^\{'descr': '<U2', 'fortran_order': False, 'shape': \(\), \} +$/,
  );
});

test("bad .npy bytes are refused in one line", () => {
  assert.throws(() => readNpy(new Uint8Array(20), "x.npy"), {
    message: "x.npy: not a .npy array (no \\x93NUMPY magic)",
  });
  const good = writeNpy({ dtype: "float32", shape: [4], data: new Float32Array(4) });
  assert.throws(() => readNpy(good.subarray(0, good.length - 1), "x.npy"), {
    message: "x.npy: not a .npy array (truncated data)",
  });
  const bigEndian = good.slice();
  bigEndian[bigEndian.indexOf(0x3c)] = 0x3e; // '<f4' -> '>f4'
  assert.throws(() => readNpy(bigEndian, "x.npy"), { message: "x.npy: not a .npy array (big-endian dtype >f4)" });
});

test(".npz round trip", () => {
  const bytes = writeNpz({
    __meta__: { dtype: "str", shape: [], data: ["{}"] },
    "state.att_x": { dtype: "float32", shape: [1, 2], data: Float32Array.of(1, 2) },
  });
  const back = readNpz(bytes);
  assert.deepEqual(Object.keys(back).sort(), ["__meta__", "state.att_x"]);
  assert.deepEqual(Array.from(/** @type {Float32Array} */ (back["state.att_x"].data)), [1, 2]);
  assert.throws(() => readNpz(Uint8Array.of(1, 2, 3), "s.npz"), /^RWKVEdgeError: s.npz: not a zip archive/);
});

test("numpy reads what is written here, and the other way round", { skip: SKIP_PYTHON }, (t) => {
  const dir = tempDir(t);
  const ours = path.join(dir, "ours.npz");
  writeFileSync(
    ours,
    writeNpz({
      __meta__: { dtype: "str", shape: [], data: ['{"a": "é😀"}'] },
      "state.wkv": { dtype: "float32", shape: [2, 1, 3], data: Float32Array.of(1, 2, 3, 4, 5, 6.5) },
    }),
  );
  const seen = runPython(
    `import sys, json, numpy as np
with np.load(sys.argv[1], allow_pickle=False) as z:
    print(json.dumps({"meta": str(z["__meta__"][()]), "dtype": str(z["state.wkv"].dtype),
                      "shape": list(z["state.wkv"].shape), "sum": float(z["state.wkv"].sum())}))
np.savez(sys.argv[2], __meta__=np.array("héllo 😀"), x=np.arange(6, dtype=np.float32).reshape(3, 2), i=np.array([-1, 2**40]))
np.savez_compressed(sys.argv[3], y=np.array([True, False]))
np.save(sys.argv[4], np.full((1, 3, 96), 0.25, dtype=np.float32))`,
    [ours, path.join(dir, "theirs.npz"), path.join(dir, "packed.npz"), path.join(dir, "one.npy")],
  );
  assert.deepEqual(JSON.parse(seen), { meta: '{"a": "é😀"}', dtype: "float32", shape: [2, 1, 3], sum: 21.5 });
  const theirs = readNpz(readFileSync(path.join(dir, "theirs.npz")));
  assert.deepEqual(theirs.__meta__, { dtype: "str", shape: [], data: ["héllo 😀"] });
  assert.deepEqual(theirs.x.shape, [3, 2]);
  assert.deepEqual(Array.from(/** @type {Float32Array} */ (theirs.x.data)), [0, 1, 2, 3, 4, 5]);
  assert.deepEqual(Array.from(/** @type {BigInt64Array} */ (theirs.i.data)), [-1n, 1n << 40n]);
  const packed = readNpz(readFileSync(path.join(dir, "packed.npz")));
  assert.deepEqual(packed.y, { dtype: "bool", shape: [2], data: Uint8Array.of(1, 0) });
  const npy = readFileSync(path.join(dir, "one.npy"));
  assert.deepEqual(
    new Uint8Array(npy),
    writeNpy({ dtype: "float32", shape: [1, 3, 96], data: new Float32Array(288).fill(0.25) }),
  );
});
