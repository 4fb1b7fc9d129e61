"""Read the constant tensors of a frozen TensorFlow ``GraphDef`` (``.pb``) without TensorFlow.

A frozen graph is one protobuf message; its weights are ``Const`` nodes whose ``value``
attribute holds a ``TensorProto``. This module decodes just that subset of the protobuf
wire format (GraphDef → NodeDef name/op/attr → TensorProto dtype/shape/content/values),
so reading a detector's weights needs neither TensorFlow nor the ``protobuf`` package.
The file is untrusted input: every length is bounds-checked and a malformed file raises
:class:`CheckpointError` (one line).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from refseg.errors import CheckpointError

#: TensorFlow DataType enum → numpy dtype (the types a frozen detector's constants use).
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 9: np.int64, 10: np.bool_}
#: TensorProto field → numpy dtype of its repeated ``*_val`` values.
_VALUE_FIELDS = {5: np.float32, 6: np.float64, 7: np.int32, 10: np.int64, 11: np.bool_}
_MAX_ELEMENTS = 1 << 28


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise CheckpointError("malformed TensorFlow graph: truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview):
    """Yield ``(field_number, wire_type, value)``; value is an int or a memoryview slice."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise CheckpointError("malformed TensorFlow graph: field runs past its message")
            value, pos = buf[pos : pos + size], pos + size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > len(buf):
                raise CheckpointError("malformed TensorFlow graph: truncated fixed-width field")
            value, pos = buf[pos : pos + width], pos + width
        else:
            raise CheckpointError(f"malformed TensorFlow graph: unsupported wire type {wire}")
        yield field, wire, value


def _shape(buf: memoryview) -> tuple[int, ...]:
    dims = []
    for field, _, dim in _fields(buf):
        if field == 2:
            size = next((v for f, _, v in _fields(dim) if f == 1), 0)
            dims.append(size - (1 << 64) if size >= 1 << 63 else size)
    return tuple(dims)


def _tensor(buf: memoryview) -> np.ndarray | None:
    """Decode a TensorProto into an array (raw ``tensor_content`` or repeated values, broadcast);
    None for the types weights never have (strings, ...)."""
    dtype, shape, content, values = None, (), None, []
    for field, wire, value in _fields(buf):
        if field == 1:
            dtype = _DTYPES.get(value)
            if dtype is None:
                return None
        elif field == 2:
            shape = _shape(value)
        elif field == 4:
            content = bytes(value)
        elif field in _VALUE_FIELDS:
            values.append(_repeated(field, wire, value))
    if dtype is None or any(d < 0 for d in shape):
        raise CheckpointError("malformed TensorFlow graph: constant without a dtype or with an unknown shape")
    count = int(np.prod(shape, dtype=np.int64))
    if count > _MAX_ELEMENTS:
        raise CheckpointError(f"TensorFlow graph constant too large: shape {shape}")
    if content is not None:
        if len(content) != count * np.dtype(dtype).itemsize:
            raise CheckpointError(f"TensorFlow graph constant: {len(content)} bytes do not fill shape {shape}")
        return np.frombuffer(content, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(shape)
    flat = np.concatenate(values).astype(dtype) if values else np.zeros(1, dtype)
    if flat.size not in (1, count):
        raise CheckpointError(f"TensorFlow graph constant: {flat.size} values do not fill shape {shape}")
    return np.full(shape, flat[0], dtype) if flat.size == 1 else flat.reshape(shape)


def _repeated(field: int, wire: int, value) -> np.ndarray:
    dtype = _VALUE_FIELDS[field]
    if field in (5, 6):  # float / double: packed (wire 2) or one fixed-width value
        return np.frombuffer(bytes(value), dtype=np.dtype(dtype).newbyteorder("<"))
    if wire == 0:
        return np.array([value], dtype=np.int64)
    ints, pos, buf = [], 0, value
    while pos < len(buf):
        item, pos = _varint(buf, pos)
        ints.append(item - (1 << 64) if item >= 1 << 63 else item)
    return np.array(ints, dtype=np.int64)


def _node_const(node: memoryview) -> tuple[str, np.ndarray | None]:
    """(name, value) of a NodeDef; value is None unless the node is a Const."""
    name, op, tensor = "", "", None
    for field, _, value in _fields(node):
        if field == 1:
            name = bytes(value).decode("utf-8", "replace")
        elif field == 2:
            op = bytes(value).decode("utf-8", "replace")
        elif field == 5:  # attr map entry: key (1), AttrValue (2)
            entry = dict((f, v) for f, _, v in _fields(value))
            if bytes(entry.get(1, b"")) == b"value" and 2 in entry:
                tensor = next((v for f, _, v in _fields(entry[2]) if f == 8), None)
    return name, _tensor(tensor) if op == "Const" and tensor is not None else None


def read_constants(path: str | Path) -> dict[str, np.ndarray]:
    """Every ``Const`` node of the frozen graph at ``path``: node name → array."""
    try:
        data = memoryview(Path(path).read_bytes())
    except OSError as err:
        raise CheckpointError(f"cannot read TensorFlow graph {path}: {err.strerror or err}") from None
    constants: dict[str, np.ndarray] = {}
    for field, wire, node in _fields(data):
        if field == 1 and wire == 2:
            name, value = _node_const(node)
            if value is not None:
                constants[name] = value
    if not constants:
        raise CheckpointError(f"{path} is not a frozen TensorFlow graph (no constants)")
    return constants

