"""Datasets: readers that yield :class:`RefSample`, synthesis, ShapeRef, transforms."""
from refseg.data.sample import MaskSource, RefSample, Region

__all__ = ["MaskSource", "RefSample", "Region"]
