"""edgead: memory-efficient continual visual anomaly detection for edge devices (host side)."""

__version__ = "0.1.0"
