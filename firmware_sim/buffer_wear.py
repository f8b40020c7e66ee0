"""How many bytes a device writes to its replay buffer's flash per 1,000 frames (`firmware_sim profile --budget`,
benchmarks/bench_buffer_writes.py).

A real buffer file in a temporary folder, fed ``frames`` int8 latents of the model's shape as `run --buffer
--keep all` feeds it (one task, every frame offered, a commit after each buffered frame and at the end). The
latents are random: what is written depends on the record size and on reservoir sampling's decisions, not on
the values. ``append=False`` is the behaviour before append mode: the whole file rewritten per buffered frame.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from firmware_sim.replay_buffer import RECORD_OVERHEAD, ReplayBuffer


def measure_writes(shape: tuple[int, ...], budget: int | str, frames: int = 1000, append: bool = True,
                   scale: float | np.ndarray = 0.05, zero_point: int | np.ndarray = 0, seed: int = 0,
                   folder: str | None = None) -> dict:
    """Bytes written to the buffer file while ``frames`` frames are offered (after creating the file)."""
    shape = tuple(int(d) for d in shape)
    buf = ReplayBuffer(budget, "int8-device", seed=seed, latent_shape=shape, append=append)
    buf.ensure_task(0)
    rng = np.random.default_rng(seed)
    buffered = 0
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        path = Path(tmp) / "buffer.edgeadrb"
        buf.commit(path)
        created = buf.bytes_written
        for i in range(frames):
            q = rng.integers(-128, 128, size=shape, dtype=np.int8)
            if buf.add_quantized(0, q, scale, zero_point, sample_id=i):
                buf.commit(path)
                buffered += 1
        buf.commit(path)  # the end of a run
        file_bytes = path.stat().st_size
    w = buf.write_stats()
    written = w["bytes_written"] - created
    record = RECORD_OVERHEAD + buf.codec.bytes_per_sample(shape)
    return {"write_mode": "append" if append else "rewrite", "frames": frames, "buffered": buffered,
            "records_kept": len(buf), "record_bytes": record, "budget_bytes": buf.budget_bytes,
            "file_bytes": file_bytes, "creation_bytes": created, "bytes_written": written,
            "bytes_per_1000_frames": round(written * 1000 / max(frames, 1)),
            "bytes_per_buffered_frame": round(written / max(buffered, 1), 1),
            "compactions": w["compactions"] - 1, "appends": w["appends"]}
