"""HTTP server: ``POST /segment`` (photo + expressions → mask), the web page, health and samples.

Built by :func:`create_app` around an already loaded segmenter, so tests drive it with
FastAPI's ``TestClient`` and ``refseg serve`` runs it under uvicorn. Robustness rules:

* the request body is limited (``Content-Length`` checked up front *and* bytes counted
  while reading, by :class:`_BodyLimit`) → 413;
* images with too many pixels are refused from their header, before decoding → 413;
* empty, too long or too many expressions, and undecodable images → 422;
* at most ``limits.queue_size`` requests are admitted at once (running + waiting);
  more get 503 with ``Retry-After`` instead of piling up memory;
* a request must send its whole body within ``limits.read_timeout_s`` → 408, so slow uploads
  free their slot;
* inference runs on one dedicated worker thread, never on the event loop, one request
  at a time (torch already uses every core for one forward pass); a request whose client has
  gone by its turn is skipped, and a client that disconnects mid-upload is one log line.

Every error is JSON ``{"error": <kind>, "detail": <one-line message>}``.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from refseg.data.images import load_image
from refseg.data.masks import encode_rle
from refseg.errors import ImageError, ImageTooLargeError, RefsegError, TextError
from refseg.io import png_bytes
from refseg.samples import SAMPLES, get_sample
from refseg.serve.limits import ServerLimits

log = logging.getLogger("refseg.serve")

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: Candidates listed per result in JSON answers (best first).
MAX_CANDIDATES = 5
#: Status logged for requests whose client went away (nginx's convention; nobody receives it).
_CLIENT_GONE = 499

_ERROR_KINDS = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    413: "too_large",
    422: "invalid_input",
    500: "internal_error",
    503: "busy",
}


class PredictionLike(Protocol):
    mask: np.ndarray
    prob: np.ndarray
    confidence: float
    empty: bool
    text: str
    tokens: list[str]


class SegmenterLike(Protocol):
    """What the server needs from :class:`refseg.api.Segmenter`."""

    threshold: float  # the model's default decision threshold

    def predict(
        self, image: Any, text: str | list[str], threshold: float | None = None, crf: bool = False
    ) -> PredictionLike | list[PredictionLike]: ...


def describe_model(segmenter: Any, runtime: str) -> dict[str, Any]:
    """What /health reports about a loaded :class:`refseg.api.Segmenter` (from its model card)."""
    card = segmenter.card
    return {
        "name": card.name,
        "checkpoint": card.provenance.path.name if card.provenance is not None else None,
        "runtime": runtime,
        "image_size": card.canvas,
        "threshold": card.threshold,
    }


class _InputError(HTTPException):
    """A request the server refuses, with its status code and one-line reason."""


def create_app(
    segmenter: SegmenterLike,
    limits: ServerLimits | None = None,
    model_info: dict[str, Any] | None = None,
) -> FastAPI:
    """The FastAPI app serving ``segmenter`` within ``limits``; ``model_info`` is shown by /health."""
    limits = limits or ServerLimits()
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refseg-inference")
    admitted = 0  # requests inside /segment; only touched on the event loop thread
    turn = asyncio.Lock()  # one request computes at a time; the others wait here, on the loop

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        worker.shutdown(wait=True, cancel_futures=True)

    app = FastAPI(
        title="refseg",
        summary="Referring image segmentation: type a phrase, get the mask.",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load their scripts from a CDN; the page must work offline
        redoc_url=None,
    )
    app.add_middleware(_BodyLimit, max_bytes=limits.max_upload_bytes, read_timeout_s=limits.read_timeout_s)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, _: ClientDisconnect) -> Response:
        log.info("client disconnected during its upload to %s", request.url.path)
        return Response(status_code=_CLIENT_GONE)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error while serving a request")
        return _error(500, "internal error (see the server log)")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """200 with the model description once the model is loaded."""
        return {
            "status": "ok",
            "model": model_info or {},
            "queue": {"in_flight": admitted, "capacity": limits.queue_size},
            "limits": asdict(limits),
        }

    @app.post("/segment")
    async def segment(request: Request) -> Response:
        """Multipart ``image`` (file) + ``text`` (repeatable) [+ ``threshold``, ``heatmap``].

        Returns the 0/255 PNG mask at the photo's size (several texts: their union), or, with
        ``Accept: application/json``, one result per expression (RLE mask, confidence, empty, area, the best
        candidates of instance-aware models, and the
        probability map as a base64 PNG when ``heatmap=true``).
        """
        nonlocal admitted
        if admitted >= limits.queue_size:
            raise _InputError(503, "server busy: too many requests in the queue, retry shortly",
                              headers={"Retry-After": "1"})
        admitted += 1
        try:
            form = await request.form(max_files=1, max_fields=limits.max_texts + 8)
            image_bytes, texts, threshold, want_heatmap = await _read_form(form, limits)
            as_json = "application/json" in request.headers.get("accept", "")
            async with turn:
                if await request.is_disconnected():  # abandoned while it waited: nobody would read the answer
                    log.info("client gone before its turn; request skipped")
                    return Response(status_code=_CLIENT_GONE)
                return await asyncio.get_running_loop().run_in_executor(
                    worker, _respond, segmenter, image_bytes, texts, threshold, want_heatmap, as_json, limits.max_pixels
                )
        finally:
            admitted -= 1

    @app.get("/samples")
    async def samples() -> list[dict[str, Any]]:
        """Names and suggested expressions of the bundled sample photos."""
        return [
            {"name": s.name, "expressions": list(s.expressions), "licence": s.licence} for s in SAMPLES
        ]

    @app.get("/samples/{name}")
    async def sample(name: str) -> Response:
        """A sample photo as PNG."""
        if name not in {s.name for s in SAMPLES}:
            raise _InputError(404, f"no sample photo named {name!r}; see GET /samples")
        return Response(_sample_png(name), media_type="image/png",
                        headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


class _BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with a JSON 413, and bodies
    that take longer than ``read_timeout_s`` to arrive with a JSON 408.

    A declared ``Content-Length`` over the limit is refused before any byte is read; bodies
    without one (chunked) are counted while the app reads them. Starlette's own body-limit
    middleware answers in plain text, which would break the JSON error contract.
    """

    def __init__(self, app, max_bytes: int, read_timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"upload is larger than the limit of {_megabytes(self.max_bytes)}"
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await _error(413, message)(scope, receive, send)
            return
        received = 0
        deadline = time.monotonic() + self.read_timeout_s
        body_done = timed_out = False

        async def counting_receive():
            nonlocal received, body_done, timed_out
            if body_done:  # e.g. waiting for a disconnect: no deadline
                return await receive()
            try:
                event = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                timed_out = True
                raise _InputError(408, f"upload not complete after {self.read_timeout_s:g} s") from None
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                body_done = not event.get("more_body", False)
                if received > self.max_bytes:
                    raise _InputError(413, message)
            return event

        async def lingering_send(message) -> None:
            if timed_out and message["type"] == "http.response.body" and not message.get("more_body", False):
                await send({**message, "more_body": True})  # the whole answer; the connection stays open
                await _drain(receive)
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app(scope, counting_receive, lingering_send)


async def _drain(receive, quiet_s: float = 0.5, longest_s: float = 3.0) -> None:
    """Read and drop what a client still uploads after its early answer, until it pauses for ``quiet_s``.

    A "lingering close" (RFC 9112 §9.6): closing a socket with unread bytes makes the kernel reset
    the connection, which can destroy the answer before the client reads it.
    """
    end = time.monotonic() + longest_s
    while (left := end - time.monotonic()) > 0:
        try:
            event = await asyncio.wait_for(receive(), min(quiet_s, left))
        except asyncio.TimeoutError:
            return
        if event["type"] != "http.request" or not event.get("more_body", False):
            return


async def _read_form(form, limits: ServerLimits) -> tuple[bytes, list[str], float | None, bool]:
    """Validate the multipart fields; raises 422 with a one-line reason."""
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        raise _InputError(422, "missing file field 'image': send multipart/form-data with 'image' and 'text'")
    texts = list(form.getlist("text"))
    if not texts:
        raise _InputError(422, "missing field 'text': give at least one expression")
    if any(not isinstance(t, str) for t in texts):
        raise _InputError(422, "field 'text' must be a string, not a file")
    if len(texts) > limits.max_texts:
        raise _InputError(422, f"too many expressions: {len(texts)} (limit {limits.max_texts})")
    for text in texts:
        if not text.strip():
            raise _InputError(422, "expression is empty")
        if len(text) > limits.max_text_chars:
            raise _InputError(
                422, f"expression is {len(text)} characters long (limit {limits.max_text_chars})"
            )
    raw_threshold = form.get("threshold")
    if raw_threshold is None or not str(raw_threshold).strip():
        threshold = None  # the model's own
    else:
        threshold = _parse_float(raw_threshold, "threshold")
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise _InputError(422, f"threshold must be between 0 and 1 (exclusive), got {threshold}")
    heatmap = str(form.get("heatmap", "false")).strip().lower() in ("1", "true", "yes", "on")
    image_bytes = await upload.read()
    if not image_bytes:
        raise _InputError(422, "image is empty (0 bytes)")
    return image_bytes, [t.strip() for t in texts], threshold, heatmap


def _respond(
    segmenter: SegmenterLike,
    image_bytes: bytes,
    texts: list[str],
    threshold: float | None,
    heatmap: bool,
    as_json: bool,
    max_pixels: int,
) -> Response:
    """Decode, segment and encode the answer (on the worker thread: all the CPU work of a request)."""
    start = time.perf_counter()
    threshold = segmenter.threshold if threshold is None else threshold
    try:
        rgb = load_image(image_bytes, max_pixels=max_pixels)
        predictions = segmenter.predict(rgb, texts, threshold=threshold)
    except ImageTooLargeError as exc:
        raise _InputError(413, str(exc)) from None
    except (ImageError, TextError) as exc:
        raise _InputError(422, str(exc)) from None
    except RefsegError as exc:
        raise _InputError(400, str(exc)) from None
    if not isinstance(predictions, Sequence):
        predictions = [predictions]
    if as_json:
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        return JSONResponse(_json_result(rgb.shape[:2], predictions, threshold, heatmap, elapsed_ms))
    union = np.logical_or.reduce([p.mask for p in predictions])
    return Response(
        png_bytes(union.astype(np.uint8) * 255),
        media_type="image/png",
        headers={"X-Refseg-Confidence": ",".join(f"{p.confidence:.4f}" for p in predictions)},
    )


def _json_result(
    size: tuple[int, int],
    predictions: list[PredictionLike],
    threshold: float,
    heatmap: bool,
    elapsed_ms: float,
) -> dict[str, Any]:
    height, width = size
    results = []
    for p in predictions:
        area = int(p.mask.sum())
        item = {
            "text": p.text,
            "tokens": list(p.tokens),
            "confidence": round(float(p.confidence), 6),
            "empty": bool(p.empty),
            "area": area,
            "area_fraction": round(area / float(height * width), 6),
            "rle": encode_rle(p.mask),
        }
        candidates = getattr(p, "candidates", [])
        if candidates:  # instance-aware models: what was chosen and the strongest alternatives
            item["candidates"] = [
                {"box": list(c.box), "label": c.label, "score": round(c.score, 4), "chosen": c.chosen}
                for c in candidates[:MAX_CANDIDATES]
            ]
        if heatmap:
            gray = np.clip(np.rint(p.prob * 255.0), 0, 255).astype(np.uint8)
            item["heatmap_png"] = base64.b64encode(png_bytes(gray)).decode("ascii")
        results.append(item)
    return {
        "width": width,
        "height": height,
        "threshold": threshold,
        "elapsed_ms": round(elapsed_ms, 1),
        "results": results,
    }


def _parse_float(value, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _InputError(422, f"{name} must be a number, got {str(value)[:40]!r}") from None


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    kind = _ERROR_KINDS.get(status, "error")
    return JSONResponse({"error": kind, "detail": detail}, status_code=status, headers=headers)


def _megabytes(n: int) -> str:
    return f"{n / (1024 * 1024):.3g} MB"


@lru_cache(maxsize=None)
def _sample_png(name: str) -> bytes:
    return png_bytes(get_sample(name).load())
