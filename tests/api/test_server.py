"""HTTP server: masks at the original size as PNG or JSON (RLE + heat map), the web page, samples,
health, the request limits (413/422) with JSON errors, the bounded queue (503) and inference
off the event loop."""
from __future__ import annotations

import base64
import io
import threading
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from refseg.api import Segmenter
from refseg.data.masks import decode_mask
from refseg.serve.app import ServerLimits, create_app, describe_model
from tests.fixtures.live_server import live_server
from tests.fixtures.photos import red_square_photo
from tests.fixtures.red_model import save_red_model

H, W = 75, 98  # odd, non-square: the mask must come back at exactly this size
BOX = (10, 21, 52, 70)


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_red_model(tmp_path_factory.mktemp("model"), image_size=96)


@pytest.fixture(scope="module")
def client(checkpoint: Path) -> TestClient:
    segmenter = Segmenter.from_pretrained(checkpoint)
    limits = ServerLimits(max_upload_bytes=300_000, max_pixels=1_000_000, max_text_chars=40, max_texts=3)
    with TestClient(create_app(segmenter, limits, describe_model(segmenter, "torch"))) as c:
        yield c


@pytest.fixture(scope="module")
def photo() -> tuple[bytes, np.ndarray]:
    rgb, mask = red_square_photo(H, W, BOX)
    return _png(rgb), mask


def _post(client: TestClient, image: bytes, texts, json: bool = False, **fields):
    headers = {"Accept": "application/json"} if json else {}
    return client.post(
        "/segment", files={"image": ("photo.png", image, "image/png")},
        data={"text": texts, **fields}, headers=headers,
    )


def test_png_mask_at_original_size(client: TestClient, photo) -> None:
    image, truth = photo
    r = _post(client, image, "the red square")
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(r.content)) as im:
        assert im.mode == "L" and im.size == (W, H)
        mask = np.asarray(im)
    assert set(np.unique(mask)) <= {0, 255}
    assert _iou(mask > 0, truth) > 0.9


def test_json_has_rle_confidence_area_and_heatmap_per_expression(client: TestClient, photo) -> None:
    image, truth = photo
    r = _post(client, image, ["the red square", "the red thing"], json=True, heatmap="true")
    assert r.status_code == 200
    body = r.json()
    assert (body["width"], body["height"]) == (W, H)
    assert [res["text"] for res in body["results"]] == ["the red square", "the red thing"]
    for res in body["results"]:
        mask = decode_mask(res["rle"], (H, W))
        assert mask.shape == (H, W) and _iou(mask, truth) > 0.9
        assert res["area"] == int(mask.sum())
        assert res["area_fraction"] == pytest.approx(mask.mean(), abs=1e-5)
        assert 0.5 <= res["confidence"] <= 1.0 and res["empty"] is False
        with Image.open(io.BytesIO(base64.b64decode(res["heatmap_png"]))) as heat:
            prob = np.asarray(heat) / 255.0
        assert prob.shape == (H, W)
        assert prob[mask].mean() > 0.5 > prob[~mask].mean()


def test_json_says_when_nothing_is_found(client: TestClient) -> None:
    blue = _png(np.full((H, W, 3), (0, 0, 200), np.uint8))
    result = _post(client, blue, "the red square", json=True).json()["results"][0]
    assert result["empty"] is True and result["area"] == 0 and result["confidence"] < 0.5


def test_json_without_heatmap_omits_it(client: TestClient, photo) -> None:
    r = _post(client, photo[0], "the red square", json=True)
    assert "heatmap_png" not in r.json()["results"][0]


def test_threshold_field_moves_the_mask(client: TestClient, photo) -> None:
    low = _post(client, photo[0], "red", json=True, threshold="0.05").json()["results"][0]["area"]
    high = _post(client, photo[0], "red", json=True, threshold="0.95").json()["results"][0]["area"]
    assert low > high


@dataclass
class _Pred:
    mask: np.ndarray
    prob: np.ndarray
    confidence: float
    text: str
    tokens: list[str]

    @property
    def empty(self) -> bool:
        return not self.mask.any()


class _HalvesSegmenter:
    """'left' selects the left half, anything else the right half; can block until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()

    threshold = 0.5

    def predict(self, image, text, threshold=None, crf=False):
        self.entered.set()
        assert self.release.wait(timeout=30)
        h, w = image.shape[:2]
        out = []
        for t in text:
            mask = np.zeros((h, w), dtype=bool)
            if "left" in t:
                mask[:, : w // 2] = True
            else:
                mask[:, w // 2 :] = True
            out.append(_Pred(mask, mask.astype(np.float32), 1.0, t, t.split()))
        return out


def test_an_omitted_threshold_is_the_models_own(photo) -> None:
    segmenter = _HalvesSegmenter()
    segmenter.threshold = 0.3
    seen = []
    predict = segmenter.predict
    segmenter.predict = lambda image, text, threshold=None, crf=False: seen.append(threshold) or predict(image, text)
    client = TestClient(create_app(segmenter))
    assert _post(client, photo[0], "left", json=True).json()["threshold"] == 0.3
    assert _post(client, photo[0], "left", json=True, threshold="").json()["threshold"] == 0.3
    assert _post(client, photo[0], "left", json=True, threshold="0.7").json()["threshold"] == 0.7
    assert seen == [0.3, 0.3, 0.7]


def test_several_texts_as_png_give_the_union(photo) -> None:
    client = TestClient(create_app(_HalvesSegmenter()))
    one = np.asarray(Image.open(io.BytesIO(_post(client, photo[0], "left").content)))
    both = np.asarray(Image.open(io.BytesIO(_post(client, photo[0], ["left", "right"]).content)))
    assert 0.4 < (one > 0).mean() < 0.6
    assert (both > 0).all()


@pytest.mark.parametrize(
    "texts, reason",
    [
        ("   ", "empty"),
        ("x" * 41, "41 characters"),
        (["a", "b", "c", "d"], "too many expressions"),
    ],
)
def test_bad_text_is_422_with_a_json_reason(client: TestClient, photo, texts, reason) -> None:
    r = _post(client, photo[0], texts)
    assert r.status_code == 422
    assert r.json()["error"] == "invalid_input" and reason in r.json()["detail"]


@pytest.mark.parametrize(
    "files, data, reason",
    [
        ({"image": ("x.png", b"this is not an image", "image/png")}, {"text": "a"}, "not a readable image"),
        ({"image": ("x.png", b"", "image/png")}, {"text": "a"}, "empty"),
        (None, {"text": "a"}, "missing file field 'image'"),
        ({"image": ("x.png", b"\x89PNG", "image/png")}, {}, "missing field 'text'"),
        ({"image": ("x.png", b"\x89PNG", "image/png")}, {"text": "a", "threshold": "high"}, "threshold"),
        ({"image": ("x.png", b"\x89PNG", "image/png")}, {"text": "a", "threshold": "1.5"}, "threshold"),
    ],
)
def test_bad_request_fields_are_422(client: TestClient, files, data, reason) -> None:
    r = client.post("/segment", files=files, data=data)
    assert r.status_code == 422, r.text
    assert reason in r.json()["detail"]


def test_upload_over_the_byte_limit_is_413_by_content_length(client: TestClient) -> None:
    r = client.post("/segment", files={"image": ("x.png", b"\0" * 400_000, "image/png")}, data={"text": "a"})
    assert r.status_code == 413
    assert r.json() == {"error": "too_large", "detail": "upload is larger than the limit of 0.286 MB"}


def test_upload_over_the_byte_limit_is_413_while_reading_without_content_length(client: TestClient) -> None:
    def chunks():  # a streamed body: no Content-Length header, the server must count
        for _ in range(40):
            yield b"\0" * 10_000

    r = client.post("/segment", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and r.json()["error"] == "too_large"


def test_too_many_pixels_is_413_before_decoding(client: TestClient) -> None:
    big = _png(np.zeros((1100, 1000, 3), dtype=np.uint8))  # 1.1 Mpx, few bytes
    assert len(big) < 300_000
    r = _post(client, big, "anything")
    assert r.status_code == 413
    assert "1000x1100 pixels" in r.json()["detail"]


def test_health_page_and_samples(client: TestClient) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok"
    assert health["model"]["name"] == "_test_red" and health["model"]["checkpoint"] == "red.safetensors"
    assert health["model"]["threshold"] == 0.5
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in page.text and client.get(asset).status_code == 200
    samples = client.get("/samples").json()
    assert samples and all(s["expressions"] for s in samples)
    photo = client.get(f"/samples/{samples[0]['name']}")
    assert photo.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(photo.content)).size[0] > 100
    missing = client.get("/samples/no-such-photo")
    assert missing.status_code == 404 and "no sample photo" in missing.json()["detail"]


def test_nothing_the_server_sends_loads_from_the_network(client: TestClient) -> None:
    assert client.get("/docs").status_code == 404  # Swagger UI would load its scripts from a CDN
    assert client.get("/openapi.json").json()["paths"]["/segment"]
    for asset in ("/", "/static/app.js", "/static/style.css"):
        text = client.get(asset).text
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, asset


def test_full_queue_answers_503_and_inference_leaves_the_event_loop_free(photo) -> None:
    segmenter = _HalvesSegmenter()
    segmenter.release.clear()
    app = create_app(segmenter, ServerLimits(queue_size=1))
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        results: list[httpx.Response] = []
        first = threading.Thread(
            target=lambda: results.append(
                http.post("/segment", files={"image": ("p.png", photo[0])}, data={"text": "left"})
            )
        )
        first.start()
        assert segmenter.entered.wait(timeout=20)  # the first request is inside predict()
        assert http.get("/health").json()["queue"]["in_flight"] == 1  # the event loop still answers
        busy = http.post("/segment", files={"image": ("p.png", photo[0])}, data={"text": "right"})
        assert busy.status_code == 503 and busy.json()["error"] == "busy"
        assert busy.headers["retry-after"] == "1"
        segmenter.release.set()
        first.join(timeout=20)
        assert results and results[0].status_code == 200
        assert http.get("/health").json()["queue"]["in_flight"] == 0
