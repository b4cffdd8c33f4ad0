"""A GGUF file's header read in a fraction of a second: its metadata and its tensor table, checked
against the file's size; :func:`check_gguf` says whether a path is a whole GGUF file.

``gguf.GGUFReader`` builds a numpy view and an enum per element of every metadata array: on a
262,144-token vocabulary that is about 16 s per file on a 2-core CPU without AVX512 (2026-12-02),
and notebook 05 reads each file it writes, quantises, serves and benchmarks. What the package asks
of a header (is it a whole GGUF file, does it hold tensors, its chat template, its special tokens and
vocabulary) is read here with one pass over a memory map, following the layout of the GGUF
specification (llama.cpp, ``docs/gguf.md``): little-endian, version 2 or 3. Every count and length is
checked against the bytes that remain before it is used, so a corrupt or hostile file raises
:class:`ValueError` naming what is wrong and where, never allocates what the file claims.
``tests/test_gguf.py`` holds it to ``gguf.GGUFReader`` on the embedded model's file.
"""
from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# GGUF metadata value types (the specification's gguf_metadata_value_type)
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9


@dataclass
class Tensor:
    """One entry of the tensor table: name, shape (as stored: fastest dimension first), ggml type and
    the offset of its data from the start of the data section."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int


@dataclass
class Header:
    """A GGUF file's version, metadata (key -> value: numbers, strings, lists) and tensors."""

    version: int
    metadata: dict = field(default_factory=dict)
    tensors: list[Tensor] = field(default_factory=list)
    data_offset: int = 0


class _Cursor:
    def __init__(self, buffer, size: int):
        self.buffer, self.size, self.pos = buffer, size, 0

    def take(self, n: int, what: str) -> int:
        if n < 0 or self.pos + n > self.size:
            raise ValueError(f"{what} at byte {self.pos} needs {n} bytes; the file ends at byte {self.size} (truncated?)")
        start = self.pos
        self.pos += n
        return start

    def unpack(self, fmt: str, what: str):
        start = self.take(struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.buffer, start)[0]

    def string(self, what: str) -> str:
        n = self.unpack("<Q", what)
        start = self.take(n, what)
        try:
            return bytes(self.buffer[start:start + n]).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{what} at byte {start} is not UTF-8: {exc}") from None

    def value(self, kind: int, what: str, depth: int = 0):
        if kind in SCALARS:
            return self.unpack(SCALARS[kind], what)
        if kind == STRING:
            return self.string(what)
        if kind != ARRAY:
            raise ValueError(f"{what}: unknown value type {kind}")
        if depth > 8:
            raise ValueError(f"{what}: arrays nested deeper than 8")
        item, count = self.unpack("<I", what), self.unpack("<Q", what)
        if item in SCALARS:
            fmt = SCALARS[item]
            width = struct.calcsize(fmt)
            start = self.take(count * width, f"{what} ({count} items)")
            return [v[0] for v in struct.iter_unpack(fmt, self.buffer[start:start + count * width])]
        if count > self.size - self.pos:  # every string or array item takes at least 8 bytes
            raise ValueError(f"{what} claims {count} items; only {self.size - self.pos} bytes remain")
        return [self.value(item, f"{what}[{i}]", depth + 1) for i in range(count)]


def read_header(path: str | Path) -> Header:
    """The header of the GGUF file at ``path``: :class:`ValueError` saying what is wrong when it is not
    a whole little-endian GGUF file of version 2 or 3 (magic, a truncated header, a tensor whose data
    would lie past the end of the file)."""
    from gguf import GGML_QUANT_SIZES

    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        if size < 24:
            raise ValueError(f"{size} bytes: shorter than a GGUF header (24 bytes)")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            cursor = _Cursor(buffer, size)
            if bytes(buffer[:4]) != MAGIC:
                raise ValueError(f"starts with {bytes(buffer[:4])!r}, not {MAGIC!r}")
            cursor.pos = 4
            version = cursor.unpack("<I", "version")
            if version not in (2, 3):
                raise ValueError(f"GGUF version {version} (or a big-endian file): only little-endian versions 2 and 3 are read")
            n_tensors, n_kv = cursor.unpack("<Q", "tensor count"), cursor.unpack("<Q", "metadata count")
            header = Header(version)
            for i in range(n_kv):
                key = cursor.string(f"metadata key {i}")
                header.metadata[key] = cursor.value(cursor.unpack("<I", key), key)
            if n_tensors > (size - cursor.pos) // 24:  # each tensor entry takes at least 24 bytes
                raise ValueError(f"{n_tensors} tensors claimed; the header has room for fewer")
            for i in range(n_tensors):
                name = cursor.string(f"tensor {i}'s name")
                dims = cursor.unpack("<I", name)
                if dims > 8:
                    raise ValueError(f"tensor {name!r} has {dims} dimensions (at most 8)")
                shape = tuple(cursor.unpack("<Q", name) for _ in range(dims))
                header.tensors.append(Tensor(name, shape, cursor.unpack("<I", name), cursor.unpack("<Q", name)))
            alignment = header.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
            if not isinstance(alignment, int) or alignment <= 0:
                raise ValueError(f"general.alignment is {alignment!r}")
            header.data_offset = -(-cursor.pos // alignment) * alignment
    for tensor in header.tensors:
        if tensor.ggml_type not in GGML_QUANT_SIZES:
            raise ValueError(f"tensor {tensor.name!r} has unknown ggml type {tensor.ggml_type}")
        block, type_size = GGML_QUANT_SIZES[tensor.ggml_type]
        elements = 1
        for n in tensor.shape:
            elements *= n
        end = header.data_offset + tensor.offset + elements // block * type_size
        if end > size:
            raise ValueError(f"tensor {tensor.name!r} ends at byte {end}; the file ends at byte {size} (truncated?)")
    return header


class GGUFError(ValueError):
    """A path that is not a complete GGUF file, or a conversion that failed; the message names the path."""


def check_gguf(path: str | Path) -> Path:
    """``path`` if it is a GGUF file (magic bytes, a readable header, at least one tensor), else
    :class:`GGUFError` saying what it is instead (missing, a directory, another format, truncated, header only)."""
    if not read_gguf(path).tensors:
        raise GGUFError(f"{path} has a GGUF header but no tensors: no model weights to load")
    return Path(path)


def read_gguf(path: str | Path):
    """The header of a GGUF file (:class:`gemma_helpers.gguf_header.Header`: metadata and tensor table,
    checked against the file's size), or :class:`GGUFError` naming the path and what is wrong."""
    path = Path(path)
    if path.is_dir():
        raise GGUFError(f"{path} is a directory, not a GGUF file (pass the .gguf file inside it)")
    if not path.exists():
        raise GGUFError(f"{path} does not exist")
    if not path.is_file():
        raise GGUFError(f"{path} is not a regular file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise GGUFError(f"{path} cannot be read: {exc}") from exc
    if head != MAGIC:
        raise GGUFError(f"{path} is not a GGUF file (starts with {head!r}, not {MAGIC!r})")
    try:
        return read_header(path)
    except (ValueError, OSError, struct.error) as exc:  # truncated or corrupt beyond the magic bytes
        raise GGUFError(f"{path} is not a readable GGUF file: {exc}") from exc


def gguf_chat_metadata(path: str | Path) -> dict:
    """What a runtime reads from a GGUF to format and end a turn: ``chat_template`` (or None), the
    vocabulary, and the bos / eos / eot token ids (None where the file declares none)."""
    metadata = read_gguf(path).metadata
    return {"chat_template": metadata.get("tokenizer.chat_template"), "tokens": metadata.get("tokenizer.ggml.tokens") or [],
            **{name: metadata.get(f"tokenizer.ggml.{name}_token_id") for name in ("bos", "eos", "eot")}}
