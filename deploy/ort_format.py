"""`rwkv-export ort DIR`: every graph of an export in ONNX Runtime's ORT format, beside its .onnx, with
`required_operators.config` for a reduced ONNX Runtime build (docs/format.md, "Running beyond CPython").

    result = convert_export("out/")            # model.ort, prefill.ort, model.int8.ort, ... + required_operators.config
    result.manifest.graph("step", "int8").ort  # "model.int8.ort"

The conversion is ONNX Runtime's own tool (`onnxruntime.tools.convert_onnx_models_to_ort`, run in a child process:
its output and memory stay there), with its defaults: the graph optimized for the CPU execution
provider at ORT_ENABLE_ALL in the "Fixed" style, nothing specific to one CPU baked in, the rwkv functions inlined,
the weights inside the .ort file. The files are staged in a folder inside the export, renamed into place, and
rwkv.json is rewritten last, listing each as `graphs[].ort`; existing .ort files are replaced only with `overwrite`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rwkv_edge.common.files import move_into, staging_folder, write_text_atomic
from rwkv_edge.runtime.errors import RWKVEdgeError
from rwkv_edge.runtime.manifest import GraphSpec, Manifest, load_manifest, replace_manifest

CONFIG_NAME = "required_operators.config"


@dataclass
class OrtGraph:
    source: str  # the .onnx graph, relative to the export directory
    file: str  # its .ort file
    bytes: int


@dataclass
class OrtResult:
    export_dir: str
    graphs: list[OrtGraph] = field(default_factory=list)
    config: str = CONFIG_NAME
    manifest: Manifest | None = None


def ort_file(onnx_file: str) -> str:
    """model.int8.onnx -> model.int8.ort (same folder inside the export)."""
    return Path(onnx_file).with_suffix(".ort").as_posix()


def convert_export(
    export_dir: str | os.PathLike,
    precisions: Iterable[str] | None = None,
    *,
    overwrite: bool = False,
    on_step: Callable[[str], None] = lambda name: None,
) -> OrtResult:
    """Convert the graphs of `precisions` (default: every graph of the export) to ORT format and list them in
    rwkv.json; write required_operators.config for every .ort file the export then lists."""
    export_dir = Path(export_dir)
    manifest = load_manifest(export_dir)
    chosen = _chosen_graphs(export_dir, manifest, precisions)
    _check_free(export_dir, manifest, chosen, overwrite)
    manifest = _with_needs(export_dir, manifest)
    result = OrtResult(str(export_dir))
    try:
        with staging_folder(export_dir, prefix=".staging-ort-") as staging:
            on_step(f"convert {', '.join(g.file for g in chosen)} (ONNX Runtime's converter)")
            _convert(export_dir, staging, chosen)
            for g in chosen:
                out = ort_file(g.file)
                result.graphs.append(OrtGraph(g.file, out, (staging / out).stat().st_size))
            on_step(f"write {CONFIG_NAME}")
            new = {q.source: q.file for q in result.graphs}
            listed = [export_dir / g.ort for g in manifest.graphs if g.ort and g.file not in new]
            listed = [f for f in listed if f.is_file()]  # one missing is left out of the config, not fatal
            _write_config(staging, [*listed, *(staging / q.file for q in result.graphs)], export_dir)
            on_step("commit")
            result.manifest = _commit(export_dir, staging, manifest, new)
    except OSError as e:
        raise RWKVEdgeError(f"{export_dir}: cannot write the ORT files there ({e.strerror or e})") from None
    return result


def check_precisions(export_dir: Path, manifest: Manifest, precisions: Iterable[str] | None) -> list[str]:
    """The precisions asked for (default: all the export has), each one the export has, or one line that says not."""
    have = sorted({g.precision for g in manifest.graphs})
    wanted = list(precisions or have)
    unknown = [p for p in wanted if p not in have]
    if unknown:
        raise RWKVEdgeError(
            f"{export_dir} has no graph of precision {', '.join(unknown)} (it has: {', '.join(have)}); "
            "run `rwkv-export quantize` first or pick another precision"
        )
    return wanted


def _chosen_graphs(export_dir: Path, manifest: Manifest, precisions: Iterable[str] | None) -> list[GraphSpec]:
    wanted = check_precisions(export_dir, manifest, precisions)
    chosen = [g for g in manifest.graphs if g.precision in wanted]
    for g in chosen:
        if not (export_dir / g.file).is_file():
            raise RWKVEdgeError(f"{export_dir / g.file}: listed in rwkv.json but missing; re-run `rwkv-export export`")
        if Path(g.file).suffix != ".onnx":
            raise RWKVEdgeError(f"{g.file}: expected an .onnx graph to convert")
    return chosen


def _check_free(export_dir: Path, manifest: Manifest, chosen: list[GraphSpec], overwrite: bool) -> None:
    if overwrite:
        return
    taken = [ort_file(g.file) for g in chosen if (export_dir / ort_file(g.file)).exists()]
    if taken:
        raise RWKVEdgeError(
            f"{export_dir} already has {', '.join(taken)}; pass --overwrite to replace "
            f"{'it' if len(taken) == 1 else 'them'}"
        )


# The child: ONNX Runtime's converter (its Python API, the tool's defaults) on each (graph, output folder) pair in
# turn, its own logging at errors only; a failed graph prints the tool's "Error converting <graph>: ..." line.
_CHILD = """
import json, pathlib, sys
import onnxruntime
from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort
onnxruntime.set_default_logger_severity(3)
for source, folder in json.loads(sys.argv[1]):
    convert_onnx_models_to_ort(pathlib.Path(source), pathlib.Path(folder), [OptimizationStyle.Fixed])
"""


def _convert(export_dir: Path, staging: Path, graphs: list[GraphSpec]) -> None:
    """Each graph to staging/<its folder>/<stem>.ort, by ONNX Runtime's converter in one child process (its output
    and memory stay there)."""
    pairs = []
    for g in graphs:
        (staging / g.file).parent.mkdir(parents=True, exist_ok=True)
        pairs.append([str(export_dir / g.file), str((staging / g.file).parent)])
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(pairs)], capture_output=True, text=True, check=False
    )
    missing = [g.file for g in graphs if not (staging / ort_file(g.file)).is_file()]
    if done.returncode != 0 or missing:
        lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        why = next((line for line in reversed(lines) if line.startswith("Error converting")), None)
        why = why or (lines[-1] if lines else f"exit code {done.returncode}")
        raise RWKVEdgeError(f"ONNX Runtime's converter failed ({why[:300]}); nothing was changed")
    for g in graphs:  # the tool's per-graph configs: one config for the whole export is written instead
        for config in (staging / g.file).parent.glob(f"{Path(g.file).stem}.required_operators*.config"):
            config.unlink()


def _write_config(staging: Path, ort_files: list[Path], export_dir: Path) -> None:
    """required_operators.config of `ort_files` (ONNX Runtime's own writer), naming them relative to the export."""
    from onnxruntime.tools.ort_format_model.utils import create_config_from_models, log

    log.setLevel(logging.WARNING)  # its "Created config in <staging path>" line is not the user's business
    config = staging / CONFIG_NAME
    create_config_from_models(ort_files, config, enable_type_reduction=False)
    names = {str(f): f.relative_to(staging if f.is_relative_to(staging) else export_dir).as_posix() for f in ort_files}
    lines = config.read_text(encoding="utf-8").splitlines()
    lines = [f"# - {names[line[4:]]}" if line.startswith("# - ") and line[4:] in names else line for line in lines]
    write_text_atomic(config, "\n".join(lines) + "\n")


def _commit(export_dir: Path, staging: Path, manifest: Manifest, new: dict[str, str]) -> Manifest:
    # 1. graphs whose .ort is replaced leave rwkv.json first: a crash below never leaves it pointing at a half set
    if any(g.ort for g in manifest.graphs if g.file in new):
        unlisted = [dataclasses.replace(g, ort=None) if g.file in new else g for g in manifest.graphs]
        replace_manifest(export_dir, dataclasses.replace(manifest, graphs=unlisted))
    # 2. the files, the config after them
    move_into(staging, export_dir, [*new.values(), CONFIG_NAME])
    # 3. rwkv.json lists them
    graphs = [dataclasses.replace(g, ort=new[g.file]) if g.file in new else g for g in manifest.graphs]
    final = dataclasses.replace(manifest, graphs=graphs)
    final.check()
    replace_manifest(export_dir, final)
    return final


def _with_needs(export_dir: Path, manifest: Manifest) -> Manifest:
    """Graphs from before graphs[].needs get their needs and backends (read before anything is written: reading
    them takes onnx, which a runtime-only install lacks, and only these graphs need it)."""
    if all(g.needs is not None or not (export_dir / g.file).is_file() for g in manifest.graphs):
        return manifest
    from .backends import backends_for, file_needs

    graphs = []
    for g in manifest.graphs:
        if g.needs is None and (export_dir / g.file).is_file():
            needs = file_needs(export_dir / g.file)
            g = dataclasses.replace(g, needs=needs, backends=backends_for(needs))
        graphs.append(g)
    return dataclasses.replace(manifest, graphs=graphs)
