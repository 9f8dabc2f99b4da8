"""The WKV recurrences as rwkv-domain ops: torch custom ops, onnxscript functions, numpy twins; and their sequence
twins (a Scan over time) for the prefill graph: rwkv::WKV4Seq, WKV5Seq, WKV7Seq."""

from . import sequence
from .domain import DOMAIN, OPSET, attach_functions
from .sequence import wkv4_seq, wkv5_seq, wkv7_seq
from .wkv4 import WKV4, translate_wkv4, wkv4, wkv4_numpy
from .wkv5 import WKV5, translate_wkv5, wkv5, wkv5_numpy
from .wkv7 import WKV7, translate_wkv7, wkv7, wkv7_numpy

__all__ = [
    "DOMAIN",
    "FUNCTIONS",
    "NUMPY_TWINS",
    "OPSET",
    "TRANSLATIONS",
    "attach_functions",
    "sequence",
    "wkv4",
    "wkv4_seq",
    "wkv5",
    "wkv5_seq",
    "wkv7",
    "wkv7_seq",
]

# Exporter translation table: torch custom op -> emitter of the rwkv-domain node.
TRANSLATIONS = {
    wkv4._opoverload: translate_wkv4,
    wkv5._opoverload: translate_wkv5,
    wkv7._opoverload: translate_wkv7,
    **sequence.TRANSLATIONS,
}

# Model-local function bodies, by op name.
FUNCTIONS = {
    "WKV4": WKV4.to_function_proto(),
    "WKV5": WKV5.to_function_proto(),  # RWKV-5, 5.1, 5.2 and 6
    "WKV7": WKV7.to_function_proto(),
    **sequence.FUNCTIONS,
}

NUMPY_TWINS = {"WKV4": wkv4_numpy, "WKV5": wkv5_numpy, "WKV7": wkv7_numpy, **sequence.NUMPY_TWINS}
