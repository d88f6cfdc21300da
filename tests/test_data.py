"""The data pipelines: shapes, split sizes, reproducible order, augmentation,
normalisation, and the error for a data set that is not prepared; and
``freezeout_tf.recipes.download``: a download through a fake builder with its progress
lines, and its failures (a refusing proxy, no DNS, a silent server, a checksum
mismatch) as one line, fast, before anything is written. No test reaches the
network: proxies point at a closed port on 127.0.0.1, servers are local."""

import contextlib
import http.server
import io
import os
import socket
import threading
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from freezeout_tf.recipes import data, download


def _batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


@pytest.fixture(scope="module")
def synthetic():
    return data.load_data(
        "synthetic",
        batch_size=32,
        seed=3,
        synthetic_train_size=200,
        synthetic_validation_size=70,
    )


def test_synthetic_sizes_and_shapes(synthetic):
    assert synthetic.num_classes == 100
    assert synthetic.num_train == 200 and synthetic.num_validation == 70
    assert synthetic.steps_per_epoch == 200 // 32
    batches = _batches(synthetic.train(0, 1))
    assert len(batches) == synthetic.steps_per_epoch
    for x, y in batches:  # drop_remainder: one shape, so one trace
        assert x.shape == (32, 32, 32, 3) and x.dtype == np.float32
        assert y.shape == (32,) and y.dtype == np.int32
    val = _batches(synthetic.validation)
    assert [len(y) for _, y in val] == [32, 32, 6]  # evaluation keeps every image


def test_synthetic_is_deterministic_and_learnable():
    a_x, a_y = data.make_synthetic_arrays(300, seed=1)
    b_x, b_y = data.make_synthetic_arrays(300, seed=1)
    np.testing.assert_array_equal(a_x, b_x)
    np.testing.assert_array_equal(a_y, b_y)
    assert a_x.shape == (300, 32, 32, 3) and a_x.dtype == np.uint8
    assert a_y.min() >= 0 and a_y.max() < 100
    # The class is visible in the mean colour: nearest class colour wins.
    means = a_x.reshape(300, -1, 3).mean(axis=1)
    palette = np.stack(
        [
            means[a_y == c].mean(axis=0) if np.any(a_y == c) else np.full(3, 1e9)
            for c in range(100)
        ]
    )
    pred = np.argmin(((means[:, None, :] - palette[None]) ** 2).sum(-1), axis=1)
    assert np.mean(pred == a_y) > 0.5


def test_epoch_order_does_not_depend_on_earlier_epochs(synthetic):
    steps = synthetic.steps_per_epoch
    full = _batches(synthetic.train(0, 3))
    resumed = _batches(synthetic.train(2, 3))
    assert len(full) == 3 * steps and len(resumed) == steps
    for (x1, y1), (x2, y2) in zip(full[2 * steps :], resumed):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    # ... and epochs differ from one another (reshuffled every epoch).
    assert not np.array_equal(full[0][1], full[steps][1])
    # The same seed gives the same stream; another seed another one.
    other = data.load_data("synthetic", batch_size=32, seed=4, synthetic_train_size=200)
    assert not np.array_equal(_batches(other.train(0, 1))[0][1], full[0][1])


def test_endless_train_pipeline(synthetic):
    ds = synthetic.train(5)
    assert (
        len(_batches(ds.take(3 * synthetic.steps_per_epoch)))
        == 3 * synthetic.steps_per_epoch
    )


def _normalized(images, name="synthetic"):
    mean, std = data.NORMALIZATION[name]
    return (images.astype(np.float32) / 255.0 - np.float32(mean)) / np.float32(std)


def test_no_augment_gives_normalized_images():
    d = data.load_data(
        "synthetic", batch_size=10, augment=False, synthetic_train_size=40
    )
    images, labels = data.make_synthetic_arrays(40, seed=1)
    for x, y in _batches(d.train(0, 1)):
        for xi, yi in zip(x, y):
            match = [
                i
                for i in range(40)
                if np.allclose(_normalized(images[i]), xi, atol=1e-5)
            ]
            assert match and labels[match[0]] == yi


def test_augmentation_is_a_padded_crop_and_maybe_a_flip():
    d = data.load_data(
        "synthetic", batch_size=8, augment=True, synthetic_train_size=8, seed=0
    )
    images, _ = data.make_synthetic_arrays(8, seed=1)
    order = np.asarray(_batches(d.train(0, 1))[0][1])
    x, y = _batches(d.train(0, 1))[0]
    np.testing.assert_array_equal(y, order)
    zero = _normalized(np.zeros((1, 1, 3), np.uint8))[0, 0]
    flips = shifts = 0
    for out in x:
        candidates = []
        for i in range(8):
            padded = np.pad(images[i], [[4, 4], [4, 4], [0, 0]])
            for dy in range(9):
                for dx in range(9):
                    crop = padded[dy : dy + 32, dx : dx + 32]
                    for flip in (False, True):
                        c = crop[:, ::-1] if flip else crop
                        if np.allclose(_normalized(c), out, atol=1e-5):
                            candidates.append((dy, dx, flip))
        assert candidates, "an augmented image is not a crop of a padded image"
        dy, dx, flip = candidates[0]
        flips += flip
        shifts += (dy, dx) != (4, 4)
        if (dy, dx) != (4, 4):  # the padding is black before normalisation
            assert np.any(np.all(np.isclose(out, zero, atol=1e-5), axis=-1))
    assert shifts > 0


def test_cifar_from_mocked_tfds(tmp_path):
    with tfds.testing.mock_data(num_examples=40):
        d = data.load_data("cifar100", data_dir=str(tmp_path), batch_size=16, seed=0)
        assert d.num_classes == 100 and d.steps_per_epoch == d.num_train // 16
        x, y = _batches(d.train(0, 1))[0]
        assert x.shape == (16, 32, 32, 3) and y.max() < 100
        assert d.validation is not None
        d10 = data.load_data(
            "cifar10", data_dir=str(tmp_path), validation="test", batch_size=16
        )
        assert d10.num_classes == 10 and d10.validation_split == "test"
        assert d10.num_validation > 0
        none = data.load_data(
            "cifar10", data_dir=str(tmp_path), validation="none", batch_size=16
        )
        assert none.validation is None and none.num_validation == 0


def test_missing_dataset_raises_one_clear_error(tmp_path):
    where = tmp_path / "nothing_here"
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load_data("cifar100", data_dir=str(where))
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "\n" not in message
    assert "'cifar100'" in message and str(where) in message
    assert "download_and_prepare()" in message
    assert not where.exists()  # nothing created, nothing downloaded


@pytest.mark.parametrize(
    "kwargs, text",
    [
        (dict(dataset="imagenet"), "imagenet"),
        (dict(validation="sometimes"), "sometimes"),
        (dict(batch_size=0), "0"),
        (dict(dataset="synthetic", batch_size=64, synthetic_train_size=10), "64"),
    ],
)
def test_bad_arguments(kwargs, text):
    kwargs.setdefault("dataset", "synthetic")
    with pytest.raises(ValueError, match=text):
        data.load_data(**kwargs)


def test_default_data_dir_honours_tfds_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    assert download.default_data_dir(None) == str(tmp_path)
    assert download.default_data_dir("~/x") == os.path.expanduser("~/x")
    monkeypatch.delenv("TFDS_DATA_DIR")
    assert download.default_data_dir(None) == os.path.expanduser(
        "~/tensorflow_datasets"
    )


# ---------------------------------------------------------------------------
# freezeout_tf.recipes.download

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
NO_PROXY_VARS = ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy")


@contextlib.contextmanager
def closed_port():
    """A port on 127.0.0.1 that refuses connections (bound, never listening,
    so no other process can take it meanwhile)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@contextlib.contextmanager
def silent_server():
    """A port on 127.0.0.1 that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@contextlib.contextmanager
def local_server():
    """An HTTP server on 127.0.0.1 that answers 200 to everything."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def proxy_env(monkeypatch):
    """Sets every proxy variable to ``url`` (and clears NO_PROXY)."""

    def set_proxy(url):
        for var in NO_PROXY_VARS:
            monkeypatch.delenv(var, raising=False)
        for var in PROXY_VARS:
            monkeypatch.setenv(var, url)

    return set_proxy


@pytest.fixture
def no_proxy(monkeypatch):
    for var in PROXY_VARS + NO_PROXY_VARS:
        monkeypatch.delenv(var, raising=False)


class FakeBuilder:
    """Stands in for ``tfds.builder(name, data_dir=...)``: ``url_infos`` as a
    real builder's, ``download_and_prepare`` runs ``action(self, download_dir)``
    and marks the data set prepared."""

    def __init__(self, url, size, action, prepared=False):
        self.url_infos = {url: tfds.core.download.checksums.UrlInfo(
            size=size, checksum="0" * 64, filename="fake.tar.gz")}
        self.action, self.prepared, self.calls = action, prepared, []

    def is_prepared(self):
        return self.prepared

    def download_and_prepare(self, download_dir=None, **kwargs):
        self.calls.append(download_dir)
        self.action(self, download_dir)
        self.prepared = True


def _install(monkeypatch, builder):
    made = []

    def fake(name, data_dir=None, **kwargs):
        made.append((name, data_dir))
        return builder

    monkeypatch.setattr(tfds, "builder", fake)
    return made


def test_prepare_downloads_with_progress_lines(tmp_path, monkeypatch, no_proxy):
    out = io.StringIO()

    def download_in_chunks(builder, download_dir):
        target = os.path.join(download_dir, "fake", "fake.tar.gz.tmp")
        os.makedirs(os.path.dirname(target))
        with open(target, "wb") as f:
            for _ in range(3):
                # Counted before the write: the watcher may print this
                # chunk's line before the count would be taken after it.
                lines = out.getvalue().count("MiB downloaded")
                f.write(b"x" * (1 << 20))
                f.flush()
                deadline = time.monotonic() + 30
                while out.getvalue().count("MiB downloaded") == lines:
                    assert time.monotonic() < deadline, "no progress line"
                    time.sleep(0.01)
        print("tfds' own line")  # hidden: the module writes its own lines

    with local_server() as url:
        builder = FakeBuilder(url + "/fake.tar.gz", 4 << 20, download_in_chunks)
        made = _install(monkeypatch, builder)
        assert download.prepare(
            "cifar100", str(tmp_path), progress="lines", stream=out, interval=0.02
        )
    assert made[0] == ("cifar100", str(tmp_path))
    assert builder.calls == [str(tmp_path / "downloads")]
    lines = out.getvalue().splitlines()
    assert lines[0] == (
        f"data: cifar100 is not prepared under {tmp_path}: downloading it with "
        f"tensorflow-datasets (4.0 MiB from 127.0.0.1 into "
        f"{tmp_path / 'downloads'}) and preparing it"
    )
    assert [x for x in lines if "MiB downloaded" in x] == [
        f"data: cifar100: {n}.0 of 4.0 MiB downloaded" for n in (1, 2, 3)
    ]
    assert lines[-1].startswith(
        f"data: cifar100 prepared under {tmp_path / 'cifar100'} in "
    )
    assert "tfds' own line" not in out.getvalue()

    # Prepared now: nothing is asked of anyone, nothing is written.
    (info,) = builder.url_infos.values()
    builder.url_infos = {"http://127.0.0.1:9/never": info}
    out = io.StringIO()
    assert download.prepare("cifar100", str(tmp_path), stream=out) is False
    assert out.getvalue() == "" and len(builder.calls) == 1


def test_prepare_progress_off_writes_nothing(tmp_path, monkeypatch, no_proxy, capsys):
    with local_server() as url:
        builder = FakeBuilder(url + "/f", 10, lambda b, d: print("tfds"))
        _install(monkeypatch, builder)
        assert download.prepare("cifar10", str(tmp_path), progress="off")
    assert capsys.readouterr() == ("", "")
    with pytest.raises(ValueError, match="'loud'.*bar, lines, off"):
        download.prepare("cifar10", str(tmp_path), progress="loud")


def _expect_download_error(name, where, **kwargs):
    start = time.perf_counter()
    with pytest.raises(download.DownloadError) as info:
        download.prepare(name, str(where), **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"could not download data set {name!r}: ")
    assert f"copy '{where / name}' here" in message  # what to do
    assert not where.exists()  # nothing written
    return info.value, time.perf_counter() - start


def test_a_refusing_proxy_is_one_line(tmp_path, proxy_env):
    """The real CIFAR-100 builder, through a proxy at a closed port."""
    with closed_port() as port:
        proxy_env(f"http://127.0.0.1:{port}")
        err, seconds = _expect_download_error("cifar100", tmp_path / "tfds")
    assert err.cause == (
        f"cannot connect to the proxy http://127.0.0.1:{port} "
        "([Errno 111] Connection refused)"
    )
    # The README: the script asks each URL once, within 20 s (the default
    # probe timeout; tensorflow-datasets alone retries for ~3.5 minutes).
    assert download.PROBE_TIMEOUT == 20.0
    assert seconds < download.PROBE_TIMEOUT
    print(f"refusing proxy: DownloadError after {seconds:.2f} s")


def test_no_dns_is_one_line(tmp_path, monkeypatch, no_proxy):
    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    err, _ = _expect_download_error("cifar100", tmp_path / "tfds")
    assert err.cause == (
        "cannot resolve the host name www.cs.toronto.edu (no network or no DNS?)"
    )


def test_a_silent_server_times_out(tmp_path, monkeypatch, no_proxy):
    with silent_server() as port:
        builder = FakeBuilder(f"http://127.0.0.1:{port}/f", 10, None)
        _install(monkeypatch, builder)
        err, _ = _expect_download_error(
            "cifar100", tmp_path / "tfds", probe_timeout=0.5
        )
    assert err.cause == "no answer from 127.0.0.1 within 0.5 s"
    assert builder.calls == []


def test_an_http_error_is_one_line(tmp_path, monkeypatch, no_proxy):
    with local_server() as url:
        builder = FakeBuilder(url + "/f", 10, None)
        _install(monkeypatch, builder)
        monkeypatch.setattr(
            http.server.BaseHTTPRequestHandler, "send_response",
            lambda self, code, message=None: http.server.BaseHTTPRequestHandler
            .send_response_only(self, 404),
        )
        err, _ = _expect_download_error("cifar100", tmp_path / "tfds")
    assert err.cause == f"{url}/f answered HTTP 404"


def test_a_checksum_mismatch_is_one_line(tmp_path, monkeypatch, no_proxy):
    from tensorflow_datasets.core.download.download_manager import (
        NonMatchingChecksumError,
    )

    def corrupt(builder, download_dir):
        raise NonMatchingChecksumError("Artifact ... has wrong checksum:\n* ...")

    with local_server() as url:
        _install(monkeypatch, FakeBuilder(url + "/f", 10, corrupt))
        with pytest.raises(download.DownloadError) as info:
            download.prepare("cifar100", str(tmp_path / "tfds"))
    assert "\n" not in str(info.value)
    assert info.value.cause.startswith(
        "the downloaded file does not match the checksum recorded in "
        "tensorflow-datasets"
    )


def test_tfds_download_is_bounded(tmp_path, proxy_env):
    """tensorflow-datasets' own download, past the probe: with its retries
    lowered (it retries 10 times, ~3.5 min through a refusing proxy) and a
    socket timeout (it sets none, so a silent server would hang it)."""
    from tensorflow_datasets.core.download import downloader

    assert downloader.MAX_RETRIES == 10  # the names patched still exist
    original = downloader._open_url
    with silent_server() as port, download._bounded_requests(0, (0.5, 0.5)):
        assert downloader.MAX_RETRIES == 0
        with pytest.raises(Exception) as info:
            with downloader._open_url(f"http://127.0.0.1:{port}/f"):
                pass
        assert "timed out" in str(info.value)
    assert downloader.MAX_RETRIES == 10 and downloader._open_url is original

    # The real CIFAR-100 builder's download_and_prepare, bounded.
    with closed_port() as port:
        proxy_env(f"http://127.0.0.1:{port}")
        builder = tfds.builder("cifar100", data_dir=str(tmp_path))
        start = time.perf_counter()
        with download._bounded_requests():
            with pytest.raises(Exception) as info:
                builder.download_and_prepare(
                    download_dir=str(tmp_path / "downloads")
                )
        seconds = time.perf_counter() - start
    assert "Unable to connect to proxy" in str(info.value)
    print(f"bounded tfds download through a refusing proxy: {seconds:.2f} s")
