"""Writing an export directory safely: everything is staged in a folder inside it, then renamed into place with
rwkv.json last, so an interrupted export leaves the old artifacts intact and never a half file that looks valid.
An existing model is replaced only when the caller says so."""

from __future__ import annotations

from pathlib import Path

from rwkv_edge.common.files import move_into, staging_folder
from rwkv_edge.runtime.errors import RWKVEdgeError
from rwkv_edge.runtime.manifest import MANIFEST_NAME, Manifest, load_manifest


def check_target(out_dir: Path, overwrite: bool) -> None:
    """Fail before any work if `out_dir` cannot take a new export."""
    if out_dir.exists() and not out_dir.is_dir():
        raise RWKVEdgeError(f"{out_dir}: expected a directory for the export, found a file")
    if not out_dir.exists() or overwrite:
        return
    held = [p.name for p in out_dir.iterdir() if p.name == MANIFEST_NAME or p.suffix in (".onnx", ".data")]
    if held:
        raise RWKVEdgeError(
            f"{out_dir} already holds a model ({', '.join(sorted(held))}); "
            "pass --overwrite to replace it, or choose another directory"
        )


class StagedExport:
    """with StagedExport(out_dir, overwrite) as stage: write files into stage.path, then stage.commit(manifest)."""

    def __init__(self, out_dir: str | Path, overwrite: bool = False):
        self.out_dir = Path(out_dir)
        check_target(self.out_dir, overwrite)

    def __enter__(self) -> StagedExport:
        self._staging = staging_folder(self.out_dir)
        self.path = self._staging.__enter__()
        return self

    def commit(self, manifest: Manifest) -> None:
        manifest.check()
        old = self._old_files()
        (self.path / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
        (self.out_dir / MANIFEST_NAME).unlink(missing_ok=True)  # a crash below leaves no manifest pointing at a mix
        written = sorted(p.name for p in self.path.iterdir() if p.name != MANIFEST_NAME)
        move_into(self.path, self.out_dir, [*written, MANIFEST_NAME])
        for name in old - set(written):  # e.g. an old model.int8.onnx of the replaced model
            (self.out_dir / name).unlink(missing_ok=True)

    def _old_files(self) -> set[str]:
        if not (self.out_dir / MANIFEST_NAME).exists():
            return set()
        try:
            old = load_manifest(self.out_dir)
        except RWKVEdgeError:
            return set()
        names = {g.file for g in old.graphs} | {g.file + ".data" for g in old.graphs}
        names.update(g.ort for g in old.graphs if g.ort)  # ORT files made from the old graphs
        if old.tokenizer.file:
            names.add(old.tokenizer.file)
        names.update(s.init_file for s in old.state if s.init_file)
        return names

    def __exit__(self, *exc) -> None:
        self._staging.__exit__(*exc)
