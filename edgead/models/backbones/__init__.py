"""Backbones by name: see registry.py."""
