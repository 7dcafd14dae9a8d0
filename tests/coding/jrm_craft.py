"""A model of the .jrm layout written from the docs, to craft files with valid checksums.

It knows the header, the (optionally zlib-compressed) JSON manifest and the
sections, and recomputes every CRC32, so only the decoder's consistency checks
can object to what it builds. It shares no code with ``jaxrm.coding``.
"""

import json
import struct
import zlib

import numpy as np

MAGIC = b"\x89JRM\r\n\x1a\n"
HEAD = struct.Struct("<8sHHII")


def split(data):
    """(header fields (magic, version, flags), manifest dict, body bytes)."""
    magic, version, flags, mlen, _ = HEAD.unpack_from(data)
    text = data[HEAD.size : HEAD.size + mlen]
    if flags & 1:
        text = zlib.decompress(text)
    return (magic, version, flags), json.loads(text), data[HEAD.size + mlen :]


def join(head, manifest, body, fix_crcs=True, compress=None):
    """Rebuilds a file with valid CRCs (section CRCs too unless ``fix_crcs`` is off)."""
    magic, version, flags = head
    if fix_crcs:
        pos = 0
        secs = manifest.get("sections") if isinstance(manifest, dict) else None
        for s in secs if isinstance(secs, list) else []:
            if isinstance(s, dict) and isinstance(s.get("length"), int) and s["length"] >= 0:
                s["crc32"] = zlib.crc32(body[pos : pos + s["length"]])
                pos += s["length"]
    text = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    if compress is None:
        compress = bool(flags & 1)
    if compress:
        text = zlib.compress(text)
        flags |= 1
    else:
        flags &= ~1
    return HEAD.pack(magic, version, flags, len(text), zlib.crc32(text)) + text + body


def raw_manifest(text: bytes, body=b"", version=2):
    """A file whose manifest is exactly ``text`` (uncompressed)."""
    return HEAD.pack(MAGIC, version, 0, len(text), zlib.crc32(text)) + text + body


class Craft:
    """Builds a version-2 file from sections, streams and leaf records given by hand."""

    def __init__(self):
        self.sections = []
        self.streams = []
        self.leaves = []

    def section(self, data: bytes) -> int:
        self.sections.append(bytes(data))
        return len(self.sections) - 1

    def raw(self, arr, dtype=None, shape=None, offset=None, section=None):
        arr = np.asarray(arr)
        if section is None:
            section = self.section(arr.astype(arr.dtype.newbyteorder("<")).tobytes())
        ref = {"codec": "raw", "dtype": dtype or arr.dtype.name,
               "shape": list(arr.shape) if shape is None else shape, "section": section}
        if offset is not None:
            ref["offset"] = offset
        return ref

    def stream(self, codec, payload: bytes, count, alphabet):
        self.streams.append({"codec": codec, "count": count, "alphabet": alphabet,
                             "section": self.section(payload)})
        return len(self.streams) - 1

    def run(self, stream, count, alphabet, start=0):
        return {"stream": stream, "start": start, "count": count, "alphabet": alphabet}

    def fixed(self, symbols, alphabet, count=None):
        """A fixed-width stream of ``symbols`` and a run covering it."""
        width = max(int(alphabet - 1).bit_length(), 0)
        payload = pack(symbols, width)
        n = len(symbols) if count is None else count
        j = self.stream("fixed", payload, n, alphabet)
        return self.run(j, n, alphabet)

    def leaf(self, **record):
        self.leaves.append(record)
        return record

    def manifest(self):
        return {
            "leaves": self.leaves,
            "streams": self.streams,
            "sections": [{"length": len(s), "crc32": 0} for s in self.sections],
        }

    def build(self, manifest=None, version=2, compress=False, fix_crcs=True):
        body = b"".join(self.sections)
        manifest = manifest or self.manifest()
        return join((MAGIC, version, 0), manifest, body, fix_crcs=fix_crcs, compress=compress)


def pack(symbols, width):
    """MSB-first fixed-width packing (the ``fixed`` codec), written independently."""
    bits = "".join(format(int(s), f"0{width}b") for s in symbols) if width else ""
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8))


def huffman_payload(mode, table: bytes, lanes=1, ow=0, base=0, lane_bits=b"", pad=0, codes=b""):
    """A Huffman section from its parts, as the docs lay it out."""
    return (bytes([mode]) + table + lanes.to_bytes(4, "little") + bytes([ow])
            + base.to_bytes(4, "little") + lane_bits + bytes([pad]) + codes)


def ans_payload(lanes, mode, m, table: bytes, states, words=b""):
    """An rANS section from its parts, as the docs lay it out."""
    return (lanes.to_bytes(4, "little") + bytes([mode]) + m.to_bytes(4, "little") + table
            + b"".join(int(s).to_bytes(4, "little") for s in states) + words)
