"""Malformed input: every failure is a FormatError, raised fast, without huge allocations."""

import json
import struct
import zlib

import jax.numpy as jnp
import numpy as np
import pytest
from jrm_craft import join, split
from jrm_time import run_fast

from jaxrm import coding
from jaxrm.coding import FormatError


@pytest.fixture(scope="module")
def files():
    from conftest import make_leaf

    rng = np.random.default_rng(0)
    cb, _ = make_leaf(rng, "codebook", (6, 5), 0.3, 3, "float32")
    qa, qmask = make_leaf(rng, "qarray-masked", (4, 4), 0.5, 4, "bfloat16")
    w, wmask = make_leaf(rng, "masked", (3, 7), 0.4, 0, "float16")
    tree = {"c": cb, "b": jnp.arange(3.0), "q": qa, "w": w}
    masks = {"c": None, "b": None, "q": qmask, "w": wmask}
    return {e: coding.encode(tree, masks=masks, entropy=e) for e in ("huffman", "ans", "none")}


# About 2 s on a quiet core (see jrm_time): a bound on the work a file can cause.
YARDSTICKS = 600


def rejects(data):
    with pytest.raises(FormatError):
        run_fast(lambda: coding.decode(data), YARDSTICKS)


@pytest.mark.parametrize("entropy", ["huffman", "ans", "none"])
def test_every_single_byte_change_is_caught(files, entropy):
    data = files[entropy]
    for i in range(len(data)):
        for flip in (0x01, 0xFF):
            bad = bytearray(data)
            bad[i] ^= flip
            with pytest.raises(FormatError):
                coding.decode(bytes(bad))


@pytest.mark.parametrize("entropy", ["huffman", "ans", "none"])
def test_truncation_trailing_bytes_and_garbage(files, entropy):
    data = files[entropy]
    rng = np.random.default_rng(1)
    for n in [0, 1, 7, 19, 20, 21, *rng.integers(0, len(data), 40).tolist(), len(data) - 1]:
        rejects(data[:n])
    rejects(data + b"\x00")
    rejects(data + data)
    for seed in range(20):
        rejects(np.random.default_rng(seed).bytes(int(rng.integers(0, 500))))
    rejects(coding.MAGIC + rng.bytes(300))


def test_wrong_magic_and_unknown_version(files):
    head, manifest, body = split(files["huffman"])
    with pytest.raises(FormatError, match="magic"):
        coding.decode(join((b"\x89JRX\r\n\x1a\n", *head[1:]), manifest, body))
    with pytest.raises(FormatError, match="version 3"):
        coding.decode(join((head[0], 3, 0), manifest, body))
    with pytest.raises(FormatError, match="flags"):
        coding.decode(join((head[0], 2, 4), manifest, body))
    coding.decode(join(head, manifest, body))  # the rebuild itself is valid


def edit(data, change):
    head, manifest, body = split(data)
    change(manifest)
    return join(head, manifest, body)


def leaf(manifest, path):
    return next(e for e in manifest["leaves"] if e["path"] == path)


@pytest.mark.parametrize(
    "change",
    [
        # sizes that would allocate gigabytes
        lambda m: leaf(m, "w").__setitem__("shape", [10**6, 10**6]),
        lambda m: leaf(m, "q").__setitem__("shape", [2**40, 4]),
        lambda m: leaf(m, "c").__setitem__("shape", [2**62, 2**62]),
        lambda m: leaf(m, "q")["values"].__setitem__("count", 10**12),
        lambda m: leaf(m, "c")["values"].__setitem__("alphabet", 2**40),
        lambda m: leaf(m, "w")["index"].__setitem__("count", 10**9),
        # inconsistent sizes and fields
        lambda m: leaf(m, "b").__setitem__("shape", [4]),
        lambda m: leaf(m, "b").__setitem__("dtype", "float16"),
        lambda m: leaf(m, "b").__setitem__("dtype", "object"),
        lambda m: leaf(m, "w")["index"].__setitem__("count", 1),
        lambda m: leaf(m, "q")["values"].__setitem__("start", 1),
        lambda m: leaf(m, "q")["values"].__setitem__("stream", 9),
        lambda m: leaf(m, "q").__setitem__("index_bits", 5),
        lambda m: leaf(m, "q").__setitem__("kept", 10**6),
        lambda m: m["streams"][0].__setitem__("codec", "pickle"),
        lambda m: m["streams"][0].__setitem__("count", 10**12),
        lambda m: m["streams"][0].__setitem__("section", m["streams"][-1]["section"]),
        lambda m: leaf(m, "c").__setitem__("kind", "eval"),
        lambda m: leaf(m, "c").__setitem__("shape", [5, 6, 1.5]),
        lambda m: leaf(m, "c").__setitem__("shape", [True]),
        lambda m: leaf(m, "c").__setitem__("path", 3),
        lambda m: m["leaves"].append(m["leaves"][0]),
        lambda m: m["leaves"].pop(),
        lambda m: m.__setitem__("leaves", {"a": 1}),
        lambda m: m["sections"][0].__setitem__("length", m["sections"][0]["length"] + 1),
        lambda m: m.__delitem__("sections"),
    ],
)
def test_manifest_inconsistencies_with_valid_crcs(files, change):
    for data in files.values():
        rejects(edit(data, change))


def test_deep_json_and_huge_numbers(files):
    head, _, body = split(files["none"])
    for text in [b"[" * 100_000 + b"]" * 100_000, b'{"leaves": 1' + b"0" * 5000 + b"}", b"NaN"]:
        rejects(struct.pack("<8sHHII", *head, len(text), zlib.crc32(text)) + text + body)


def fuzz_sections(data, rng, trials):
    """Random changes inside sections, CRCs recomputed: decode or FormatError, nothing else."""
    head, manifest, body = split(data)
    for _ in range(trials):
        bad = bytearray(body)
        for _ in range(int(rng.integers(1, 4))):
            bad[int(rng.integers(len(bad)))] = int(rng.integers(256))
        crafted = join(head, json.loads(json.dumps(manifest)), bytes(bad))
        try:
            run_fast(lambda data=crafted: coding.decode(data), YARDSTICKS)
        except FormatError:
            pass


def test_section_garbage_behind_valid_crcs(files):
    rng = np.random.default_rng(2)
    for data in files.values():
        fuzz_sections(data, rng, 40)


@pytest.mark.slow
def test_thousands_of_random_corruptions(files):
    rng = np.random.default_rng(3)
    for data in files.values():
        fuzz_sections(data, rng, 1000)
        for _ in range(1000):
            bad = bytearray(data)
            for _ in range(int(rng.integers(1, 4))):
                bad[int(rng.integers(len(bad)))] ^= int(rng.integers(1, 256))
            rejects(bytes(bad))
            rejects(data[: int(rng.integers(len(data)))])


def test_multi_lane_streams_behind_valid_crcs():
    # streams long enough for several Huffman/rANS lanes, garbage in their sections
    rng = np.random.default_rng(4)
    from conftest import make_leaf

    cb, _ = make_leaf(rng, "codebook-arg", (60, 80), 0.5, 4, "float32")
    for entropy in ("huffman", "ans"):
        data = coding.encode({"c": cb}, entropy=entropy)
        fuzz_sections(data, rng, 10)
