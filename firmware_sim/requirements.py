"""requirements-device.txt of a bundle: numpy and pillow, plus the pip lines of each format's runtime.

Each runtime in firmware_sim.runtimes names its own lines, so a new runtime brings its requirement with it.
With the Edge TPU the LiteRT lines give way to the Coral pin (firmware_sim.runtimes.litert.EDGETPU_REQUIREMENTS):
libedgetpu, a Debian package outside pip, works only with a TensorFlow Lite close to the one it was built
against (docs/device-runtimes.md says which libedgetpu to install beside it).
"""

from __future__ import annotations

from firmware_sim import __version__
from firmware_sim.runtimes import TFLiteRunner, runtime_for
from firmware_sim.runtimes.litert import EDGETPU_REQUIREMENTS

# Python 3.10+ (firmware_sim's own floor). numpy < 2 up to Python 3.11 so that tflite-runtime 2.14 (built
# against numpy 1; the Coral pin) stays usable; there is no numpy < 2 wheel for Python 3.13 (Trixie).
BASE = ('numpy>=1.23.2,<2; python_version < "3.12"', 'numpy>=1.23.2; python_version >= "3.12"', "pillow>=9.0")


def device_requirements(formats: list[str], edgetpu: bool = False) -> str:
    """The text of requirements-device.txt for a bundle holding ``formats`` (with Edge TPU graphs if
    ``edgetpu``)."""
    lines = list(BASE)
    for fmt in formats:
        rt = runtime_for(fmt)
        lines += EDGETPU_REQUIREMENTS if edgetpu and rt is TFLiteRunner else rt.requirements
    head = (f"# edgead device runtime (firmware_sim {__version__}) for the formats {', '.join(formats)}"
            f"{' with the Coral Edge TPU' if edgetpu else ''}.\n"
            "# pip install -r requirements-device.txt   (Python 3.10 or newer; see README.md for each OS)\n")
    if edgetpu:
        head += ("# Edge TPU: tflite-runtime 2.14.0 (Python 3.11, Raspberry Pi OS Bookworm) pairs with a libedgetpu1-std "
                 "built\n# against TensorFlow 2.15/2.16 (Debian package, not pip; README.md says which).\n")
    return head + "\n".join(dict.fromkeys(lines)) + "\n"
