"""Pictures of predictions, drawn with Pillow only.

* :func:`overlay` — one or several masks tinted on the photo, outlined, with a legend;
* :func:`heatmap` — a probability map in colour, blended on the photo;
* :func:`boxes` — detector boxes, each with its caption (class and score);
* :func:`word_strip` — RMI's per-word progression (paper 3, Figs. 5-6): one tile per word;
* :func:`attention_chart` — STEP's word attention per step (paper 4, Fig. 4) as a heat grid.

Every function takes RGB uint8 [H, W, 3] arrays and returns a new RGB uint8 array
(save it with :func:`refseg.io.save_png`). Maps are at the photo's resolution.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

#: Distinct, colour-blind friendly tints (Okabe-Ito) for masks 1, 2, 3, ...
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
)

# Anchor colours of the probability colour map (0 → dark blue ... 1 → dark red).
_COLORMAP_ANCHORS = np.array(
    [(48, 18, 59), (40, 120, 230), (30, 200, 200), (120, 240, 80), (250, 200, 40), (230, 80, 20), (122, 4, 3)],
    dtype=np.float64,
)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def colorize(prob: np.ndarray) -> np.ndarray:
    """Probabilities [H, W] in [0, 1] → RGB uint8 [H, W, 3] (blue = 0, red = 1)."""
    p = np.clip(np.nan_to_num(np.asarray(prob, dtype=np.float64)), 0.0, 1.0)
    stops = np.linspace(0.0, 1.0, len(_COLORMAP_ANCHORS))
    rgb = [np.interp(p, stops, _COLORMAP_ANCHORS[:, c]) for c in range(3)]
    return np.stack(rgb, axis=-1).round().astype(np.uint8)


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of ``mask`` within ``width`` pixels of its border."""
    im = Image.fromarray(mask.astype(np.uint8) * 255)
    eroded = np.asarray(im.filter(ImageFilter.MinFilter(2 * width + 1))) > 127
    return mask & ~eroded


def _check_map(name: str, arr: np.ndarray, rgb: np.ndarray) -> None:
    if arr.shape[-2:] != rgb.shape[:2]:
        raise ValueError(f"{name} has size {arr.shape[-2:]}, the photo {rgb.shape[:2]}")


def overlay(
    rgb: np.ndarray,
    masks: np.ndarray | Sequence[np.ndarray],
    labels: Sequence[str] | None = None,
    alpha: float = 0.45,
    outline: int = 2,
) -> np.ndarray:
    """Tint each boolean mask [H, W] in its own colour, outline it, and add a legend of ``labels``."""
    masks = [masks] if isinstance(masks, np.ndarray) and masks.ndim == 2 else list(masks)
    out = rgb.astype(np.float32).copy()
    for i, mask in enumerate(masks):
        mask = np.asarray(mask, dtype=bool)
        _check_map(f"mask {i}", mask, rgb)
        color = np.array(PALETTE[i % len(PALETTE)], dtype=np.float32)
        out[mask] = (1.0 - alpha) * out[mask] + alpha * color
        if outline > 0:
            out[_outline(mask, outline)] = color
    image = Image.fromarray(out.round().astype(np.uint8))
    if labels:
        _draw_legend(image, [str(label) for label in labels])
    return np.asarray(image)


def _draw_legend(image: Image.Image, labels: list[str]) -> None:
    size = max(10, min(18, image.height // 24))
    font = _font(size)
    draw = ImageDraw.Draw(image, "RGBA")
    pad, swatch, line = 4, size, size + 4
    width = max(draw.textlength(label, font=font) for label in labels) + swatch + 3 * pad
    height = line * len(labels) + pad
    draw.rectangle((0, 0, width, height), fill=(0, 0, 0, 150))
    for i, label in enumerate(labels):
        top = pad + i * line
        draw.rectangle((pad, top, pad + swatch, top + swatch), fill=PALETTE[i % len(PALETTE)])
        draw.text((2 * pad + swatch, top), label, fill=(255, 255, 255), font=font)


def heatmap(rgb: np.ndarray, prob: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend the coloured probability map [H, W] onto the photo (``alpha`` = weight of the map)."""
    _check_map("prob", np.asarray(prob), rgb)
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colorize(prob).astype(np.float32)
    return blended.round().astype(np.uint8)


def boxes(rgb: np.ndarray, xyxy: np.ndarray, captions: Sequence[str], width: int = 2) -> np.ndarray:
    """Draw boxes [N, 4] (x1, y1, x2, y2 in pixels), each in its own colour with its caption on top."""
    image = Image.fromarray(np.ascontiguousarray(rgb))
    draw = ImageDraw.Draw(image, "RGBA")
    size = max(10, min(18, image.height // 30))
    font = _font(size)
    for i, (box, caption) in enumerate(zip(np.asarray(xyxy, dtype=np.float64), captions)):
        color = PALETTE[i % len(PALETTE)]
        x1, y1, x2, y2 = box
        draw.rectangle((x1, y1, x2, y2), outline=color, width=width)
        top = max(0.0, y1 - size - 4)
        draw.rectangle((x1, top, x1 + draw.textlength(caption, font=font) + 6, top + size + 4), fill=(*color, 200))
        draw.text((x1 + 3, top + 2), caption, fill=(0, 0, 0), font=font)
    return np.asarray(image)


def _captioned_tile(tile: np.ndarray, caption: str, font, caption_h: int) -> Image.Image:
    canvas = Image.new("RGB", (tile.shape[1], tile.shape[0] + caption_h), (255, 255, 255))
    canvas.paste(Image.fromarray(tile), (0, 0))
    draw = ImageDraw.Draw(canvas)
    text = caption
    while text and draw.textlength(text, font=font) > tile.shape[1] - 4:
        text = text[:-1]
    if text != caption:
        text = text[:-1] + "…" if len(text) > 1 else text
    x = (tile.shape[1] - draw.textlength(text, font=font)) / 2
    draw.text((x, tile.shape[0] + 2), text, fill=(0, 0, 0), font=font)
    return canvas


def word_strip(
    rgb: np.ndarray,
    word_maps: np.ndarray,
    words: Sequence[str],
    mask: np.ndarray | None = None,
    tile_height: int = 160,
) -> np.ndarray:
    """RMI per-word progression: the photo, then one heat map per word captioned with that word.

    ``word_maps`` [T, H, W] holds the probability after reading each word (paper 3, Fig. 5);
    only the first ``len(words)`` maps are drawn. An optional final ``mask`` adds an overlay tile.
    Any sequence of maps works the same way, e.g. STEP's maps per step captioned ``step 1..``.
    """
    word_maps = np.asarray(word_maps)
    if word_maps.ndim != 3:
        raise ValueError(f"word_maps must be [T, H, W], got shape {word_maps.shape}")
    _check_map("word_maps", word_maps, rgb)
    n = min(len(words), word_maps.shape[0])
    tile_w = max(1, round(rgb.shape[1] * tile_height / rgb.shape[0]))

    def shrink(arr: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(arr).resize((tile_w, tile_height), Image.BILINEAR))

    font = _font(max(10, tile_height // 12))
    caption_h = max(10, tile_height // 12) + 8
    tiles = [_captioned_tile(shrink(rgb), "image", font, caption_h)]
    tiles += [_captioned_tile(shrink(heatmap(rgb, word_maps[t])), words[t], font, caption_h) for t in range(n)]
    if mask is not None:
        tiles.append(_captioned_tile(shrink(overlay(rgb, np.asarray(mask, dtype=bool))), "mask", font, caption_h))
    gap = 4
    strip = Image.new("RGB", (len(tiles) * (tile_w + gap) - gap, tile_height + caption_h), (255, 255, 255))
    for i, tile in enumerate(tiles):
        strip.paste(tile, (i * (tile_w + gap), 0))
    return np.asarray(strip)


def attention_chart(weights: np.ndarray, words: Sequence[str], cell: int = 36) -> np.ndarray:
    """STEP word attention (paper 4, Fig. 4): rows are recurrent steps, columns are words.

    ``weights`` [steps, T]; each cell is coloured by its weight (scaled to the chart's maximum)
    and shows the value; words label the columns, ``t=1..`` the rows.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2:
        raise ValueError(f"word attention must be [steps, T], got shape {weights.shape}")
    n = min(len(words), weights.shape[1])
    weights = weights[:, :n]
    steps = weights.shape[0]
    font = _font(max(9, cell // 3))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    row_label_w = int(measure.textlength(f"t={steps}", font=font)) + 8
    col_label_h = int(max([measure.textlength(w, font=font) for w in words[:n]] + [cell // 2])) + 8
    width, height = row_label_w + n * cell + 1, steps * cell + col_label_h + 1
    chart = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(chart)
    top = float(weights.max()) if weights.size and weights.max() > 0 else 1.0
    colors = colorize(weights / top) if weights.size else np.zeros((steps, 0, 3), np.uint8)
    for r in range(steps):
        y = r * cell
        draw.text((2, y + cell / 3), f"t={r + 1}", fill=(0, 0, 0), font=font)
        for c in range(n):
            x = row_label_w + c * cell
            color = tuple(int(v) for v in colors[r, c])
            draw.rectangle((x, y, x + cell, y + cell), fill=color, outline=(255, 255, 255))
            ink = (0, 0, 0) if sum(color) > 380 else (255, 255, 255)
            draw.text((x + 3, y + cell / 3), f"{weights[r, c]:.2f}", fill=ink, font=font)
    for c in range(n):
        label = Image.new("RGB", (col_label_h, cell), (255, 255, 255))
        x = col_label_h - 4 - measure.textlength(words[c], font=font)  # text ends next to the grid
        ImageDraw.Draw(label).text((x, cell / 4), words[c], fill=(0, 0, 0), font=font)
        chart.paste(label.rotate(90, expand=True), (row_label_w + c * cell, steps * cell + 1))
    return np.asarray(chart)
