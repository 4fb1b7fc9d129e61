"""Datasets: readers that yield :class:`RefSample`, synthesis, ShapeRef, transforms."""
from refseg.data.sample import MaskSource, RefSample, Region, SampleMeta

__all__ = ["MaskSource", "RefSample", "Region", "SampleMeta"]
