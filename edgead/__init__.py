"""edgead: memory-efficient continual visual anomaly detection for edge devices (host side).

`from edgead import Detector` is the Python API (edgead.api); it is imported on first use, so `import edgead`
stays light (no torch) and the CLI starts fast.
"""

__version__ = "0.1.0"
__all__ = ["Detector", "Predictions", "__version__"]


def __getattr__(name: str):
    if name in ("Detector", "Predictions"):
        from edgead import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgead' has no attribute {name!r}")
