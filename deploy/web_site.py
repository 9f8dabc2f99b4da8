"""`rwkv-export web DIR -o SITE`: the static demo site of an export, self-contained (nothing fetched from elsewhere).

    SITE/
      index.html, app.js, ...    the page (web/site/)
      src/                       the JS runtime (web/src/), which app.js imports
      ort/ ... vendor/ ...       the files the page's import map names, from web/node_modules: the onnxruntime-web
                                 builds it imports (their .mjs and the .wasm each loads) and the runtime's other imports
      model/                     rwkv.json, the graphs (and .ort files), their external data, tokenizer, init files

The page comes from the source checkout's web/ folder, next to this package's folder, and its packages from
web/node_modules (`cd web && ONNXRUNTIME_NODE_INSTALL=skip npm ci`). The site is built in a staging folder beside
SITE and renamed into place; an existing non-empty SITE is replaced only with `overwrite`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rwkv_edge.common.files import publish_folder, staging_folder
from rwkv_edge.runtime.errors import RWKVEdgeError
from rwkv_edge.runtime.manifest import MANIFEST_NAME, Manifest, load_manifest

from .ort_format import check_precisions

WEB_DIR = Path(__file__).resolve().parents[1] / "web"  # the source checkout's web/ package
INSTALL_HINT = "run: cd web && ONNXRUNTIME_NODE_INSTALL=skip npm ci"
MODEL_FOLDER = "model"
_IMPORT_MAP = re.compile(r'<script\s+type="importmap"\s*>(.*?)</script>', re.S)
# names of sibling files a module loads (onnxruntime-web's .mjs loads ort-wasm-*.mjs, which loads its .wasm)
_SIBLING = re.compile(r"[\w.-]+\.(?:mjs|wasm|js)\b")


@dataclass
class SiteResult:
    site: str
    files: list[str] = field(default_factory=list)  # relative to the site
    bytes: int = 0
    precisions: list[str] = field(default_factory=list)


def build_site(
    export_dir: str | os.PathLike,
    site: str | os.PathLike,
    precisions: Iterable[str] | None = None,
    *,
    overwrite: bool = False,
    web_dir: str | os.PathLike = WEB_DIR,
    on_step: Callable[[str], None] = lambda name: None,
) -> SiteResult:
    """Build SITE from the page in `web_dir` and the model in `export_dir` (only the graphs of `precisions`, default
    every graph)."""
    export_dir, site, web_dir = Path(export_dir), Path(site), Path(web_dir)
    manifest = _site_manifest(export_dir, load_manifest(export_dir), precisions)
    page, modules = _check_web(web_dir)
    _check_site(site, overwrite, export_dir, web_dir)
    result = SiteResult(str(site), precisions=sorted({g.precision for g in manifest.graphs}))
    try:
        with staging_folder(site.parent, prefix=f".{site.name}.staging-") as staging:
            root = staging / "site"
            on_step("copy the page and the runtime")
            copies = [(f, f.relative_to(page).as_posix()) for f in _files(page)]
            copies += [(f, "src/" + f.relative_to(web_dir / "src").as_posix()) for f in _files(web_dir / "src")]
            copies += _imported_modules(page / "index.html", modules)
            on_step("copy the model")
            copies += [(export_dir / name, f"{MODEL_FOLDER}/{name}") for name in _model_files(export_dir, manifest)]
            for source, name in copies:
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, root / name)
                result.files.append(name)
                result.bytes += (root / name).stat().st_size
            (root / MODEL_FOLDER / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
            result.files.append(f"{MODEL_FOLDER}/{MANIFEST_NAME}")
            result.bytes += (root / MODEL_FOLDER / MANIFEST_NAME).stat().st_size
            on_step(f"publish {site}")
            publish_folder(root, site)
    except OSError as e:
        raise RWKVEdgeError(f"{site}: cannot build the site there ({e.strerror or e})") from None
    return result


def _site_manifest(export_dir: Path, manifest: Manifest, precisions: Iterable[str] | None) -> Manifest:
    """The export's manifest with only the graphs of `precisions` (and their source.quantization entries)."""
    if not precisions:
        return manifest
    wanted = check_precisions(export_dir, manifest, precisions)
    graphs = [g for g in manifest.graphs if g.precision in wanted]
    source = dict(manifest.source)
    if isinstance(source.get("quantization"), dict):
        kept = {g.file for g in graphs}
        source["quantization"] = {k: v for k, v in source["quantization"].items() if k in kept}
    return dataclasses.replace(manifest, graphs=graphs, source=source)


def _check_web(web_dir: Path) -> tuple[Path, Path]:
    """(the page's folder, node_modules) of `web_dir`, or one line saying what is missing."""
    page, modules = web_dir / "site", web_dir / "node_modules"
    if not (page / "index.html").is_file() or not (web_dir / "src").is_dir():
        raise RWKVEdgeError(
            f"{web_dir}: the web package (site/index.html and src/) is not there; rwkv-export web needs the source "
            "checkout of rwkv-edge"
        )
    if not (modules / "onnxruntime-web").is_dir():
        raise RWKVEdgeError(f"{modules} is missing; {INSTALL_HINT}")
    return page, modules


def _check_site(site: Path, overwrite: bool, export_dir: Path, web_dir: Path) -> None:
    if site.exists() and not site.is_dir():
        raise RWKVEdgeError(f"{site}: expected a directory for the site, found a file")
    target = site.resolve()
    for kept, what in ((export_dir, "the export"), (web_dir, "the web package")):
        kept = kept.resolve()
        if kept == target or target in kept.parents:
            raise RWKVEdgeError(f"{site}: the site would replace {what} ({kept}); choose another directory")
    if site.is_dir() and any(site.iterdir()) and not overwrite:
        raise RWKVEdgeError(f"{site} is not empty; pass --overwrite to replace it, or choose another directory")


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _imported_modules(index: Path, modules: Path) -> list[tuple[Path, str]]:
    """(file in node_modules, its name in the site) for each entry of the page's import map, with the sibling files
    each loads (onnxruntime-web's WebAssembly loader and binary)."""
    found = _IMPORT_MAP.search(index.read_text(encoding="utf-8"))
    imports = json.loads(found.group(1)).get("imports", {}) if found else {}
    copies: dict[str, Path] = {}
    for specifier, target in imports.items():
        name = Path(target.removeprefix("./")).as_posix()
        source = _module_file(modules, specifier, Path(name).name)
        todo = [(source, name)]
        while todo:
            source, name = todo.pop()
            if name in copies:
                continue
            copies[name] = source
            text = source.read_text(encoding="utf-8", errors="replace") if source.suffix != ".wasm" else ""
            for sibling in sorted(set(_SIBLING.findall(text))):
                if sibling != source.name and (source.parent / sibling).is_file():
                    todo.append((source.parent / sibling, str(Path(name).with_name(sibling).as_posix())))
    return [(source, name) for name, source in sorted(copies.items())]


def _module_file(modules: Path, specifier: str, file_name: str) -> Path:
    """The file an import map entry points at: in the specifier's package, the file of that name (onnxruntime-web's
    dist/ holds one per build), else the package's browser ES module entry (its package.json exports)."""
    parts = specifier.split("/")
    package = modules.joinpath(*parts[: 2 if specifier.startswith("@") else 1])
    if not package.is_dir():
        raise RWKVEdgeError(f"the page imports {specifier}, which is not in {modules}; {INSTALL_HINT}")
    named = sorted(p for p in package.rglob(file_name) if p.is_file())
    if named:
        return min(named, key=lambda p: len(p.parts))
    exports = json.loads((package / "package.json").read_text(encoding="utf-8")).get("exports", {})
    subpath = "./" + "/".join(parts[2 if specifier.startswith("@") else 1 :]) if "/" in specifier else "."
    entry = _browser_entry(exports.get(subpath) if isinstance(exports, dict) else exports)
    if entry is None or not (package / entry).is_file():
        raise RWKVEdgeError(f"the page imports {specifier}, and {package} has no browser module for it")
    return package / entry


def _browser_entry(condition) -> str | None:
    """The path an exports condition gives a browser's `import` (node, require and types skipped)."""
    if isinstance(condition, str):
        return condition
    if not isinstance(condition, dict):
        return None
    for key in ("browser", "import", "default"):
        if key in condition:
            entry = _browser_entry(condition[key])
            if entry is not None:
                return entry
    return None


def _model_files(export_dir: Path, manifest: Manifest) -> list[str]:
    """Every file the site's manifest points at, relative to the export: graphs and the external data they read
    (a sequence graph reads the step graph's), .ort files, tokenizer, init files."""
    from rwkv_edge.common.onnx_files import graph_files

    names: list[str] = []
    for g in manifest.graphs:
        if not (export_dir / g.file).is_file():
            raise RWKVEdgeError(f"{export_dir / g.file}: listed in rwkv.json but missing; re-run `rwkv-export export`")
        names += [_inside(export_dir, f) for f in sorted(graph_files(export_dir, g.file))]
        names += [g.ort] if g.ort else []
    names += [manifest.tokenizer.file] if manifest.tokenizer.file else []
    names += [s.init_file for s in manifest.state if s.init_file]
    unique = list(dict.fromkeys(names))
    missing = [n for n in unique if not (export_dir / n).is_file()]
    if missing:
        raise RWKVEdgeError(f"{export_dir}: {', '.join(missing)} listed in rwkv.json (or its graphs) but missing")
    return unique


def _inside(export_dir: Path, path: Path) -> str:
    """`path` relative to the export; a data location that leaves the export is refused, not copied."""
    try:
        return Path(os.path.normpath(path)).relative_to(os.path.normpath(export_dir)).as_posix()
    except ValueError:
        raise RWKVEdgeError(
            f"{path}: a graph's external data outside {export_dir}; the site copies only the export"
        ) from None
