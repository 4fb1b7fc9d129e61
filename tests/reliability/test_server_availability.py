"""Class 5 of issue 24: hostile or vanished clients cannot take the server's capacity.

These run uvicorn on a real socket (a TestClient cannot trickle bytes or vanish): slow uploads
get 408 and free their slot, requests whose client left before their turn are not computed, and
a client that disconnects mid-upload is one INFO log line, not an internal error.
"""
from __future__ import annotations

import json
import logging
import select
import socket
import threading
import time
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from refseg.errors import ConfigError
from refseg.serve.app import create_app
from refseg.serve.limits import ServerLimits
from tests.fixtures.live_server import live_server
from tests.fixtures.photos import encode, left_red

PHOTO = encode(Image.fromarray(left_red(16, 16)), "PNG")
BOUNDARY = "refseg-test-boundary"


class _Prediction:
    def __init__(self, text: str, shape: tuple[int, int]) -> None:
        self.text, self.tokens, self.confidence, self.empty = text, text.split(), 0.9, False
        self.mask = np.ones(shape, dtype=bool)
        self.prob = np.full(shape, 0.9, dtype=np.float32)


class CountingSegmenter:
    """Takes ``seconds`` per call and counts its calls; ``busy`` is set while one runs."""

    threshold = 0.5

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls = 0
        self.busy = threading.Event()

    def predict(self, image, text, threshold=None, crf=False):
        self.calls += 1
        self.busy.set()
        time.sleep(self.seconds)
        self.busy.clear()
        texts = [text] if isinstance(text, str) else text
        return [_Prediction(t, image.shape[:2]) for t in texts]


def _body(texts=("the red half",)) -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode() + PHOTO + b"\r\n"
    ]
    parts += [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="text"\r\n\r\n{t}\r\n'.encode() for t in texts]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def _head(length: int) -> bytes:
    return (
        f"POST /segment HTTP/1.1\r\nHost: test\r\nAccept: application/json\r\nConnection: close\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def _answer(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _request(port: int) -> tuple[int, bytes]:
    body = _body()
    sock = _connect(port)
    sock.sendall(_head(len(body)) + body)
    return _answer(sock)


def _in_flight(port: int) -> int:
    sock = _connect(port)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
    return json.loads(_answer(sock)[1])["queue"]["in_flight"]


def _wait_for(condition, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


# --------------------------------------------------------------------------- slow uploads


def _headers_only(sock: socket.socket, body: bytes, stop: threading.Event) -> None:
    stop.wait()


def _one_byte_at_a_time(sock: socket.socket, body: bytes, stop: threading.Event) -> None:
    for byte in body:
        answered, _, _ = select.select([sock], [], [], 0.3)
        if answered or stop.is_set():  # like curl, stop uploading once the server has answered
            return
        sock.sendall(bytes([byte]))


def _all_but_the_last_byte(sock: socket.socket, body: bytes, stop: threading.Event) -> None:
    sock.sendall(body[:-1])
    stop.wait()


TRICKLES = {"headers_only": _headers_only, "one_byte_every_300_ms": _one_byte_at_a_time,
            "all_but_the_last_byte": _all_but_the_last_byte}


@pytest.mark.parametrize("name", sorted(TRICKLES))
def test_slow_uploads_get_408_and_free_their_slots(name) -> None:
    segmenter = CountingSegmenter(0.0)
    app = create_app(segmenter, ServerLimits(queue_size=3, read_timeout_s=1.5))
    body = _body()
    stop = threading.Event()
    with live_server(app) as url:
        port = urlsplit(url).port
        slow = [_connect(port) for _ in range(3)]
        for sock in slow:
            sock.sendall(_head(len(body)))
            threading.Thread(target=TRICKLES[name], args=(sock, body, stop), daemon=True).start()
        _wait_for(lambda: _in_flight(port) == 3)
        assert _request(port)[0] == 503  # the slow uploads hold every slot ...
        answers = [_answer(sock) for sock in slow]  # ... until their deadline
        stop.set()
        for status, payload in answers:
            assert status == 408 and json.loads(payload)["error"] == "timeout", payload
        status, payload = _request(port)
        assert status == 200, payload
        assert segmenter.calls == 1


# --------------------------------------------------------------------------- abandoned requests


def test_requests_whose_client_left_are_not_computed() -> None:
    segmenter = CountingSegmenter(1.0)
    app = create_app(segmenter, ServerLimits(queue_size=16))
    body = _body()
    with live_server(app) as url:
        port = urlsplit(url).port
        first = threading.Thread(target=_request, args=(port,), daemon=True)
        first.start()
        _wait_for(segmenter.busy.is_set)
        abandoned = [_connect(port) for _ in range(5)]
        for sock in abandoned:
            sock.sendall(_head(len(body)) + body)
        _wait_for(lambda: _in_flight(port) == 6)  # all five wait behind the first
        for sock in abandoned:
            sock.close()
        start = time.monotonic()
        status, payload = _request(port)
        waited = time.monotonic() - start
        first.join(10)
    assert status == 200, payload
    assert segmenter.calls == 2  # the first and the last: none of the five abandoned ones
    assert waited < 5 * segmenter.seconds  # computing the five as well would take at least 6 s


# --------------------------------------------------------------------------- disconnect mid-upload


@pytest.mark.parametrize("sent", [0.0, 0.5, 0.99])
def test_disconnect_mid_upload_is_one_info_line_not_an_error(caplog, sent) -> None:
    segmenter = CountingSegmenter(0.0)
    body = _body()
    with caplog.at_level(logging.INFO), live_server(create_app(segmenter)) as url:
        port = urlsplit(url).port
        sock = _connect(port)
        sock.sendall(_head(len(body)) + body[: int(sent * len(body))])
        _wait_for(lambda: _in_flight(port) == 1)
        sock.close()
        _wait_for(lambda: _in_flight(port) == 0)
        assert _request(port)[0] == 200  # the server goes on serving
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not problems, [r.getMessage() for r in problems]
    assert not any(r.exc_info for r in caplog.records)
    gone = [r for r in caplog.records if "disconnected during its upload" in r.getMessage()]
    assert len(gone) == 1
    assert segmenter.calls == 1


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf")])
def test_read_timeout_must_be_a_positive_finite_number(value) -> None:
    with pytest.raises(ConfigError, match="read_timeout_s"):
        ServerLimits(read_timeout_s=value)
