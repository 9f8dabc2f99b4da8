"""Just enough of the protobuf wire format of ONNX files to rewrite a graph's nodes, inputs and outputs.

The runtime installs with numpy and onnxruntime only, not the onnx package, so runtime/layer_state.py edits a graph
at this level: a message is a list of fields (number, wire type, value) that re-encodes byte for byte, and only
the fields an edit touches are decoded. Field numbers are those of onnx.proto (onnx/onnx.proto in the ONNX repo).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

VARINT, FIXED64, BYTES, FIXED32 = 0, 1, 2, 5

# onnx.proto field numbers used here
MODEL_GRAPH = 7
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_INPUT, GRAPH_OUTPUT, GRAPH_VALUE_INFO = 1, 5, 11, 12, 13
NODE_INPUT, NODE_OUTPUT, NODE_OP_TYPE, NODE_ATTRIBUTE, NODE_DOMAIN = 1, 2, 4, 5, 7
ATTR_NAME, ATTR_I, ATTR_T = 1, 3, 5
TENSOR_DATA_TYPE, TENSOR_INT64_DATA, TENSOR_NAME, TENSOR_RAW_DATA = 2, 7, 8, 9
VALUE_INFO_NAME = 1
INT64 = 7  # TensorProto.DataType


class WireError(ValueError):
    """Bytes that are not a well-formed protobuf message."""


@dataclass
class Field:
    number: int
    wire_type: int
    value: int | bytes  # an int for VARINT / FIXED*, the payload for BYTES


def _varint(buf: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if at >= len(buf) or shift > 63:
            raise WireError("truncated varint")
        byte = buf[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _encode_varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 values take ten bytes, as protobuf writes them
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def signed(value: int) -> int:
    """A varint read as protobuf's int64."""
    return value - (1 << 64) if value >= 1 << 63 else value


def parse(buf: bytes) -> list[Field]:
    fields, at = [], 0
    while at < len(buf):
        key, at = _varint(buf, at)
        number, wire_type = key >> 3, key & 7
        if wire_type == VARINT:
            value, at = _varint(buf, at)
        elif wire_type == BYTES:
            size, at = _varint(buf, at)
            if at + size > len(buf):
                raise WireError("truncated field")
            value, at = bytes(buf[at : at + size]), at + size
        elif wire_type in (FIXED64, FIXED32):
            size = 8 if wire_type == FIXED64 else 4
            if at + size > len(buf):
                raise WireError("truncated field")
            value, at = int.from_bytes(buf[at : at + size], "little"), at + size
        else:
            raise WireError(f"unsupported wire type {wire_type}")
        fields.append(Field(number, wire_type, value))
    return fields


def serialize(fields: list[Field]) -> bytes:
    out = bytearray()
    for f in fields:
        out += _encode_varint(f.number << 3 | f.wire_type)
        if f.wire_type == VARINT:
            out += _encode_varint(f.value)
        elif f.wire_type == BYTES:
            out += _encode_varint(len(f.value)) + f.value
        else:
            out += f.value.to_bytes(8 if f.wire_type == FIXED64 else 4, "little")
    return bytes(out)


def strings(fields: list[Field], number: int) -> list[str]:
    return [f.value.decode() for f in fields if f.number == number]


def string(fields: list[Field], number: int, default: str = "") -> str:
    return next(iter(strings(fields, number)), default)


def text_field(number: int, text: str) -> Field:
    return Field(number, BYTES, text.encode())


@dataclass
class Node:
    """A NodeProto's fields, with its inputs, outputs and op type read out."""

    fields: list[Field]

    @property
    def op_type(self) -> str:
        return string(self.fields, NODE_OP_TYPE)

    @property
    def domain(self) -> str:
        return string(self.fields, NODE_DOMAIN)

    @property
    def inputs(self) -> list[str]:
        return strings(self.fields, NODE_INPUT)

    @property
    def outputs(self) -> list[str]:
        return strings(self.fields, NODE_OUTPUT)

    def attribute(self, name: str) -> list[Field] | None:
        for f in self.fields:
            if f.number == NODE_ATTRIBUTE:
                attr = parse(f.value)
                if string(attr, ATTR_NAME) == name:
                    return attr
        return None

    def int_attribute(self, name: str, default: int | None) -> int | None:
        attr = self.attribute(name)
        if attr is None:
            return default
        return next((signed(f.value) for f in attr if f.number == ATTR_I and f.wire_type == VARINT), default)

    def rename(self, renames: dict[str, str]) -> None:
        """Replace the input and output names found in `renames`."""
        for f in self.fields:
            if f.number in (NODE_INPUT, NODE_OUTPUT):
                name = f.value.decode()
                if name in renames:
                    f.value = renames[name].encode()


def tensor_int64s(fields: list[Field]) -> list[int] | None:
    """The values of an int64 TensorProto held in the file (int64_data or raw_data), else None."""
    if next((f.value for f in fields if f.number == TENSOR_DATA_TYPE), None) != INT64:
        return None
    values: list[int] = []
    for f in fields:
        if f.number == TENSOR_INT64_DATA and f.wire_type == VARINT:
            values.append(signed(f.value))
        elif f.number == TENSOR_INT64_DATA and f.wire_type == BYTES:  # packed
            at = 0
            while at < len(f.value):
                value, at = _varint(f.value, at)
                values.append(signed(value))
        elif f.number == TENSOR_RAW_DATA:
            if len(f.value) % 8:
                return None
            values += list(struct.unpack(f"<{len(f.value) // 8}q", f.value))
    return values
