"""quant/policy.py: every weight lands in the group the policy names, and what stays float says why."""

import onnx
import pytest

from rwkv_edge.quant.policy import GROUPS, Policy, group_of, plan
from rwkv_edge.quant.schemes import SCHEMES, check_block_size, get_scheme
from rwkv_edge.runtime.errors import RWKVEdgeError


@pytest.mark.parametrize(
    "name, group",
    [
        ("head.weight", "head"),
        ("emb.weight", "emb"),
        ("blocks.3.att.key.weight", "matrix"),
        ("blocks.0.att.receptance.weight", "matrix"),
        ("blocks.11.att.output.weight", "matrix"),
        ("blocks.2.att.gate.weight", "matrix"),
        ("blocks.1.ffn.value.weight", "matrix"),
        ("blocks.1.ffn.receptance.weight", "matrix"),
        ("blocks.4.att.w1", "lowrank"),
        ("blocks.4.att.a2", "lowrank"),
        ("blocks.4.att.v1", "lowrank"),
        ("blocks.4.att.g2", "lowrank"),
        ("blocks.5.att.time_maa_w1", "lowrank"),
        ("blocks.5.att.time_decay_w2", "lowrank"),
        # stays float: norms, mix vectors, decay, RWKV-7 key normalisation, low-rank biases
        ("blocks.0.ln1.weight", "float"),
        ("blocks.0.att.ln_x.bias", "float"),
        ("ln_out.weight", "float"),
        ("blocks.2.att.time_decay", "float"),
        ("blocks.2.att.time_first", "float"),
        ("blocks.2.att.time_faaaa", "float"),
        ("blocks.2.att.time_mix_k", "float"),
        ("blocks.2.att.time_maa_x", "float"),
        ("blocks.2.att.x_r", "float"),
        ("blocks.2.ffn.x_k", "float"),
        ("blocks.2.att.k_k", "float"),
        ("blocks.2.att.k_a", "float"),
        ("blocks.2.att.r_k", "float"),
        ("blocks.2.att.w0", "float"),
        ("blocks.2.att.a0", "float"),
        ("blocks.2.att.v0", "float"),
        ("val_17", "float"),
    ],
)
def test_groups_by_name(name, group):
    assert group_of(name) == group


def test_plan_of_a_v7_export(exported):
    _, out = exported("7", 2, 64, 16, 301)
    model = onnx.load(out / "model.onnx")
    p = plan(model, Policy())
    planned = {s.weight: s for s in p.matmuls}
    for i in range(2):
        for m in ("receptance", "key", "value", "output"):
            assert planned[f"blocks.{i}.att.{m}.weight"].group == "matrix"
        for m in ("key", "value"):
            assert planned[f"blocks.{i}.ffn.{m}.weight"].group == "matrix"
        for m in ("w1", "w2", "a1", "a2", "g1", "g2"):
            assert planned[f"blocks.{i}.att.{m}"].group == "lowrank"
    assert planned["head.weight"].group == "head" and planned["head.weight"].bits == 8
    site, where = p.embedding
    assert site.group == "emb" and where.indices == "input_ids"
    # the vectors stay float, each with its reason
    assert p.kept["blocks.0.att.k_k"] == "RWKV-7 key normalisation"
    assert p.kept["blocks.1.ln1.weight"] == "norm"
    assert p.kept["blocks.1.att.x_w"] == "token-shift mix"
    assert p.kept["blocks.1.att.w0"] == "decay / bonus"
    assert not any(name in planned for name in p.kept)
    summary = p.summary()
    assert set(summary["quantized"]) == {"matrix", "lowrank", "head", "emb"}


def test_plan_of_a_v4_export(exported):
    _, out = exported("4", 2, 64, 64, 301)
    p = plan(onnx.load(out / "model.onnx"), Policy())
    planned = {s.weight for s in p.matmuls}
    assert "blocks.1.ffn.receptance.weight" in planned and "head.weight" in planned
    assert p.kept["blocks.0.att.time_decay"] == "decay / bonus"
    assert p.kept["blocks.0.att.time_first"] == "decay / bonus"
    assert p.embedding is not None


def test_keep_float_moves_groups_out_of_the_plan(exported):
    _, out = exported("7", 2, 64, 16, 301)
    model = onnx.load(out / "model.onnx")
    p = plan(model, Policy().keep_float(["head", "emb", "lowrank"]))
    assert {s.group for s in p.matmuls} == {"matrix"}
    assert p.embedding is None
    assert p.kept["head.weight"] == "head: kept float by the policy"
    assert p.kept["blocks.0.att.w1"] == "lowrank: kept float by the policy"


def test_unknown_group_is_a_clear_error():
    with pytest.raises(RWKVEdgeError, match="unknown weight group 'heads'.*head, emb"):
        Policy().keep_float(["heads"])


def test_schemes_and_block_sizes():
    assert set(SCHEMES) == {"int8", "int8-dynamic", "int8-rowwise", "int4", "fp16"}
    assert get_scheme("INT8").precision == "int8" and get_scheme("int4").precision == "int4"
    assert get_scheme("int8-dynamic").method == "dynamic"
    with pytest.raises(
        RWKVEdgeError,
        match="unknown quantization scheme 'int5'; expected one of: int8, int8-dynamic, int8-rowwise, int4, fp16",
    ):
        get_scheme("int5")
    assert check_block_size(32) == 32
    with pytest.raises(RWKVEdgeError, match="block size must be one of 16, 32, 64, 128, 256, found 48"):
        check_block_size(48)
    assert set(GROUPS) == {"matrix", "lowrank", "head", "emb"}
