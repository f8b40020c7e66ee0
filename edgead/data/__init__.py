"""Data: MVTec AD layout, generic folders, Magnetic-Tile conversion, synthetic data, task streams."""

from edgead.data.layout import CategoryIndex, Entry, scan_folder, scan_mvtec
from edgead.data.loading import LoadedSplit, load_entries
from edgead.data.stream import MVTEC_THESIS_ORDER, Task, TaskStream, split_validation

__all__ = [
    "MVTEC_THESIS_ORDER",
    "CategoryIndex",
    "Entry",
    "LoadedSplit",
    "Task",
    "TaskStream",
    "load_entries",
    "scan_folder",
    "scan_mvtec",
    "split_validation",
]
