"""MTSSSegmenterLib: brain-tumour segmentation by a distilled multi-population student.

Pure Python on torch, MONAI, numpy and SimpleITK; no Slicer or Qt import here (only ``logic.py``
imports ``slicer``).
"""

from __future__ import annotations

from .version import __version__

__all__ = ["__version__"]
