"""Random-weight checkpoints (rwkv_edge.exporter.random_checkpoint), the loader (exporter/checkpoint.py) and the
`rwkv` package runner."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rwkv_edge.exporter.checkpoint import checkpoint_from_weights, describe, load_checkpoint
from rwkv_edge.exporter.random_checkpoint import VERSIONS, make_checkpoint, save_checkpoint
from rwkv_edge.runtime.errors import RWKVEdgeError
from rwkv_edge.validation import reference_rwkv
from rwkv_edge.validation.reference_rwkv import run_rwkv_package

L, C, V = 2, 64, 100
HEAD = {"4": 64, "5": 32, "5.1": 16, "5.2": 16, "6": 32, "7": 16}  # both 16 and 32 wide heads
TOKENS = [int(t) for t in np.random.default_rng(0).integers(0, V, 32)]


def tiny(version: str, **kw) -> dict:
    return make_checkpoint(version, L, C, HEAD[version], V, **kw)


@pytest.fixture(scope="module")
def pth(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    return {v: save_checkpoint(tiny(v), d / f"rwkv{v}.pth") for v in VERSIONS}


def expect_error(fn, *words) -> str:
    with pytest.raises(RWKVEdgeError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and msg.strip() == msg, msg
    for w in words:
        assert w in msg, msg
    return msg


# ---------------------------------------------------------------------------------------------------- the reference


@pytest.mark.parametrize("version", VERSIONS)
def test_package_runs_random_checkpoint_sanely(pth, version):
    r = run_rwkv_package(pth[version], version, TOKENS, threads=1)
    logits = r["logits"]
    assert logits.shape == (len(TOKENS), V) and logits.dtype == np.float32
    assert np.isfinite(logits).all()
    std = logits.std(axis=1)
    assert (std > 0.1).all() and (std < 100).all(), std
    assert np.abs(np.diff(logits, axis=0)).max(axis=1).min() > 1e-3  # every step differs from the last
    assert r["step_seconds"].shape == (len(TOKENS),) and r["package_version"] == version
    H, N = C // HEAD[version], HEAD[version]
    if version == "4":
        names = ("att_x", "att_a", "att_b", "att_p", "ffn_x")
        assert {k: v.shape for k, v in r["state"].items()} == {k: (L, C) for k in names}
    else:
        assert {k: v.shape for k, v in r["state"].items()} == {"att_x": (L, C), "wkv": (L, H, N, N), "ffn_x": (L, C)}
        assert r["wkv_axes"] == (("head", "value", "key") if version == "7" else ("head", "key", "value"))
    assert all(np.isfinite(s).all() for s in r["state"].values())


def test_package_reads_safetensors_and_time_state_like_the_pth(tmp_path):
    # one layer, and safetensors sorts keys by name: both would fool the package's key-order detection unaided
    w = make_checkpoint("6", 1, C, 16, V, time_state=True, seed=3)
    a = run_rwkv_package(save_checkpoint(w, tmp_path / "m.safetensors"), "6", TOKENS[:8], threads=1, warmup=0)
    b = run_rwkv_package(save_checkpoint(w, tmp_path / "m.pth"), "6", TOKENS[:8], threads=1, warmup=0)
    np.testing.assert_array_equal(a["logits"], b["logits"])
    np.testing.assert_array_equal(a["state"]["wkv"], b["state"]["wkv"])


def test_package_runs_deepembed(tmp_path):
    path = save_checkpoint(tiny("7", deepembed=True), tmp_path / "de.pth")
    r = run_rwkv_package(path, "7", TOKENS[:8], threads=1, variant="deepembed", warmup=0, want_states=False)
    assert np.isfinite(r["logits"]).all() and 0.1 < r["logits"].std() < 100 and "state" not in r


def test_package_version_mismatch_is_refused(pth):
    expect_error(lambda: run_rwkv_package(pth["4"], "5", TOKENS[:2], threads=1, want_states=False), "detected RWKV-4")


def test_package_missing_is_one_clear_line(pth, monkeypatch):
    monkeypatch.setattr(reference_rwkv.importlib.util, "find_spec", lambda name, *a: None)
    expect_error(lambda: run_rwkv_package(pth["7"], "7", TOKENS), "pip install 'rwkv-edge[reference]'")


# ---------------------------------------------------------------------------------------------------- detection


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("fmt,dtype", [("pth", torch.float32), ("safetensors", torch.bfloat16), ("pth", torch.float16)])
def test_load_detects_every_generation(tmp_path, version, fmt, dtype):
    w = tiny(version, dtype=dtype)
    ck = load_checkpoint(save_checkpoint(w, tmp_path / f"m.{fmt}"))
    a = ck.arch
    H = 1 if version == "4" else C // HEAD[version]
    assert (a.version, a.n_layer, a.n_embd, a.n_head, a.head_size, a.vocab_size) == (version, L, C, H, C // H, V)
    assert a.n_ffn == (4 * C if version in ("4", "7") else 224)
    assert set(ck.weights) == set(w)  # official keys, unchanged
    assert all(t.dtype == torch.float32 and t.is_contiguous() for t in ck.weights.values())
    torch.testing.assert_close(
        ck.weights["blocks.1.att.key.weight"], w["blocks.1.att.key.weight"].float(), rtol=0, atol=0
    )
    assert ck.extra["dtype"] == str(dtype).replace("torch.", "") and ck.extra["format"] == fmt
    assert not ck.has_time_state and ck.variant == "" and "unknown_keys" not in ck.extra


def test_detects_time_state_and_deepembed():
    ck = checkpoint_from_weights(tiny("5.2", time_state=True))
    assert ck.has_time_state and ck.weights["blocks.0.att.time_state"].shape == (4, 16, 16)
    ck = checkpoint_from_weights(tiny("7", deepembed=True))
    assert ck.variant == "deepembed" and "unknown_keys" not in ck.extra
    assert describe(ck) == "RWKV-7 L2 C64 H4 N16 vocab 100, 503K params, DeepEmbed"


def test_describe():
    assert describe(checkpoint_from_weights(tiny("7"))) == "RWKV-7 L2 C64 H4 N16 vocab 100, 147K params"
    assert describe(checkpoint_from_weights(tiny("4"))) == "RWKV-4 L2 C64 vocab 100, 121K params"


def test_random_checkpoints_are_deterministic_by_seed():
    a, b, c = tiny("6", seed=1), tiny("6", seed=1), tiny("6", seed=2)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["head.weight"], c["head.weight"])


# ---------------------------------------------------------------------------------------------------- bad input


class NotATensor:  # a custom class inside a .pth: weights_only refuses to unpickle it
    pass


def test_bad_paths(tmp_path):
    expect_error(lambda: load_checkpoint(tmp_path / "nope.pth"), "no such file")
    (tmp_path / "d").mkdir()
    expect_error(lambda: load_checkpoint(tmp_path / "d"), "found a directory")
    (tmp_path / "m.bin").write_bytes(b"x")
    expect_error(lambda: load_checkpoint(tmp_path / "m.bin"), ".pth or .safetensors", "'.bin'")


def test_corrupt_files(tmp_path, pth):
    data = pth["7"].read_bytes()
    for name, blob in [("trunc.pth", data[: len(data) // 2]), ("junk.pth", b"hello" * 20), ("empty.pth", b"")]:
        (tmp_path / name).write_bytes(blob)
        expect_error(lambda path=tmp_path / name: load_checkpoint(path), name)
    st = save_checkpoint(tiny("7"), tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(st[:-10])
    expect_error(lambda: load_checkpoint(tmp_path / "trunc.safetensors"), "truncated or corrupt")


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"emb.weight": torch.ones(2, 2), "cfg": NotATensor()}, tmp_path / "evil.pth")
    expect_error(lambda: load_checkpoint(tmp_path / "evil.pth"), "Python objects other than tensors", "safety")


def test_not_rwkv_checkpoints(tmp_path):
    torch.save([torch.ones(2)], tmp_path / "list.pth")
    expect_error(lambda: load_checkpoint(tmp_path / "list.pth"), "dict of tensors", "list")
    torch.save({"fc.weight": torch.ones(2, 2)}, tmp_path / "other.pth")
    expect_error(lambda: load_checkpoint(tmp_path / "other.pth"), "not an RWKV checkpoint", "emb.weight", "blocks.*")
    torch.save({"emb.weight": torch.ones(2, 2), "epoch": 3}, tmp_path / "mixed.pth")
    expect_error(lambda: load_checkpoint(tmp_path / "mixed.pth"), "non-tensor entries", "epoch")


def test_inconsistent_checkpoints():
    w = make_checkpoint("7", 3, C, 16, V)
    no_layer = {k: t for k, t in w.items() if not k.startswith("blocks.1.")}
    expect_error(lambda: checkpoint_from_weights(no_layer), "blocks 1 missing")
    no_key = {k: t for k, t in w.items() if k != "blocks.2.att.key.weight"}
    expect_error(lambda: checkpoint_from_weights(no_key), "blocks.2.att.key.weight")
    expect_error(lambda: checkpoint_from_weights({k: t for k, t in w.items() if k != "head.weight"}), "head.weight")
    bad_shape = dict(w, **{"blocks.2.att.w0": torch.zeros(1, 1, C + 1)})
    expect_error(lambda: checkpoint_from_weights(bad_shape), "blocks.2.att.w0", "[1, 1, 65]")
    narrow_head = dict(w, **{"head.weight": torch.zeros(V, C // 2)})
    expect_error(lambda: checkpoint_from_weights(narrow_head), "head.weight", f"expected [{V}, {C}]")
    ints = dict(w, **{"blocks.0.att.r_k": torch.zeros(4, 16, dtype=torch.int64)})
    expect_error(lambda: checkpoint_from_weights(ints), "int64")
    converted = dict(w, _strategy="cpu fp32")
    expect_error(lambda: checkpoint_from_weights(converted), "converted by the `rwkv` package")
