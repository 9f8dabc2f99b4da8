"""rwkv-export quantize as named steps: check -> load -> plan -> quantize (fp16: rescale and convert, fp16.py) ->
restore functions -> save staged -> check it opens -> commit (files, then rwkv.json).

    result = quantize_export("out/", "int8", block_size=128)
    result.manifest.graph("step", "int8").file   # "model.int8.onnx"
    quantize_export("out/", "fp16")                # model.fp16.onnx: fp16 weights and activations (fp16.py)

Each fp32 graph of the export (the step graph, and the sequence graph when there is one) gets a sibling
`<stem>.<precision>.onnx`; the fp32 files are only read. Nothing in the export directory changes until the
new graphs are written and open in ONNX Runtime: they are staged in a temp folder inside the directory, then
renamed into place, then rwkv.json is rewritten atomically. Replacing an existing quantized graph (overwrite)
first drops it from rwkv.json, so an interrupted run never leaves a manifest that points at a mix of files.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnxruntime as ort

from rwkv_edge.common.files import move_into, staging_folder
from rwkv_edge.common.onnx_files import GraphWriter, graph_bytes
from rwkv_edge.common.versions import package_version
from rwkv_edge.deploy.backends import backends_for, graph_needs
from rwkv_edge.runtime.errors import RWKVEdgeError
from rwkv_edge.runtime.manifest import GraphSpec, Manifest, load_manifest, replace_manifest

from .dynamic import quantize_dynamic_int8
from .embedding import quantize_embedding
from .fp16 import convert_fp16, fp16_summary
from .functions import restore_contract
from .node_names import name_nodes
from .policy import GROUPS, Plan, plan
from .rescale import rescale_every
from .rowwise import quantize_rowwise_int8
from .schemes import DEFAULT_BLOCK_SIZE, DEFAULT_SCHEME, Scheme, check_block_size, get_scheme
from .weight_only import ACCURACY_LEVEL_CPU, fit_block, quantize_weight_only


@dataclass
class QuantizedGraph:
    source: str  # fp32 file it came from
    file: str  # the new file, relative to the export directory
    files: list[str]  # every file written for it (graph, and .data when large)
    bytes: int  # their total size
    source_bytes: int  # the fp32 graph's total size
    plan: dict  # Plan.summary()


@dataclass
class QuantizeResult:
    export_dir: str
    scheme: str
    precision: str
    block_size: int
    policy: str
    graphs: list[QuantizedGraph] = field(default_factory=list)
    manifest: Manifest | None = None


def target_file(fp32_file: str, precision: str) -> str:
    """model.onnx -> model.int8.onnx (same folder inside the export)."""
    p = Path(fp32_file)
    return p.with_name(f"{p.stem}.{precision}{p.suffix or '.onnx'}").as_posix()


def quantize_export(
    export_dir: str | os.PathLike,
    scheme: str = DEFAULT_SCHEME,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    keep_float: tuple[str, ...] | list[str] = (),
    overwrite: bool = False,
    on_step: Callable[[str], None] = lambda name: None,
) -> QuantizeResult:
    export_dir = Path(export_dir)
    sch = get_scheme(scheme)
    check_block_size(block_size)
    if sch.method == "fp16" and keep_float:
        raise RWKVEdgeError(
            "--keep-float chooses weights to leave out of int8/int4; fp16 converts every weight, "
            f"found --keep-float {', '.join(keep_float)}"
        )
    policy = sch.policy.keep_float(keep_float)
    manifest = load_manifest(export_dir)
    rescale = rescale_every(manifest.architecture.version) if sch.method == "fp16" else 0
    sources = _fp32_graphs(export_dir, manifest)
    _check_free(export_dir, manifest, sch.precision, sources, overwrite)

    policy_text = sch.summary if sch.method == "fp16" else policy.describe()
    result = QuantizeResult(str(export_dir), sch.name, sch.precision, block_size, policy_text)
    # Any OSError while staging or committing (a read-only folder, a full disk): one line, the export untouched.
    try:
        with staging_folder(export_dir, prefix=".staging-quant-") as staging:
            new_specs = []
            writer = GraphWriter(staging)  # the sequence graph reads the step graph's copy of the weights they share
            for g in sources:
                on_step(f"load {g.file}")
                model = _load(export_dir / g.file)
                original = _structure_copy(model)
                name_nodes(model.graph)
                if sch.method == "fp16":
                    on_step(f"convert {g.file} to fp16" + (f" (rescaled every {rescale} layers)" if rescale else ""))
                    model = convert_fp16(model, manifest.architecture.version, manifest.architecture.n_layer)
                    summary = fp16_summary(model)
                else:
                    chosen = plan(model, policy, token_input=g.input)
                    on_step(f"quantize {g.file} ({sch.name}, block {block_size})")
                    model = apply_scheme(model, chosen, sch, block_size)
                    summary = chosen.summary()
                model = restore_contract(model, original)
                del original
                out = target_file(g.file, sch.precision)
                on_step(f"save {out}")
                written = writer.save(model, out)
                needs = graph_needs(model)
                del model
                on_step(f"check {out} opens in ONNX Runtime")
                _check_opens(staging / out, g, manifest)
                result.graphs.append(
                    QuantizedGraph(
                        source=g.file,
                        file=out,
                        files=written,
                        bytes=graph_bytes(staging, out),  # with the step graph's data file, where it reads from it
                        source_bytes=graph_bytes(export_dir, g.file),
                        plan=summary,
                    )
                )
                new_specs.append(
                    dataclasses.replace(
                        g,
                        file=out,
                        precision=sch.precision,
                        rescale_every=rescale,
                        needs=needs,
                        backends=backends_for(needs),
                        ort=None,  # the fp32 graph's ORT file is not this graph's: `rwkv-export ort` converts it
                    )
                )

            on_step("commit")
            result.manifest = _commit(export_dir, staging, manifest, sch, block_size, policy_text, result, new_specs)
    except OSError as e:
        raise RWKVEdgeError(f"{export_dir}: cannot write the quantized graph there ({e.strerror or e})") from None
    return result


def apply_scheme(model: onnx.ModelProto, chosen: Plan, scheme: Scheme, block_size: int) -> onnx.ModelProto:
    """The graph rewrites of one scheme: the MatMuls, then the embedding gather."""
    if scheme.method == "weight_only":
        model = quantize_weight_only(model, chosen.matmuls, block_size, accuracy_level=ACCURACY_LEVEL_CPU)
    elif scheme.method == "dynamic":
        model = quantize_dynamic_int8(model, chosen.matmuls)
    elif scheme.method == "rowwise":
        model = quantize_rowwise_int8(model, chosen.matmuls)
    else:
        raise ValueError(f"unknown method {scheme.method!r}")
    if chosen.embedding is not None:
        site, where = chosen.embedding
        quantize_embedding(model, where, site.bits, fit_block(site.shape[1], block_size))
    return model


# --------------------------------------------------------------------------------------------------- steps


def _fp32_graphs(export_dir: Path, manifest: Manifest) -> list[GraphSpec]:
    sources = [g for g in manifest.graphs if g.precision == "fp32"]
    if not any(g.kind == "step" for g in sources):
        have = ", ".join(f"{g.file} ({g.kind}/{g.precision})" for g in manifest.graphs) or "no graphs"
        raise RWKVEdgeError(
            f"{export_dir}: quantize needs the fp32 step graph, but rwkv.json lists {have}; "
            f"export the model again with `rwkv-export export`"
        )
    for g in sources:
        if not (export_dir / g.file).is_file():
            raise RWKVEdgeError(
                f"{export_dir / g.file}: the fp32 graph listed in rwkv.json is missing; "
                "export the model again with `rwkv-export export`"
            )
    return sources


def _check_free(
    export_dir: Path, manifest: Manifest, precision: str, sources: list[GraphSpec], overwrite: bool
) -> None:
    if overwrite:
        return
    listed = [g.file for g in manifest.graphs if g.precision == precision]
    if listed:
        raise RWKVEdgeError(
            f"{export_dir} already has a graph of precision {precision} ({', '.join(listed)}); "
            f"pass --overwrite to replace it (the fp32 model is never touched)"
        )
    for g in sources:
        out = target_file(g.file, precision)
        for name in (out, out + ".data"):
            if (export_dir / name).exists():
                raise RWKVEdgeError(
                    f"{export_dir / name} exists but rwkv.json does not list it (left by an interrupted run?); "
                    f"pass --overwrite to replace it"
                )


def _commit(
    export_dir: Path,
    staging: Path,
    manifest: Manifest,
    scheme: Scheme,
    block_size: int,
    policy: str,
    result: QuantizeResult,
    new_specs: list[GraphSpec],
) -> Manifest:
    # 1. drop the graphs being replaced from rwkv.json (and their entries in source.quantization)
    replaced = [g for g in manifest.graphs if g.precision == scheme.precision]
    info = dict(manifest.source.get("quantization", {}))
    for g in replaced:
        info.pop(g.file, None)
    kept = [g for g in manifest.graphs if g.precision != scheme.precision]
    if replaced:
        replace_manifest(
            export_dir, dataclasses.replace(manifest, graphs=kept, source={**manifest.source, "quantization": info})
        )
    # 2. move the new files in (data before graph), remove the replaced ones' leftovers
    written = {f for q in result.graphs for f in q.files}
    for q in result.graphs:
        move_into(staging, export_dir, sorted(q.files, key=lambda f: not f.endswith(".data")))
    for g in replaced:
        for name in (g.file, g.file + ".data", *([g.ort] if g.ort else [])):  # its ORT file was made from it
            if name not in written and not _is_fp32(manifest, name):
                (export_dir / name).unlink(missing_ok=True)
    # 3. list them in rwkv.json
    for q in result.graphs:
        info[q.file] = {
            "scheme": scheme.name,
            "method": scheme.method,
            "block_size": None if scheme.method == "fp16" else block_size,
            "policy": policy,
            "from": q.source,
            "bytes": q.bytes,
            "onnxruntime": package_version("onnxruntime"),
            "quantized": q.plan["quantized"],
        }
    final = dataclasses.replace(manifest, graphs=kept + new_specs, source={**manifest.source, "quantization": info})
    final.check()
    replace_manifest(export_dir, final)
    return final


def _is_fp32(manifest: Manifest, name: str) -> bool:
    return any(g.precision == "fp32" and name in (g.file, g.file + ".data") for g in manifest.graphs)


def _check_opens(path: Path, spec: GraphSpec, manifest: Manifest) -> None:
    """The staged graph loads in plain ONNX Runtime (CPU) and has the graph I/O that rwkv.json names."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT's own exception types, multi-line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RWKVEdgeError(
            f"the quantized graph does not load in ONNX Runtime ({first}); nothing was changed"
        ) from None
    inputs = {i.name for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    want_in = {spec.input, *(s.input for s in manifest.state)}
    want_out = {spec.output, *(s.output for s in manifest.state)}
    if not want_in <= inputs or not want_out <= outputs:
        raise RWKVEdgeError(
            f"the quantized graph lost graph inputs/outputs {sorted((want_in - inputs) | (want_out - outputs))}; "
            "nothing was changed"
        )


def _load(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(path)  # external data too
    except Exception as e:  # protobuf DecodeError, missing .data file, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RWKVEdgeError(
            f"{path}: cannot read it as an ONNX model ({first}); export the model again with `rwkv-export export`"
        ) from None


def _structure_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """The parts restore_contract compares against, without a copy of the weights."""
    copy = onnx.ModelProto()
    copy.ir_version = model.ir_version
    copy.opset_import.extend(model.opset_import)
    copy.functions.extend(model.functions)
    copy.graph.input.extend(model.graph.input)
    copy.graph.output.extend(model.graph.output)
    copy.graph.node.extend(model.graph.node)
    return copy


__all__ = [
    "GROUPS",
    "QuantizeResult",
    "QuantizedGraph",
    "apply_scheme",
    "graph_bytes",
    "quantize_export",
    "target_file",
]
