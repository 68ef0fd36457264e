"""SentencePiece's ModelProto read and edited at the wire level, so Kiln needs no protobuf dependency.

The tokenizer stage uses it to strip machine-specific trainer fields (so a model file is
byte-identical wherever it was trained) and to list piece types and special pieces; the
Hugging Face export reads the normalizer spec from it.
"""

from __future__ import annotations

# SentencePiece's ModelProto, read at the wire level so we need no protobuf dependency.
# ModelProto: 1 = repeated SentencePiece, 2 = TrainerSpec, 3 = NormalizerSpec.
# SentencePiece: 1 = piece, 2 = score, 3 = type.
PIECE_TYPES = {1: "normal", 2: "unknown", 3: "control", 4: "user_defined", 5: "unused", 6: "byte"}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b, value = value & 0x7F, value >> 7
        out.append(b | (0x80 if value else 0))
        if not value:
            return bytes(out)


def proto_fields(buf: bytes) -> list[tuple[int, int | bytes, bytes]]:
    """Top-level fields of a serialized protobuf message: (field number, value, raw bytes of the field)."""
    out: list[tuple[int, int | bytes, bytes]] = []
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = _varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        value: int | bytes
        if wire_type == 0:
            value, pos = _varint(buf, pos)
        elif wire_type in (1, 5):
            size = 8 if wire_type == 1 else 4
            value, pos = buf[pos : pos + size], pos + size
        elif wire_type == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
        out.append((number, value, buf[start:pos]))
    return out


def piece_types(model_bytes: bytes) -> list[tuple[str, str]]:
    """(piece, type) for every id of a serialized SentencePiece model, in id order."""
    pieces = []
    for number, value, _ in proto_fields(model_bytes):
        if number == 1 and isinstance(value, bytes):
            sub = {n: v for n, v, _ in proto_fields(value)}
            text = sub.get(1, b"")
            kind = sub.get(3, 1)  # proto2 default: NORMAL
            pieces.append((text.decode("utf-8") if isinstance(text, bytes) else "", PIECE_TYPES.get(int(kind), "?")))  # type: ignore[arg-type]
    return pieces


# TrainerSpec fields that record where and how fast training ran, not what it learned:
# 1 = input path, 2 = model_prefix, 16 = num_threads.
_MACHINE_FIELDS = {1, 2, 16}


def strip_machine_fields(model_bytes: bytes) -> bytes:
    """The model without its sample path, output prefix and thread count: equal training, equal bytes."""
    out = bytearray()
    for number, value, raw in proto_fields(model_bytes):
        if number == 2 and isinstance(value, bytes):
            spec = b"".join(r for n, _, r in proto_fields(value) if n not in _MACHINE_FIELDS)
            out += encode_varint((2 << 3) | 2) + encode_varint(len(spec)) + spec
        else:
            out += raw
    return bytes(out)


def normalizer_spec(model_bytes: bytes) -> dict[int, int | bytes]:
    """NormalizerSpec fields by number (1 name, 2 precompiled charsmap, 3 add_dummy_prefix, …)."""
    spec = next((v for n, v, _ in proto_fields(model_bytes) if n == 3 and isinstance(v, bytes)), b"")
    return {n: v for n, v, _ in proto_fields(spec)}


def special_pieces(model_bytes: bytes) -> dict[str, int]:
    """Unknown, control (bos/eos/pad) and user-defined (chat) pieces of a model, by piece."""
    return {
        piece: i
        for i, (piece, kind) in enumerate(piece_types(model_bytes))
        if kind in ("unknown", "control", "user_defined")
    }
