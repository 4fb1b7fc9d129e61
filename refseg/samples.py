"""Licence-clean sample photos (bundled with scikit-image), expressions to try on them, and the demo gallery.

Used by ``refseg demo`` (:func:`write_gallery`), the server's sample picker, the latency benchmark and the docs. Every photo is public domain or
CC0 (see each entry's ``licence``); nothing is downloaded.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from refseg.api import Segmenter


@dataclass(frozen=True)
class SamplePhoto:
    """A photo shipped with scikit-image and referring expressions that fit it."""

    name: str
    loader: str  # attribute of ``skimage.data``
    expressions: tuple[str, ...]
    licence: str

    def load(self) -> np.ndarray:
        """RGB uint8 [H, W, 3]."""
        import skimage.data

        return np.ascontiguousarray(getattr(skimage.data, self.loader)())


SAMPLES: tuple[SamplePhoto, ...] = (
    SamplePhoto(
        "astronaut",
        "astronaut",
        ("the woman in the orange suit", "the flag on the left", "the black helmet", "the space shuttle model"),
        "public domain (NASA)",
    ),
    SamplePhoto(
        "coffee",
        "coffee",
        ("the coffee cup", "the spoon", "the saucer", "the wooden table"),
        "CC0 (Rachel Michetti)",
    ),
    SamplePhoto(
        "chelsea",
        "chelsea",
        ("the cat", "the cat's face", "the background on the left"),
        "CC0 (Stefan van der Walt)",
    ),
    SamplePhoto(
        "rocket",
        "rocket",
        ("the white rocket in the middle", "the tower on the far left", "the dark blue sky", "the lights at the bottom"),
        "public domain (SpaceX)",
    ),
)


def get_sample(name: str) -> SamplePhoto:
    """The sample photo called ``name`` (KeyError lists the available ones)."""
    for sample in SAMPLES:
        if sample.name == name:
            return sample
    raise KeyError(f"no sample photo {name!r}; available: {', '.join(s.name for s in SAMPLES)}")


def write_gallery(segmenter: "Segmenter", out: str | Path, crf: bool = False) -> Path:
    """Run ``segmenter`` on every sample photo and write overlays + ``index.html`` into ``out``.

    Per photo: one overlay of all its expressions (legend in colour order), and per expression
    an overlay, a heat map and — when the model provides them — the RMI per-word strip, the
    STEP word-attention chart and STEP's per-step strip. Returns the path of ``index.html``.
    """
    from refseg import viz
    from refseg.errors import OutputError
    from refseg.io import atomic_write_text, save_png

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"demo output is not a folder: {out}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out}: {exc.strerror or exc}") from None
    sections = []
    for sample in SAMPLES:
        rgb = sample.load()
        predictions = segmenter.predict(rgb, list(sample.expressions), crf=crf)
        all_name = f"{sample.name}.png"
        save_png(out / all_name, viz.overlay(rgb, [p.mask for p in predictions], labels=sample.expressions))
        figures = [_figure(all_name, "all expressions")]
        for k, pred in enumerate(predictions):
            stem = f"{sample.name}-{k}"
            save_png(out / f"{stem}.overlay.png", viz.overlay(rgb, pred.mask, labels=[pred.text]))
            save_png(out / f"{stem}.heatmap.png", viz.heatmap(rgb, pred.prob))
            found = "nothing found" if pred.empty else f"area {100 * pred.area:.1f}%"
            caption = f"“{pred.text}” — {found}, confidence {pred.confidence:.2f}"
            figures += [_figure(f"{stem}.overlay.png", caption), _figure(f"{stem}.heatmap.png", "probability")]
            extras = pred.extras
            if "word_maps" in extras:
                save_png(out / f"{stem}.words.png", viz.word_strip(rgb, extras["word_maps"], pred.tokens, pred.mask))
                figures.append(_figure(f"{stem}.words.png", "after each word", wide=True))
            if "word_attention" in extras:
                save_png(out / f"{stem}.attention.png", viz.attention_chart(extras["word_attention"], pred.tokens))
                figures.append(_figure(f"{stem}.attention.png", "word attention per step"))
            if "step_maps" in extras:
                steps = [f"step {t + 1}" for t in range(len(extras["step_maps"]))]
                save_png(out / f"{stem}.steps.png", viz.word_strip(rgb, extras["step_maps"], steps, pred.mask))
                figures.append(_figure(f"{stem}.steps.png", "after each recurrent step", wide=True))
        sections.append(
            f"<section><h2>{html.escape(sample.name)} <small>{html.escape(sample.licence)}</small></h2>\n"
            + "\n".join(figures)
            + "\n</section>"
        )
    model = html.escape(str(segmenter.card.meta.get("name") or segmenter.card.name))
    page = _PAGE.format(model=model, sections="\n".join(sections))
    return atomic_write_text(out / "index.html", page)


def _figure(src: str, caption: str, wide: bool = False) -> str:
    cls = ' class="wide"' if wide else ""
    return (
        f'<figure{cls}><img src="{html.escape(src)}" alt="{html.escape(caption)}" loading="lazy">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>refseg demo</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }}
section {{ display: flex; flex-wrap: wrap; gap: .75rem; align-items: flex-start; margin-bottom: 2rem; }}
h2 {{ flex-basis: 100%; margin: 0; }} small {{ font-weight: normal; color: #666; }}
figure {{ margin: 0; max-width: 320px; }} figure.wide {{ max-width: 100%; }}
img {{ max-width: 100%; border: 1px solid #ddd; }} figcaption {{ font-size: .85rem; }}
</style></head>
<body><h1>refseg demo</h1><p>Model: <code>{model}</code>. Photos from scikit-image (public domain / CC0).</p>
{sections}
</body></html>
"""
