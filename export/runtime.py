"""The host's view of the device runtime: one implementation, in firmware_sim.runtime (re-exported here)."""

from firmware_sim.runtime import (  # noqa: F401
    SIGNATURE,
    DeployedDetector,
    OnnxRunner,
    Prediction,
    TFLiteRunner,
    dequantize,
    image_feed,
    quantize,
    same_quantization,
    tflite_module,
)
