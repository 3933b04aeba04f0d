"""MTSSTrainingLib: synthetic cohorts, population teachers and multi-teacher distillation.

Depends on MTSSSegmenterLib (networks, bundles, metrics), never the reverse. No Slicer or Qt import
here (only ``logic.py`` imports ``slicer``).
"""

from __future__ import annotations

__version__ = "0.1.0"
