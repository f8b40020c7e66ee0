"""Backbones and detectors (STFPM, PaSTe)."""
