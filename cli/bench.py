"""rwkv-export bench."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .console import progress, show, write_report
from .options import OptimizedCache, Precisions, Spinning
from .tables import bench_table


def bench(
    export_dir: Annotated[
        Path, typer.Argument(help="Export directory (holds rwkv.json and the graphs to time).", show_default=False)
    ],
    precision: Precisions = None,
    threads: Annotated[int, typer.Option(min=1, help="ONNX Runtime intra-op threads.")] = 2,
    tokens: Annotated[int, typer.Option(min=1, help="Decode tokens timed after the warm-up.")] = 64,
    bandwidth: Annotated[
        Optional[float],
        typer.Option(
            min=0.1,
            help="Memory bandwidth in GB/s, for the floor (bytes of weights a step reads / bandwidth). "
            "Default: measured here.",
        ),
    ] = None,
    memory: Annotated[bool, typer.Option(help="Also measure peak memory in a fresh process.")] = True,
    report: Annotated[
        Optional[Path], typer.Option(help="Where to write the JSON report. Default: EXPORT_DIR/bench.json")
    ] = None,
    optimized_cache: OptimizedCache = False,
    spinning: Spinning = True,
    kernels: Annotated[
        bool,
        typer.Option(
            help="Also time the step's weight-reading kernels alone (its MatMuls with nothing else), beside the "
            "probe: how much of the gap to the floor is the kernels' (holds a second copy of the weights meanwhile)."
        ),
    ] = True,
):
    """Time an export on this machine, for each precision: decode ms/token, prefill tokens/s at 128 and 512
    tokens (the sequence graph when present, and stepping), the bandwidth floor and the weight kernels alone
    against it, file size, peak memory."""
    from rwkv_edge.measure.bench import bench_export

    with progress(f"timing {export_dir}") as on_step:
        result = bench_export(
            export_dir,
            threads=threads,
            tokens=tokens,
            bandwidth_gbs=bandwidth,
            precisions=precision,
            memory=memory,
            optimized_cache=optimized_cache,
            spinning=spinning,
            kernel_probe=kernels,
            on_step=on_step,
        )
    show(bench_table(result))
    write_report(report or Path(export_dir) / "bench.json", result)
