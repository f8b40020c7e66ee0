"""firmware_sim: the on-device runtime of edgead.

Runs exported artifacts, keeps the int8 feature replay buffer and reports latency, RAM and flash.
It depends on numpy, pillow and an interpreter only; it never imports torch, tensorflow, edgead or
export, so this folder alone can be copied to a Raspberry Pi or a Coral board.
"""

__version__ = "0.1.0"
__all__ = ["Device", "Result", "__version__"]


def __getattr__(name: str):
    # `from firmware_sim import Device`, imported on first use so `python -m firmware_sim --help` stays light.
    if name in ("Device", "Result"):
        from firmware_sim import device

        return getattr(device, name)
    raise AttributeError(f"module 'firmware_sim' has no attribute {name!r}")
