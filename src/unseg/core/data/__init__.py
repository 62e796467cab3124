"""Data sources, preparation and the synthetic default set.

Importing the package registers the benchmark sources (each module calls `sources.register_source`), the way a
backbone module registers its entries.
"""

from unseg.core.data import cityscapes as _cityscapes  # noqa: F401  (registers cityscapes27)
from unseg.core.data import cocostuff as _cocostuff  # noqa: F401  (registers cocostuff27)
from unseg.core.data import potsdam as _potsdam  # noqa: F401  (registers potsdam3)
