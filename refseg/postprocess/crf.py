"""Fully connected CRF refinement of a foreground probability map (optional extra ``crf``).

RMI (paper 3 §4.2) reports results after DenseCRF (Krähenbühl & Koltun 2011) with the
hyper-parameters of DeepLab; STEP (paper 4 Table 2) compares with those refined results but
reports its own without a CRF. The CRF has two labels
(background, target); the unary is ``-log`` of the network probability and the pairwise
terms are a Gaussian smoothness kernel and a bilateral appearance kernel, so the refined
mask snaps to colour edges of the photo. Uses :mod:`pydensecrf` from ``pydensecrf2``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from refseg.extras import require
from refseg.limits import CRF_MAX_PIXELS


@dataclass(frozen=True)
class CRFParams:
    """DenseCRF weights, kernel widths (pixels / RGB levels) and mean-field iterations; defaults
    follow DeepLab-v2 (the settings RMI uses)."""

    iterations: int = 10
    smooth_weight: float = 3.0  # Gaussian kernel weight (w2)
    smooth_sxy: float = 1.0  # Gaussian kernel width in pixels (sigma_gamma)
    appearance_weight: float = 4.0  # bilateral kernel weight (w1)
    appearance_sxy: float = 67.0  # bilateral spatial width in pixels (sigma_alpha)
    appearance_srgb: float = 3.0  # bilateral colour width in RGB levels (sigma_beta)
    clip: float = 1e-5  # probabilities are clipped to [clip, 1 - clip] before -log


def densecrf_module():
    """The ``pydensecrf.densecrf`` module (:class:`MissingExtraError` when the ``crf`` extra is missing)."""
    require("crf", "DenseCRF refinement")
    import pydensecrf.densecrf as dcrf

    return dcrf


def refine(
    prob: np.ndarray, rgb: np.ndarray, params: CRFParams = CRFParams(), max_pixels: int = CRF_MAX_PIXELS
) -> np.ndarray:
    """Refine a target probability map [H, W] with the photo ``rgb`` uint8 [H, W, 3].

    Returns the CRF marginal of the target label, float32 [H, W] in [0, 1]; threshold it
    at 0.5 for the refined mask. Memory and time grow with the pixel count (about 250 bytes a
    pixel), so a photo over ``max_pixels`` is refined on a copy downscaled to ``max_pixels``
    (the bilateral kernel's width scaled alike) and the marginal is resized back to H x W.
    """
    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim != 2 or rgb.shape[:2] != prob.shape or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"prob [H, W] and rgb [H, W, 3] must agree, got {prob.shape} and {rgb.shape}")
    h, w = prob.shape
    if h * w <= max_pixels:
        return _dense_crf(prob, rgb, params)
    scale = math.sqrt(max_pixels / (h * w))
    small = (max(1, int(w * scale)), max(1, int(h * scale)))  # PIL order: width, height
    marginal = _dense_crf(
        np.asarray(Image.fromarray(prob).resize(small, Image.BILINEAR)),
        np.asarray(Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).resize(small, Image.BILINEAR)),
        replace(params, appearance_sxy=params.appearance_sxy * scale),  # the 1-pixel smoothness kernel stays 1 pixel
    )
    return np.asarray(Image.fromarray(marginal).resize((w, h), Image.BILINEAR), dtype=np.float32)


def _dense_crf(prob: np.ndarray, rgb: np.ndarray, params: CRFParams) -> np.ndarray:
    dcrf = densecrf_module()
    h, w = prob.shape
    p = np.clip(prob, params.clip, 1.0 - params.clip)
    unary = -np.log(np.stack([1.0 - p, p]).reshape(2, -1))
    crf = dcrf.DenseCRF2D(w, h, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.smooth_sxy, compat=params.smooth_weight)
    crf.addPairwiseBilateral(
        sxy=params.appearance_sxy,
        srgb=params.appearance_srgb,
        rgbim=np.array(rgb, dtype=np.uint8, order="C"),  # a writable copy: pydensecrf rejects read-only buffers
        compat=params.appearance_weight,
    )
    marginals = np.asarray(crf.inference(params.iterations), dtype=np.float32).reshape(2, h, w)
    return marginals[1]
