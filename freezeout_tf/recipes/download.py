"""Download and prepare a tensorflow-datasets data set, failing fast offline.

``prepare("cifar100", data_dir)`` makes sure CIFAR-100 is prepared under
``data_dir`` (the tensorflow-datasets data directory), downloading it with
``builder.download_and_prepare`` when it is not; ``load_data`` then reads it.
For CIFAR-100 tensorflow-datasets fetches one file of 160.7 MiB (168.5 MB),
``https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz``, into
``data_dir/downloads`` and writes the prepared data set to
``data_dir/cifar100/<version>``; CIFAR-10 is one file of 162.2 MiB.

tensorflow-datasets retries a refused connection 10 times with exponential
back-off (about 3.5 minutes through a refused proxy) and sets no socket
timeout, so without a network it would keep a job waiting for minutes, or for
ever on a network that drops packets. So ``prepare`` first asks each URL the
builder will fetch once, without retries and within ``PROBE_TIMEOUT`` seconds
(DNS look-up included), and reports the cause -- no network, a proxy that
refuses, an HTTP error -- as one ``DownloadError`` before anything is
written; while tensorflow-datasets downloads, its retries are lowered to
``DOWNLOAD_RETRIES`` and each request gets the timeouts ``DOWNLOAD_TIMEOUT``
(tensorflow-datasets has no option for either: ``_bounded_requests`` sets its
module's ``MAX_RETRIES`` and wraps its ``_open_url`` for the call, and a test
checks that both still exist). A download that does not match the checksum
recorded in tensorflow-datasets is a ``DownloadError`` too.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
import time
import urllib.parse
from typing import Dict, Iterator, Optional, TextIO, Tuple

__all__ = [
    "DOWNLOAD_RETRIES",
    "DOWNLOAD_TIMEOUT",
    "PROBE_TIMEOUT",
    "PROGRESS_MODES",
    "DownloadError",
    "default_data_dir",
    "download_size",
    "is_prepared",
    "prepare",
]

#: Seconds within which each URL must answer before the download starts.
PROBE_TIMEOUT = 20.0
#: Retries of a failed request while tensorflow-datasets downloads (it uses 10).
DOWNLOAD_RETRIES = 1
#: (connect, read) socket timeouts of those requests, in seconds (it sets none).
DOWNLOAD_TIMEOUT = (15.0, 30.0)
#: ``progress`` of ``prepare``: tensorflow-datasets' own progress bars (on
#: stderr, for a terminal), plain lines every ``interval`` seconds (for a log
#: file), or nothing.
PROGRESS_MODES = ("bar", "lines", "off")

_MIB = 1 << 20


class DownloadError(RuntimeError):
    """A data set could not be downloaded; the message is one line.

    ``cause`` says what went wrong (e.g. ``cannot connect to the proxy
    http://127.0.0.1:9 ([Errno 111] Connection refused)``); the message adds
    what to do.
    """

    def __init__(self, name: str, cause: str, where: str):
        self.name, self.cause, self.where = name, cause, where
        super().__init__(
            f"could not download data set {name!r}: {cause}; check the network "
            "and the proxy settings (HTTPS_PROXY / https_proxy) and try again, or "
            f"prepare it on a machine with internet and copy "
            f"'{os.path.join(where, name)}' here"
        )


def default_data_dir(data_dir: Optional[str] = None) -> str:
    """The tensorflow-datasets data directory: ``data_dir``, else
    ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``; absolute.

    Args:
        data_dir: a directory, or None for the default.

    Example:
        >>> from freezeout_tf.recipes.download import default_data_dir
        >>> default_data_dir("/data/tfds")
        '/data/tfds'
    """
    if data_dir:
        return os.path.abspath(os.path.expanduser(data_dir))
    env = os.environ.get("TFDS_DATA_DIR")
    return env or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    """Hides tensorflow-datasets' warnings about a data directory that is not
    prepared yet (``prepare`` and ``load_data`` report that themselves)."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _builder(name: str, where: str):
    import tensorflow_datasets as tfds

    with _quiet_absl():
        return tfds.builder(name, data_dir=where)


def _prepared(builder) -> bool:
    with _quiet_absl():  # it warns about every file a missing data set lacks
        return bool(builder.is_prepared())


def is_prepared(name: str, data_dir: Optional[str] = None) -> bool:
    """Whether data set ``name`` is prepared under ``data_dir``.

    Args:
        name: a tensorflow-datasets name, e.g. ``"cifar100"``.
        data_dir: the data directory (default as ``default_data_dir``).

    Example:
        >>> from freezeout_tf.recipes.download import is_prepared
        >>> is_prepared("cifar10", "/nonexistent")
        False
    """
    return _prepared(_builder(name, default_data_dir(data_dir)))


def _url_infos(builder) -> Dict[str, int]:
    """URL -> size in bytes of the files the builder downloads ({} if unknown)."""
    infos = getattr(builder, "url_infos", None) or {}
    return {url: int(info.size) for url, info in infos.items()}


def download_size(name: str) -> int:
    """Bytes that preparing data set ``name`` downloads (0 if not recorded).

    Args:
        name: a tensorflow-datasets name.

    Example:
        >>> from freezeout_tf.recipes.download import download_size
        >>> round(download_size("cifar100") / 2**20, 1)
        160.7
    """
    return sum(_url_infos(_builder(name, default_data_dir(None))).values())


# ---------------------------------------------------------------------------
# the causes of a failed download, in one line


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err`` and the exceptions behind it (urllib3 keeps them in ``reason``
    and ``args``, Python in ``__cause__`` / ``__context__``)."""
    seen, todo = set(), [err]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo.extend(
            x
            for x in (getattr(e, "reason", None), e.__cause__, e.__context__)
            + tuple(e.args)
            if isinstance(x, BaseException)
        )


def _root(err: BaseException) -> str:
    """The innermost message: e.g. ``[Errno 111] Connection refused``."""
    last = err
    for e in _chain(err):
        last = e
    text = str(last)
    # urllib3 prefixes "HTTPSConnection(host=..., port=...): Failed to ...: ".
    return text.rsplit(": ", 1)[-1] if "Errno" in text else text.splitlines()[0]


def _proxy_for(url: str) -> Optional[str]:
    import requests

    proxies = requests.utils.get_environ_proxies(url)
    scheme = urllib.parse.urlsplit(url).scheme
    return proxies.get(scheme) or proxies.get("all")


def _cause(err: BaseException, url: str, timeout: float) -> str:
    """What went wrong, for a person: no network, the proxy, an HTTP error."""
    import requests

    host = urllib.parse.urlsplit(url).hostname
    names = {type(e).__name__ for e in _chain(err)}
    if isinstance(err, requests.exceptions.ProxyError) or "ProxyError" in names:
        return f"cannot connect to the proxy {_proxy_for(url)} ({_root(err)})"
    if "NameResolutionError" in names or "gaierror" in names:
        return f"cannot resolve the host name {host} (no network or no DNS?)"
    if isinstance(err, requests.exceptions.SSLError):
        return f"TLS error talking to {host} ({_root(err)})"
    if isinstance(err, requests.exceptions.Timeout) or isinstance(
        err, TimeoutError
    ):
        return f"no answer from {host} within {timeout:g} s"
    if isinstance(err, requests.exceptions.ConnectionError):
        return f"cannot connect to {host} ({_root(err)})"
    return f"{type(err).__name__}: {_root(err)}"


def _probe(url: str, timeout: float) -> Optional[str]:
    """Why ``url`` cannot be downloaded now, or None if it answers HTTP 200.

    One GET (its body is not read), no retries, proxies from the environment;
    the whole of it -- DNS look-up included, which socket timeouts do not
    bound -- within ``timeout`` seconds.
    """
    import requests

    answer: Dict[str, object] = {}

    def ask():
        try:
            with requests.get(
                url, stream=True, timeout=(timeout, timeout), allow_redirects=True
            ) as response:
                answer["status"] = response.status_code
        except Exception as err:  # reported below, in the caller's thread
            answer["error"] = err

    thread = threading.Thread(target=ask, name="freezeout-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return f"no answer from {urllib.parse.urlsplit(url).hostname} within " \
            f"{timeout:g} s"
    if "error" in answer:
        return _cause(answer["error"], url, timeout)
    if answer.get("status") != 200:
        return f"{url} answered HTTP {answer.get('status')}"
    return None


@contextlib.contextmanager
def _bounded_requests(
    retries: int = DOWNLOAD_RETRIES,
    timeout: Tuple[float, float] = DOWNLOAD_TIMEOUT,
) -> Iterator[None]:
    """tensorflow-datasets' HTTP requests with ``retries`` and ``timeout``."""
    from tensorflow_datasets.core.download import downloader

    saved = downloader.MAX_RETRIES, downloader._open_url
    original = saved[1]

    def open_url(url, **kwargs):
        kwargs.setdefault("timeout", timeout)
        return original(url, **kwargs)

    downloader.MAX_RETRIES, downloader._open_url = retries, open_url
    try:
        yield
    finally:
        downloader.MAX_RETRIES, downloader._open_url = saved


@contextlib.contextmanager
def _progress_bars(enable: bool) -> Iterator[None]:
    from tensorflow_datasets.core.utils import tqdm_utils

    saved = getattr(tqdm_utils, "_active", True)
    tqdm_utils.display_progress_bar(enable)
    try:
        yield
    finally:
        tqdm_utils.display_progress_bar(saved)


def _bytes_under(directory: str, skip: str) -> int:
    total = 0
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if os.path.join(root, d) != skip]
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:  # renamed while we looked
                pass
    return total


class _Watcher:
    """Writes ``data: NAME: X of Y MiB downloaded`` every ``interval`` seconds
    while the files under ``download_dir`` grow (what tensorflow-datasets'
    progress bar shows, as plain lines)."""

    def __init__(self, name, download_dir, total, write, interval):
        self.name, self.dir, self.total = name, download_dir, total
        self.write, self.interval = write, interval
        self.skip = os.path.join(download_dir, "extracted")
        self.start = _bytes_under(download_dir, self.skip)
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=self._run, name="freezeout-download-progress", daemon=True
        )

    def _run(self):
        last = 0
        while not self.stop.wait(self.interval):
            done = _bytes_under(self.dir, self.skip) - self.start
            if done >= self.total > 0:
                self.write(f"data: {self.name}: downloaded; extracting and preparing")
                return
            if done > last:
                last = done
                self.write(
                    f"data: {self.name}: {done / _MIB:.1f} of "
                    f"{self.total / _MIB:.1f} MiB downloaded"
                )

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def prepare(
    name: str,
    data_dir: Optional[str] = None,
    *,
    progress: str = "bar",
    stream: Optional[TextIO] = None,
    interval: float = 10.0,
    probe_timeout: float = PROBE_TIMEOUT,
) -> bool:
    """Makes sure data set ``name`` is prepared under ``data_dir``, downloading
    it if needed; returns whether it downloaded.

    Before anything is written, each URL of the data set is asked once (see
    the module docstring), so a machine without network, or with a proxy that
    refuses, gets one ``DownloadError`` within ``probe_timeout`` seconds.
    Then ``builder.download_and_prepare`` runs, with the bounded retries and
    timeouts; its files go to ``data_dir/downloads`` (which can be deleted
    afterwards) and the prepared data set to ``data_dir/NAME``.

    Args:
        name: a tensorflow-datasets name, e.g. ``"cifar100"``.
        data_dir: the data directory (default as ``default_data_dir``).
        progress: one of ``PROGRESS_MODES``: ``"bar"`` shows
            tensorflow-datasets' progress bars on stderr (for a terminal);
            ``"lines"`` writes a line to ``stream`` every ``interval``
            seconds instead (for a log file); ``"off"`` writes nothing at all.
            Except with ``"off"``, a line before the download and one after it
            go to ``stream``.
        stream: where the lines go (default ``sys.stdout``).
        interval: seconds between two ``"lines"`` progress lines.
        probe_timeout: seconds within which each URL must answer.

    Returns:
        True if it downloaded and prepared the data set, False if it was
        prepared already (then nothing is asked of the network).

    Raises:
        ValueError: ``progress`` is not one of ``PROGRESS_MODES``.
        DownloadError: the data set could not be downloaded (no network, a
            proxy that refuses, an HTTP error, a checksum mismatch).

    Example:
        >>> from freezeout_tf.recipes.download import prepare
        >>> prepare("cifar100", "~/tensorflow_datasets")  # doctest: +SKIP
        data: cifar100 is not prepared under /home/me/tensorflow_datasets: ...
        True
    """
    if progress not in PROGRESS_MODES:
        raise ValueError(
            f"progress {progress!r} is not allowed; allowed: "
            f"{', '.join(PROGRESS_MODES)}"
        )
    out = stream if stream is not None else sys.stdout

    def write(line: str) -> None:
        if progress != "off":
            print(line, file=out, flush=True)

    where = default_data_dir(data_dir)
    builder = _builder(name, where)
    if _prepared(builder):
        return False
    urls = _url_infos(builder)
    for url in urls:
        cause = _probe(url, probe_timeout)
        if cause:
            raise DownloadError(name, cause, where)

    from tensorflow_datasets.core.download.download_manager import (
        NonMatchingChecksumError,
    )

    download_dir = os.path.join(where, "downloads")
    total = sum(urls.values())
    hosts = sorted({urllib.parse.urlsplit(u).hostname for u in urls})
    write(
        f"data: {name} is not prepared under {where}: downloading it with "
        f"tensorflow-datasets ({total / _MIB:.1f} MiB from {', '.join(hosts)} "
        f"into {download_dir}) and preparing it"
    )
    start = time.perf_counter()
    watcher = (
        _Watcher(name, download_dir, total, write, interval)
        if progress == "lines"
        else contextlib.nullcontext()
    )
    os.makedirs(download_dir, exist_ok=True)
    try:
        # tensorflow-datasets prints its own two lines to stdout (sizes that it
        # does not know yet, in bold); the lines above and below replace them.
        with _bounded_requests(), _progress_bars(
            progress == "bar"
        ), contextlib.redirect_stdout(io.StringIO()), watcher:
            builder.download_and_prepare(download_dir=download_dir)
    except NonMatchingChecksumError:
        raise DownloadError(
            name,
            f"the downloaded file does not match the checksum recorded in "
            f"tensorflow-datasets (under {download_dir}; a proxy may have "
            "altered it)",
            where,
        ) from None
    except Exception as err:
        import requests
        from tensorflow_datasets.core.download.util import (
            DownloadError as TfdsDownloadError,
        )

        if isinstance(err, (requests.exceptions.RequestException, TfdsDownloadError)):
            raise DownloadError(
                name, _cause(err, next(iter(urls), ""), DOWNLOAD_TIMEOUT[1]), where
            ) from None
        raise
    write(
        f"data: {name} prepared under {os.path.join(where, name)} in "
        f"{time.perf_counter() - start:.0f} s"
    )
    return True
