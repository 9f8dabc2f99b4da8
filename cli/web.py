"""rwkv-export web: the static demo site of an export (deploy/web_site.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .console import mib, out, progress
from .options import ExportDir


def web(
    export_dir: ExportDir,
    output: Annotated[Path, typer.Option("--output", "-o", help="The site's folder to create.", show_default=False)],
    precision: Annotated[
        Optional[list[str]],
        typer.Option(help="Only the graphs of these precisions (repeatable). Default: every graph in rwkv.json."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a site already in the output folder.")] = False,
):
    """Build a static, self-contained demo site of an export: the page, the JS runtime, onnxruntime-web and the model
    under SITE/model/.

    Serve it with `npx rwkv-edge-web serve SITE` (cross-origin isolated, so wasm uses threads) and open
    index.html?prompt=...; needs the source checkout's web/ with its packages installed."""
    from rwkv_edge.deploy.web_site import build_site

    with progress(f"building the site of {export_dir}") as on_step:
        result = build_site(export_dir, output, precision, overwrite=overwrite, on_step=on_step)
    out.print(
        f"wrote {output}: {len(result.files)} files, {mib(result.bytes)}; precisions {', '.join(result.precisions)}"
    )
    out.print(f"next: npx rwkv-edge-web serve {output} --port 8000, then open http://127.0.0.1:8000/?prompt=Hello")
