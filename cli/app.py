"""rwkv-export: the command line. It only parses and calls; the work lives in the modules it names.

Commands that need torch import it lazily (inside the command), so `generate` and `inspect` work on a
machine that installed only the runtime.
"""

from __future__ import annotations

import sys

import typer

from rwkv_edge.runtime.errors import RWKVEdgeError

from .bench import bench
from .console import note
from .export import export
from .ort import ort
from .quantize import eval_command, quantize
from .run import generate, inspect
from .serve import serve
from .validate import validate
from .web import web

app = typer.Typer(
    help="Export RWKV checkpoints (RWKV-4, 5, 5.1, 5.2, 6 and 7) to ONNX, prove them equal to the PyTorch original, "
    "and run them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(export)
app.command()(validate)
app.command()(generate)
app.command()(inspect)
app.command()(quantize)
app.command("eval")(eval_command)
app.command()(bench)
app.command()(ort)
app.command()(web)
app.command()(serve)

# What the `export` extra adds to the runtime's numpy + onnxruntime: the commands that need these import them lazily
EXPORT_MODULES = {"torch", "onnx", "onnxscript", "safetensors"}


def main() -> None:
    """Entry point: user errors become one line on stderr and an exit code, never a traceback."""
    try:
        app(standalone_mode=False)
    except RWKVEdgeError as e:
        note(f"error: {e}")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        note("interrupted")
        sys.exit(130)
    except ModuleNotFoundError as e:
        if e.name not in EXPORT_MODULES:
            raise
        note(f"error: this command needs the {e.name} package, which a runtime-only install lacks: {_install_hint(e)}")
        sys.exit(2)
    except (typer.Exit, SystemExit) as e:
        sys.exit(getattr(e, "exit_code", getattr(e, "code", 0)))
    except Exception as e:
        if not _is_usage_error(e):
            raise
        ctx = getattr(e, "ctx", None)  # usage errors know their command: point at its --help
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        note(f"error: {e.format_message()}{hint}")
        sys.exit(e.exit_code)


def _install_hint(e: ModuleNotFoundError) -> str:
    if e.name == "onnx":
        return "pip install onnx (export, quantize and validate need all of 'rwkv-edge[export]')"
    return "pip install 'rwkv-edge[export]'"


def _is_usage_error(e: Exception) -> bool:
    """A bad option or argument. Recent typer raises the exceptions of the click it vendors (subclasses of
    typer.TyperException), older ones click's: both are recognized."""
    kinds = tuple(k for k in (getattr(typer, "TyperException", None),) if k is not None)
    try:
        import click

        kinds += (click.ClickException,)
    except ImportError:
        pass
    return isinstance(e, kinds) and hasattr(e, "format_message") and hasattr(e, "exit_code")


if __name__ == "__main__":
    main()
