"""MTSSSegmenterLib: brain-tumour segmentation by a distilled multi-population student.

Pure Python on torch, MONAI, numpy and SimpleITK; no Slicer or Qt import here (only ``logic.py``
imports ``slicer``).
"""

from __future__ import annotations

__version__ = "0.1.0"
