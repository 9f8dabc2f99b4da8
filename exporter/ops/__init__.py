"""The WKV recurrences as rwkv-domain ops: torch custom ops, onnxscript functions, numpy twins."""

from .domain import DOMAIN, OPSET, attach_functions
from .wkv4 import WKV4, translate_wkv4, wkv4, wkv4_numpy
from .wkv5 import WKV5, translate_wkv5, wkv5, wkv5_numpy
from .wkv7 import WKV7, translate_wkv7, wkv7, wkv7_numpy

# Exporter translation table: torch custom op -> emitter of the rwkv-domain node.
TRANSLATIONS = {
    wkv4._opoverload: translate_wkv4,
    wkv5._opoverload: translate_wkv5,
    wkv7._opoverload: translate_wkv7,
}

# Model-local function bodies, by op name.
FUNCTIONS = {
    "WKV4": WKV4.to_function_proto(),
    "WKV5": WKV5.to_function_proto(),  # RWKV-5, 5.1, 5.2 and 6
    "WKV7": WKV7.to_function_proto(),
}

NUMPY_TWINS = {"WKV4": wkv4_numpy, "WKV5": wkv5_numpy, "WKV7": wkv7_numpy}

# The sequence twins (a Scan over time) for the prefill graph: rwkv::WKV4Seq, WKV5Seq, WKV7Seq.
from . import sequence  # noqa: E402
from .sequence import wkv4_seq, wkv5_seq, wkv7_seq  # noqa: E402,F401

TRANSLATIONS.update(sequence.TRANSLATIONS)
FUNCTIONS.update(sequence.FUNCTIONS)
NUMPY_TWINS.update(sequence.NUMPY_TWINS)
