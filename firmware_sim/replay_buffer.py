"""The latent replay buffer and its file: the one implementation shared by the host trainer and the device.

Budget. ``nbytes`` is the size of the file ``save`` writes: file header + every record (per-record header and
CRC included). The budget minus the file header (and, in append mode, the log's reserve: see
firmware_sim.buffer_log) is shared equally among the tasks seen; a task's share holds
its small task record (reservoir counter) and its samples. Within a task, samples are kept by reservoir
sampling (Vitter's algorithm R, seeded) over the stream offered for that task; when a new task arrives the
older tasks are shrunk to their new share by the selection policy: ``random`` (seeded; ``reservoir`` is an
alias, since a uniform subset of a uniform sample is still uniform) or ``coverage`` (k-center greedy on each
sample's channel means, so the kept samples spread over the latent space). ``fit_task`` selects a
whole task offline with the same policy. A task whose share is smaller than one record keeps no samples.

File layout, little-endian:
  header (512 B):  b"EDGEADRB" | u16 version | u16 header size | u32 n | n bytes of JSON (shape, codec spec,
                   quantisation description, budget, seed, policy), a second copy of it, space-padded |
                   u32 CRC32 of all before (see firmware_sim.buffer_header: one damaged copy is survivable)
  record:          b"RREC" | u32 record length | u8 kind | i64 task id | f64 unix time | i64 sample id |
                   body | u32 CRC32 of the record before it
  kind 1 (sample): body = EncodedLatent.to_bytes(), sample id = the caller's sample index
  kind 2 (task):   body = the task's (product's) name in UTF-8, empty if unnamed; "sample id" = samples offered
                   so far for this task (restores the reservoir). Readers that predate names skip the body.
  kind 3, 4:       a sample and a task state of a buffer in append mode (firmware_sim.buffer_log): a device
                   appends one record per buffered frame instead of rewriting the file.
The record marker lets ``load`` resynchronise after a damaged record and keep every intact one; the records
lost in a damaged stretch are counted from its length (task records and samples of the known record size).
Task ids are bounded (0..MAX_TASK_ID): a record with another id is refused, since each task takes a share.
A task's name (at most MAX_NAME_BYTES) lives in its task record and counts in its share, like the record.
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from firmware_sim.atomic import atomic_write
from firmware_sim.buffer_header import (  # FORMAT_VERSION and MAGIC are re-exported: the file's identity
    FILE_HEADER_SIZE,
    FORMAT_VERSION,  # noqa: F401
    MAGIC,  # noqa: F401
    HeaderLost,
    pack_header,
    read_header,
)
from firmware_sim.buffer_log import (
    KIND_LOG_SAMPLE,
    KIND_LOG_TASK,
    LOG,
    LOG_FIELDS,
    TASK_STATES,
    FileState,
    resolved,
    write_at,
)
from firmware_sim.codecs import Codec, EncodedLatent, get_codec
from firmware_sim.errors import UserError
from firmware_sim.sizes import format_size, parse_size

MAX_TASK_ID = 65535
MAX_NAME_BYTES = 64  # a product name, UTF-8: small next to a record, so naming a task hardly costs samples
_REC = struct.Struct("<4sIBqdq")
_SYNC = b"RREC"
RECORD_OVERHEAD = _REC.size + 4  # record header + CRC32: 37 bytes
TASK_RECORD_SIZE = RECORD_OVERHEAD
KIND_SAMPLE, KIND_TASK = 1, 2
KINDS = (KIND_SAMPLE, KIND_TASK, KIND_LOG_SAMPLE, KIND_LOG_TASK)
_TASK_KINDS = (KIND_TASK, KIND_LOG_TASK)  # records that hold no sample
POLICIES = ("random", "coverage")


@dataclass(frozen=True)
class Record:
    """One stored sample; ``data`` is the EncodedLatent's bytes exactly as written in the file."""

    task_id: int
    timestamp: float
    sample_id: int
    data: bytes

    @property
    def nbytes(self) -> int:
        return RECORD_OVERHEAD + len(self.data)

    @property
    def encoded(self) -> EncodedLatent:
        return EncodedLatent.from_bytes(self.data)

    def decode(self) -> np.ndarray:
        encoded = self.encoded
        return get_codec(encoded.codec).decode(encoded)


@dataclass
class LoadReport:
    path: str
    kept: int = 0  # samples in the loaded buffer
    dropped: int = 0  # sample records lost to damage (counted per record, see errors for where)
    evicted: int = 0  # intact samples removed because the budget could not hold them all
    errors: list[str] = field(default_factory=list)
    header_budget: int | None = None  # the budget the file's header states (None: header lost)
    file_bytes: int = 0  # bytes of samples and task records the file held, header included
    interrupted: int = 0  # interrupted writes found and ignored (never committed, so nothing was lost)


def _check_task_id(task_id: int) -> int:
    if isinstance(task_id, bool) or not 0 <= int(task_id) <= MAX_TASK_ID:
        raise UserError(f"task id {task_id!r}: expected an integer in 0..{MAX_TASK_ID}")
    return int(task_id)


def check_task_name(name: str) -> str:
    """A product name as a buffer stores it: 1..MAX_NAME_BYTES of UTF-8, no control characters."""
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"task name {name!r}: expected a non-empty string")
    if any(ord(c) < 32 or ord(c) == 127 for c in name) or len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise UserError(f"task name {name!r}: expected at most {MAX_NAME_BYTES} bytes of UTF-8 without control "
                        "characters")
    return name


def task_record_size(name: str | None) -> int:
    """Bytes of a task record carrying ``name`` (None: unnamed): what the task's share pays for it."""
    return TASK_RECORD_SIZE + (len(name.encode("utf-8")) if name else 0)


def _whole_records(length: int, sample: int, min_samples: int = 0) -> int | None:
    """Samples in ``length`` bytes of whole records (task records and ``sample``-byte samples), most samples
    first since tasks are few; None if no such split exists."""
    for s in range(length // sample, min_samples - 1, -1):
        if (length - s * sample) % TASK_RECORD_SIZE == 0:
            return s
    return None


def _lost_samples(data: bytes, start: int, end: int, sample: int | None) -> int:
    """How many sample records the damaged stretch ``data[start:end]`` held (``sample``: a sample record's size,
    None if the codec's size varies).

    A stretch that ends at an intact record held whole records, so its length decomposes. A stretch at the end
    of the file is walked record by record from its markers: a truncated record counts once, a task record
    not at all, and bytes without a marker that do not decompose into records (appended garbage) lose nothing.
    """
    if end < len(data):
        s = _whole_records(end - start, sample) if sample else None
        return s if s is not None else (max(1, round((end - start) / sample)) if sample else 1)
    lost, pos = 0, start
    while pos < end:
        head = data[pos:min(pos + _REC.size, end)]
        length = struct.unpack_from("<I", head, 4)[0] if len(head) >= 8 else 0
        task_like = TASK_RECORD_SIZE <= length <= TASK_RECORD_SIZE + MAX_NAME_BYTES + LOG_FIELDS
        kind = head[8] if len(head) > 8 else None
        # A marker whose kind and length fit no record (a stray b"RREC" followed by zeros) starts no record.
        fake = kind is not None and not (kind in KINDS or task_like or sample and length == sample)
        if head[:4] != _SYNC[:len(head[:4])] or fake:  # a damaged marker, or not records at all
            return lost + ((_whole_records(end - pos, sample, 1) or 0) if sample else 0)
        if kind is not None and (kind in _TASK_KINDS or kind not in KINDS and task_like):  # kind or length: task
            pos += length if task_like else TASK_RECORD_SIZE
            continue
        lost += 1
        pos = pos + sample if sample else end
    return lost


def _pack_record(kind: int, task_id: int, timestamp: float, sample_id: int, body: bytes) -> bytes:
    head = _REC.pack(_SYNC, RECORD_OVERHEAD + len(body), kind, task_id, timestamp, sample_id)
    return head + body + struct.pack("<I", zlib.crc32(body, zlib.crc32(head)))


def _parse_record(data: bytes, pos: int) -> tuple[tuple | None, str]:
    """((kind, task, time, sample id, body), "") for an intact record at ``pos``, else (None, why not)."""
    if len(data) - pos < RECORD_OVERHEAD:
        return None, f"truncated ({len(data) - pos} bytes left, a record needs at least {RECORD_OVERHEAD})"
    sync, length, kind, task_id, timestamp, sample_id = _REC.unpack_from(data, pos)
    if sync != _SYNC:
        return None, "no record marker"
    if length < RECORD_OVERHEAD:
        return None, f"bad length {length}"
    if pos + length > len(data):
        return None, f"truncated or bad length (record says {length} bytes, {len(data) - pos} left)"
    (crc,) = struct.unpack_from("<I", data, pos + length - 4)
    if zlib.crc32(data[pos:pos + length - 4]) != crc:
        return None, "CRC mismatch"
    if kind not in KINDS:
        return None, f"unknown record kind {kind}"
    return (kind, task_id, timestamp, sample_id, data[pos + _REC.size:pos + length - 4]), ""


def _descriptors(records: list[Record]) -> np.ndarray:
    """Channel means of each decoded latent, standardised per channel so no one channel's scale dominates.

    Cheap (one pass over the latent). Channel stds are left out: they follow per-image contrast and,
    once standardised, can outweigh the means, so k-center would chase contrast instead of content.
    """
    d = np.asarray([r.decode().reshape(r.encoded.shape[0], -1).mean(axis=1) for r in records], np.float64)
    return (d - d.mean(axis=0)) / (d.std(axis=0) + 1e-12)


def _k_center_order(desc: np.ndarray) -> list[int]:
    """Greedy k-center: start nearest the centroid, then always take the point farthest from those taken."""
    first = int(np.argmin(((desc - desc.mean(axis=0)) ** 2).sum(axis=1)))
    order, dist = [first], ((desc - desc[first]) ** 2).sum(axis=1)
    for _ in range(len(desc) - 1):
        nxt = int(np.argmax(dist))
        order.append(nxt)
        dist = np.minimum(dist, ((desc - desc[nxt]) ** 2).sum(axis=1))
    return order


class ReplayBuffer:
    """Encoded latents of past tasks within ``budget_bytes`` (an int or a size string such as "2.46MB")."""

    def __init__(self, budget_bytes: int | str, codec: str | Codec = "int8-channel", seed: int = 0,
                 policy: str = "random", latent_shape: tuple[int, ...] | None = None, append: bool = False,
                 log_reserve: int | None = None) -> None:
        """``append``: append mode (firmware_sim.buffer_log; needs a fixed-size codec and ``latent_shape``):
        ``commit`` then writes one record per change; ``log_reserve`` (bytes) is the reserve a file states."""
        self.budget_bytes = parse_size(budget_bytes)
        self.codec = codec if isinstance(codec, Codec) else get_codec(codec)
        policy = "random" if policy == "reservoir" else policy
        if policy not in POLICIES:
            raise UserError(f"replay policy {policy!r}: expected one of random (alias reservoir), coverage")
        self.seed, self.policy = int(seed), policy
        self.shape: tuple[int, ...] | None = None
        self._rng = np.random.default_rng(self.seed)
        self._tasks: dict[int, list[Record]] = {}
        self._offered: dict[int, int] = {}
        self._updated: dict[int, float] = {}
        self._names: dict[int, str] = {}
        # Append mode: what the file holds, the changes not yet written, and what writing cost.
        self._log_reserve: int | None = None if log_reserve is None else int(log_reserve)
        self._file: FileState | None = None
        self._pending: list[tuple[Record, Record | None]] = []
        self._dirty = True  # a change that only a compaction can write
        self.bytes_written, self.compactions, self.appends = 0, 0, 0
        if append and self._log_reserve is None:
            if latent_shape is None or not self.codec.fixed_size:
                raise UserError("append mode needs a fixed-size codec and the latent shape")
            slot = RECORD_OVERHEAD + LOG_FIELDS + self.codec.bytes_per_sample(tuple(latent_shape))
            self._log_reserve = slot + TASK_STATES * (TASK_RECORD_SIZE + LOG_FIELDS)
        if self.budget_bytes < FILE_HEADER_SIZE + TASK_RECORD_SIZE + RECORD_OVERHEAD:
            raise UserError(f"replay budget {format_size(self.budget_bytes)} is below the file header "
                            f"({FILE_HEADER_SIZE} B) plus one task record and one record header")
        if latent_shape is not None:
            self._set_shape(tuple(latent_shape))

    # -- accounting ----------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes of the file ``save`` writes; never above ``budget_bytes``."""
        return FILE_HEADER_SIZE + sum(self._task_bytes(t) for t in self._tasks)

    @property
    def append_mode(self) -> bool:
        """True if ``commit`` appends records (the file states a log reserve), else it rewrites the file."""
        return self._log_reserve is not None

    def _rec_bytes(self, record: Record) -> int:
        """What ``record`` takes in this buffer's file (a log record carries LOG_FIELDS more)."""
        return record.nbytes + (LOG_FIELDS if self._log_reserve is not None else 0)

    def _task_bytes(self, task_id: int) -> int:
        return task_record_size(self._names.get(task_id)) + sum(self._rec_bytes(r) for r in self._tasks[task_id])

    def quota(self) -> int:
        """Bytes each task may use (its task record included): the budget less the header and the append log's
        reserve, shared equally."""
        return (self.budget_bytes - FILE_HEADER_SIZE - (self._log_reserve or 0)) // max(len(self._tasks), 1)

    def _check_fits(self, record_nbytes: int) -> None:
        record_nbytes += LOG_FIELDS if self._log_reserve is not None else 0
        need = FILE_HEADER_SIZE + (self._log_reserve or 0) + TASK_RECORD_SIZE + record_nbytes
        if need > self.budget_bytes:
            raise UserError(f"replay budget {format_size(self.budget_bytes)} is too small for one record of codec "
                            f"{self.codec.spec} at shape {self.shape}: a record needs {record_nbytes:,} B, so the "
                            f"budget must be at least {need:,} B with the file header, task record and append "
                            "log reserve")

    def _set_shape(self, shape: tuple[int, ...]) -> None:
        if self.shape is None:
            self.shape = tuple(int(d) for d in shape)
            if self.codec.fixed_size:  # pca's size depends on the data: checked per record instead
                self._check_fits(RECORD_OVERHEAD + self.codec.bytes_per_sample(self.shape))
        elif tuple(shape) != self.shape:
            raise UserError(f"latent shape {tuple(shape)} differs from this buffer's {self.shape}")

    # -- adding ----------------------------------------------------------------------------------------
    def add(self, task_id: int, latent: np.ndarray | EncodedLatent, sample_id: int,
            timestamp: float | None = None) -> bool:
        """Offer one sample of ``task_id`` (float latent, or already encoded); True if it was stored."""
        encoded = latent if isinstance(latent, EncodedLatent) else self.codec.encode(latent)
        return self._offer(task_id, encoded, sample_id, timestamp)

    def add_quantized(self, task_id: int, q: np.ndarray, scale: float | np.ndarray, zero_point: int | np.ndarray,
                      sample_id: int, timestamp: float | None = None) -> bool:
        """Device path: store the trunk's int8 output as-is (codec int8-device)."""
        if self.codec.name != "int8-device":
            raise UserError(f"add_quantized needs a buffer with codec int8-device, this one uses {self.codec.spec}")
        return self._offer(task_id, self.codec.encode_quantized(q, scale, zero_point), sample_id, timestamp)

    def _make_record(self, task_id: int, encoded: EncodedLatent, sample_id: int,
                     timestamp: float | None) -> Record:
        if encoded.codec != self.codec.name:
            raise UserError(f"latent encoded with {encoded.codec!r} offered to a {self.codec.spec} buffer")
        self._set_shape(encoded.shape)
        record = Record(_check_task_id(task_id), time.time() if timestamp is None else float(timestamp), int(sample_id),
                        encoded.to_bytes())
        self._check_fits(record.nbytes)
        return record

    def _offer(self, task_id: int, encoded: EncodedLatent, sample_id: int, timestamp: float | None) -> bool:
        record = self._make_record(task_id, encoded, sample_id, timestamp)
        records = self._register(record.task_id)
        seen = self._offered[record.task_id]
        self._offered[record.task_id] = seen + 1
        self._updated[record.task_id] = record.timestamp
        room = self.quota() - self._task_bytes(record.task_id)
        if self._rec_bytes(record) <= room:  # algorithm R, filling phase
            records.append(record)
            self._note(record, None)
            return True
        j = int(self._rng.integers(0, seen + 1))  # keep the (seen+1)-th sample with probability len/(seen+1)
        if j >= len(records):
            return False
        victim, records[j] = records[j], record
        self._note(record, victim)
        # Only variable-size codecs (pca) can overflow here: evict other random records until it fits.
        while self._task_bytes(record.task_id) > self.quota():
            self._dirty = True
            others = [i for i, r in enumerate(records) if r is not record] or [records.index(record)]
            records.pop(others[int(self._rng.integers(0, len(others)))])
        return record in records

    def _note(self, record: Record, victim: Record | None) -> None:
        """Append mode: remember a change ``commit`` can write as one record (``record`` replacing ``victim``)."""
        if self._log_reserve is not None:
            self._pending.append((record, victim))

    def set_append(self, on: bool) -> bool:
        """Switch append mode (firmware_sim.buffer_log) on or off; True if the buffer is now in that mode.

        Off frees the log's reserve and 24 bytes per record (a host copy). On is refused (False) when the
        records would no longer fit their shares: turning it on never evicts a record.
        """
        if on == self.append_mode:
            return True
        if not on:
            self._log_reserve = None
        else:
            if self.shape is None or not self.codec.fixed_size:
                return False
            slot = RECORD_OVERHEAD + LOG_FIELDS + self.codec.bytes_per_sample(self.shape)
            self._log_reserve = slot + TASK_STATES * (TASK_RECORD_SIZE + LOG_FIELDS)
            if self.budget_bytes < FILE_HEADER_SIZE + self._log_reserve + TASK_RECORD_SIZE + slot or any(
                    self._task_bytes(t) > self.quota() for t in self._tasks):
                self._log_reserve = None
                return False
        self._file, self._pending, self._dirty = None, [], True
        return True

    def ensure_task(self, task_id: int) -> None:
        """Register ``task_id`` now if new (the shares change, as when its first sample arrives): a device does
        this when it attaches, so that its first buffered frame is an append, not a compaction."""
        self._register(_check_task_id(task_id))

    def _register(self, task_id: int) -> list[Record]:
        if task_id not in self._tasks:
            self._tasks[task_id], self._offered[task_id] = [], 0
            self._updated[task_id] = time.time()
            self._dirty = True  # the shares change: the file is compacted
            self._rebalance()
        return self._tasks[task_id]

    def _rebalance(self, policy: str | None = None) -> None:
        for task_id, records in self._tasks.items():
            if self._task_bytes(task_id) > self.quota():
                self._tasks[task_id] = self.select(records, self.quota() - self._task_overhead(task_id), policy)

    def _task_overhead(self, task_id: int) -> int:
        return task_record_size(self._names.get(task_id))

    def select(self, records: list[Record], capacity: int, policy: str | None = None) -> list[Record]:
        """The policy hook: which of ``records`` stay within ``capacity`` bytes (kept in their file order)."""
        policy = "random" if policy == "reservoir" else (policy or self.policy)
        if policy == "coverage" and len(records) > 1:
            order = _k_center_order(_descriptors(records))
        elif policy in POLICIES:
            order = [int(i) for i in self._rng.permutation(len(records))]
        else:
            raise UserError(f"replay policy {policy!r}: expected one of random (alias reservoir), coverage")
        kept, used = [], 0
        for i in order:
            if used + self._rec_bytes(records[i]) <= capacity:
                kept.append(i)
                used += self._rec_bytes(records[i])
        return [records[i] for i in sorted(kept)]

    def cap_records(self, per_task: int) -> None:
        """At most ``per_task`` records in every task, dropped at random: a sample-count memory (the thesis's
        `memory size`) on top of the byte budget, for codecs whose records are smaller than their upper bound."""
        for task_id, records in self._tasks.items():
            if len(records) > per_task:
                self._dirty = True
                keep = sorted(int(i) for i in self._rng.permutation(len(records))[:max(per_task, 0)])
                self._tasks[task_id] = [records[i] for i in keep]

    def reseed(self, *entropy: int) -> None:
        """Restart the selection's random stream from ``(seed, *entropy)``: a host that refits task i after a
        resume passes i, so its choice depends only on (seed, i), not on what ran before."""
        self._rng = np.random.default_rng([self.seed, *(int(e) for e in entropy)])

    def fit_task(self, task_id: int, latents: Iterable[np.ndarray | EncodedLatent],
                 sample_ids: Iterable[int] | None = None, policy: str | None = None) -> int:
        """Host batch path after a task: offer all its latents at once and keep a selection; returns kept count."""
        ids = iter(sample_ids) if sample_ids is not None else None
        new = []
        for i, x in enumerate(latents):
            encoded = x if isinstance(x, EncodedLatent) else self.codec.encode(x)
            new.append(self._make_record(task_id, encoded, next(ids) if ids is not None else i, None))
        records = self._register(int(task_id))
        self._dirty = True
        self._offered[int(task_id)] += len(new)
        self._updated[int(task_id)] = time.time()
        self._tasks[int(task_id)] = self.select(records + new, self.quota() - self._task_overhead(int(task_id)),
                                                policy)
        return len(self._tasks[int(task_id)])

    # -- reading ---------------------------------------------------------------------------------------
    @property
    def tasks(self) -> list[int]:
        return list(self._tasks)

    def task_names(self) -> dict[int, str]:
        """The product name of every named task: {task id: name}."""
        return dict(self._names)

    def task_id_of(self, name: str) -> int | None:
        """The task id that carries ``name``, None if no task does."""
        return next((t for t, n in self._names.items() if n == name), None)

    def name_task(self, task_id: int, name: str) -> None:
        """Give task ``task_id`` (registered now if new) the product name ``name``, stored in the file.

        Names are unique in a buffer and a task keeps its name: renaming is refused, since a name is how the
        host and the device agree which product a task is. The name counts in the task's share (see
        ``task_record_size``); if that share is full, one of its records makes room.
        """
        task_id, name = _check_task_id(task_id), check_task_name(name)
        if self._names.get(task_id) == name:
            return
        if task_id in self._names:
            raise UserError(f"task {task_id} is named {self._names[task_id]!r} in this buffer; it cannot become "
                            f"{name!r}")
        other = self.task_id_of(name)
        if other is not None:
            raise UserError(f"task name {name!r} already belongs to task {other} in this buffer")
        self._register(task_id)
        self._names[task_id] = name
        self._dirty = True
        self._rebalance()

    def __len__(self) -> int:
        return sum(len(r) for r in self._tasks.values())

    def records(self, task_id: int | None = None) -> Iterator[Record]:
        for tid, records in self._tasks.items():
            if task_id is None or tid == task_id:
                yield from records

    def sample(self, n: int, rng: np.random.Generator | int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``n`` distinct stored samples, decoded: (float32 (n, C, H, W), int64 task ids)."""
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        pool = list(self.records())
        chosen = rng.choice(len(pool), size=min(n, len(pool)), replace=False) if pool else []
        if len(chosen) == 0:
            return np.zeros((0, *(self.shape or ())), np.float32), np.zeros(0, np.int64)
        latents = np.stack([pool[i].decode() for i in chosen]).astype(np.float32, copy=False)
        return latents, np.array([pool[i].task_id for i in chosen], dtype=np.int64)

    def stats(self) -> dict:
        return {
            "codec": self.codec.spec, "policy": self.policy, "shape": list(self.shape) if self.shape else None,
            "budget_bytes": self.budget_bytes, "total_bytes": self.nbytes, "records": len(self),
            "file_header_bytes": FILE_HEADER_SIZE, "record_overhead_bytes": RECORD_OVERHEAD,
            "quota_bytes_per_task": self.quota(),
            "records_per_task": {t: len(r) for t, r in self._tasks.items()},
            "bytes_per_task": {t: self._task_bytes(t) for t in self._tasks},
            "offered_per_task": dict(self._offered),
            "task_names": dict(self._names),
            "write_mode": "append" if self.append_mode else "rewrite",
            "log_reserve_bytes": self._log_reserve or 0,
        }

    def write_stats(self) -> dict:
        """What this process wrote to the file so far: bytes, whole-file compactions, appended log records, and
        the file's size now (live records plus the spare slot and task-state records of the append log)."""
        return {"file_bytes": self._file.size if self._file is not None else self.nbytes,
                "bytes_written": self.bytes_written, "compactions": self.compactions, "appends": self.appends}

    # -- file ------------------------------------------------------------------------------------------
    def _read_name(self, task_id: int, body: bytes, report: LoadReport) -> None:
        """A task record's name, if it has a valid one; a bad or duplicate name is noted and left out."""
        if not body:
            return
        try:
            name = check_task_name(body.decode("utf-8"))
            other = self.task_id_of(name)
            if other is not None and other != task_id:
                raise UserError(f"also the name of task {other}")
        except (UnicodeDecodeError, UserError) as exc:
            report.errors.append(f"{report.path}: task {task_id}'s name left out: {exc}")
            return
        self._names[task_id] = name

    def _header(self, log_start: int) -> bytes:
        meta = {"shape": list(self.shape) if self.shape else None, "codec": self.codec.spec,
                "quantisation": self.codec.description, "budget_bytes": self.budget_bytes,
                "seed": self.seed, "policy": self.policy}
        if self._log_reserve is not None:
            meta.update(log_start=log_start, log_reserve=self._log_reserve)
        return pack_header(meta)

    def _pack_sample(self, r: Record, seq: int = 0, offered: int = 0, freed: tuple[int, int] | None = None) -> bytes:
        if self._log_reserve is None:
            return _pack_record(KIND_SAMPLE, r.task_id, r.timestamp, r.sample_id, r.data)
        off, fseq = freed or (0, 0)
        return _pack_record(KIND_LOG_SAMPLE, r.task_id, r.timestamp, r.sample_id,
                            LOG.pack(seq, offered, off, fseq) + r.data)

    def _layout(self) -> tuple[bytes, dict[int, tuple[int, int]]]:
        """The compacted file, and where each record is in it ({id(record): (offset, seq 0)})."""
        parts, where, pos = [], {}, FILE_HEADER_SIZE
        for task_id, records in self._tasks.items():
            name = self._names.get(task_id, "").encode("utf-8")
            parts.append(_pack_record(KIND_TASK, task_id, self._updated[task_id], self._offered[task_id], name))
            pos += len(parts[-1])
            for r in records:
                parts.append(self._pack_sample(r))
                where[id(r)] = (pos, 0)
                pos += len(parts[-1])
        data = self._header(pos) + b"".join(parts)
        assert len(data) == self.nbytes <= self.budget_bytes, "file size and byte accounting disagree"
        return data, where

    def to_bytes(self) -> bytes:
        """The compacted file: what ``save`` writes."""
        return self._layout()[0]

    def save(self, path: str | Path) -> Path:
        """Write the whole file atomically (a compaction): a reader or a reboot sees the previous file or this
        one. A symlinked path is written at its target, and the link stays."""
        path = resolved(path)
        data, where = self._layout()
        atomic_write(path, lambda f: f.write(data))
        self.bytes_written += len(data)
        self.compactions += 1
        self._pending, self._dirty = [], False
        self._file = (FileState(path, len(data), len(data), 1, None, where, dict(self._offered))
                      if self._log_reserve is not None else None)
        return path

    def commit(self, path: str | Path) -> Path:
        """Make the file at ``path`` hold this buffer, writing as little as it can (firmware_sim.buffer_log).

        In append mode each change since the last read or write (a frame filling a task, or replacing one
        record) is one log record at the spare slot or the end of the file, and each task whose count of
        offered frames changed gets a small task-state record; anything else, a file this buffer did not last
        read or write, or a write past the budget compacts it (``save``). A buffer not in append mode is saved.
        """
        path, fs = resolved(path), self._file
        if (self._log_reserve is None or fs is None or self._dirty or fs.path != path or not path.is_file()
                or path.stat().st_size != fs.size):
            return self.save(path)
        slot = RECORD_OVERHEAD + LOG_FIELDS + self.codec.bytes_per_sample(self.shape)
        writes, size, spare, seq, where, offered = [], fs.size, fs.spare, fs.next_seq, dict(fs.where), dict(fs.offered)
        for record, victim in self._pending:
            freed = None if victim is None else where.pop(id(victim), None)
            if victim is not None and freed is None:
                return self.save(path)
            offered[record.task_id] = self._offered[record.task_id]
            data = self._pack_sample(record, seq, offered[record.task_id], freed)
            pos = size if spare is None else spare
            size = max(size, pos + len(data))
            if len(data) != slot or size > self.budget_bytes:
                return self.save(path)
            writes.append((pos, data))
            where[id(record)], seq, spare = (pos, seq), seq + 1, None if freed is None else freed[0]
        for task_id, n in self._offered.items():
            if offered.get(task_id) != n:  # frames offered but not kept since the last write
                writes.append((size, _pack_record(KIND_LOG_TASK, task_id, self._updated[task_id], 0,
                                                  LOG.pack(seq, n, 0, 0))))
                size, seq, offered[task_id] = size + len(writes[-1][1]), seq + 1, n
                if size > self.budget_bytes:
                    return self.save(path)
        if writes:
            try:
                self.bytes_written += write_at(path, writes)
            except BaseException:
                self._dirty = True  # the file is in an unknown state: the next commit compacts it
                raise
            self.appends += len(writes)
        fs.size = size
        fs.next_seq, fs.spare, fs.where, fs.offered = seq, spare, where, offered
        self._pending = []
        return path

    def _entry(self, kind: int, body: bytes) -> tuple[tuple[int, int, int, int], bytes] | str:
        """A parsed record's (seq, offered, freed offset, freed seq) and latent bytes, or why it is unusable."""
        if kind in (KIND_LOG_SAMPLE, KIND_LOG_TASK):
            if len(body) < LOG_FIELDS or kind == KIND_LOG_TASK and len(body) != LOG_FIELDS:
                return f"log record of {len(body)} body bytes"
            fields, body = LOG.unpack_from(body), body[LOG_FIELDS:]
        else:
            fields = (0, 0, 0, 0)
        if kind in (KIND_SAMPLE, KIND_LOG_SAMPLE):
            try:
                encoded = EncodedLatent.from_bytes(body)
                if encoded.codec != self.codec.name:
                    raise UserError(f"codec {encoded.codec!r}, the file header says {self.codec.name!r}")
                if self.shape is not None and encoded.shape != self.shape:
                    raise UserError(f"shape {encoded.shape}, the file header says {self.shape}")
            except (UserError, ValueError) as exc:
                return f"bad sample: {exc}"
            self._set_shape(encoded.shape)
        return fields, bytes(body)

    @classmethod
    def load(cls, path: str | Path, budget_bytes: int | str | None = None,
             expect: tuple[str, tuple[int, ...]] | None = None) -> tuple[ReplayBuffer, LoadReport]:
        """Read a buffer file, keeping every intact record; damaged ones are dropped, counted and reported.

        ``budget_bytes`` overrides the file's budget; records that no longer fit are evicted and counted in
        ``LoadReport.evicted`` (callers that must not shrink a buffer check it). ``expect`` = (codec, latent
        shape), e.g. from the model: if both header copies are damaged the records are salvaged with these
        (the budget is then ``budget_bytes`` or the file's size). Any malformed input is a UserError.
        """
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UserError(f"cannot read replay buffer {path}: {exc.strerror or exc}") from exc
        report = LoadReport(str(path))
        try:
            meta, note = read_header(data, str(path), None if budget_bytes is None else parse_size(budget_bytes))
            report.header_budget = None if meta.get("budget_overridden") else meta["budget_bytes"]
            if meta.get("budget_overridden"):
                note = "; ".join(filter(None, [note, f"{path}: the header's budget is out of range; using the "
                                               f"budget given, {format_size(meta['budget_bytes'])}"]))
        except HeaderLost as exc:
            if expect is None:
                raise
            codec, shape = get_codec(expect[0]), tuple(int(d) for d in expect[1])
            least = FILE_HEADER_SIZE + TASK_RECORD_SIZE + RECORD_OVERHEAD + codec.bytes_per_sample(shape)
            meta = {"shape": shape, "codec": expect[0], "seed": 0, "policy": "random",
                    "budget_bytes": max(len(data), least)}
            note = (f"{exc}; salvaging records as codec {expect[0]}, shape {shape}"
                    + ("" if budget_bytes is not None else f", budget {format_size(meta['budget_bytes'])}"))
        if note:
            report.errors.append(note)
        buf = cls(meta["budget_bytes"] if budget_bytes is None else budget_bytes, meta["codec"],
                  meta["seed"], meta["policy"], latent_shape=meta["shape"], log_reserve=meta.get("log_reserve"))
        log_start = meta.get("log_start") or len(data)  # a file without a log: all of it is compacted
        sample = (RECORD_OVERHEAD + (LOG_FIELDS if buf.append_mode else 0) + buf.codec.bytes_per_sample(buf.shape)
                  if buf.codec.fixed_size and buf.shape is not None else None)
        entries, damaged = buf._scan(data)
        spare, where = buf._apply_entries(entries, report)
        sample = sample or (round(sum(buf._rec_bytes(r) for r in buf.records()) / len(buf)) if len(buf) else None)
        buf._count_damage(data, damaged, sample, spare if buf.append_mode else -1, log_start, report)
        # Damage of any kind, an override or a lost header: the next commit compacts the file (rare).
        clean = not note and budget_bytes is None and not damaged
        stated = {}
        for task_id, records in buf._tasks.items():  # a damaged task record: rebuild what can be known
            stated[task_id] = buf._offered.get(task_id)
            buf._offered[task_id] = max(buf._offered.get(task_id, 0), len(records))
            clean = clean and stated[task_id] == buf._offered[task_id]
            buf._updated.setdefault(task_id, max((r.timestamp for r in records), default=time.time()))
        report.file_bytes, before = buf.nbytes, len(buf)
        buf._rebalance()
        report.kept, report.evicted = len(buf), before - len(buf)
        if report.evicted:
            report.errors.append(f"{path}: {report.evicted} of {before} intact record(s) evicted: the budget "
                                 f"{format_size(buf.budget_bytes)} cannot hold the {format_size(report.file_bytes)} "
                                 "they fill")
        if buf.append_mode:
            next_seq = max((e[5][0] for e in entries), default=0) + 1
            buf._file = FileState(resolved(path), len(data), log_start, next_seq, spare, where,
                                  dict(buf._offered))
        buf._dirty = not clean or bool(report.evicted)  # a damaged or shrunk file is compacted at the next commit
        # Continue with fresh but reproducible randomness: replaying the seed's draws after a reboot
        # would correlate the decisions before and after it.
        buf.reseed(sum(buf._offered.values()))
        return buf, report

    def _scan(self, data: bytes) -> tuple[list[tuple], list[tuple]]:
        """Every record after the header: (intact entries for ``_apply_entries``, damaged stretches (ordinal,
        start, end, why, samples known lost or None to count from the bytes))."""
        pos, ordinal, damaged, entries = FILE_HEADER_SIZE, 0, [], []
        while pos < len(data):
            parsed, why = _parse_record(data, pos)
            if parsed is not None and not 0 <= parsed[1] <= MAX_TASK_ID:
                why = f"task id {parsed[1]} outside 0..{MAX_TASK_ID}"
            elif parsed is not None and parsed[0] == KIND_TASK and parsed[3] < 0:
                why = f"task record says {parsed[3]} samples offered"
            elif parsed is not None:
                checked = self._entry(parsed[0], parsed[4])
                why = checked if isinstance(checked, str) else ""
            if parsed is not None and why:  # an intact record (its CRC holds) refused for what it says: one
                end = pos + RECORD_OVERHEAD + len(parsed[4])
                damaged.append((ordinal, pos, end, why, int(parsed[0] in (KIND_SAMPLE, KIND_LOG_SAMPLE))))
                pos = end
            elif parsed is None:
                start, pos = pos, data.find(_SYNC, pos + 1)
                while pos != -1 and _parse_record(data, pos)[0] is None:  # a marker inside damaged bytes
                    pos = data.find(_SYNC, pos + 1)
                pos = len(data) if pos == -1 else pos
                damaged.append((ordinal, start, pos, why, None))
            else:
                entries.append((pos, parsed[0], parsed[1], parsed[2], parsed[3], *checked))
                pos += RECORD_OVERHEAD + len(parsed[4])
            ordinal += 1
        return entries, damaged

    @staticmethod
    def _count_damage(data: bytes, damaged: list[tuple], sample: int | None, spare: int | None, log_start: int,
                      report: LoadReport) -> None:
        """Report each damaged stretch: an interrupted write of the append log (at the spare slot, or a partial
        record at the end past ``log_start``) loses nothing; any other counts the sample records it held."""
        for ordinal, start, end, why, known in damaged:
            if known is None and sample and (start == spare and end - start == sample or
                                             start >= log_start and end == len(data) and end - start < sample):
                # The newest write, interrupted before its record was whole: never committed, nothing lost.
                report.interrupted += 1
                report.errors.append(f"{report.path}: bytes {start}-{end}: an interrupted write (never committed, "
                                     "so nothing that was buffered is lost), ignored")
                continue
            lost = known if known is not None else _lost_samples(data, start, end, sample)
            report.dropped += lost
            what = (f"{lost} sample record(s) dropped" if lost or end < len(data) or data[start:start + 4] == _SYNC
                    else "ignored: bytes after the last record that are not a record")
            report.errors.append(f"{report.path}: record #{ordinal} (bytes {start}-{end}) {what}: {why}")

    def _apply_entries(self, entries: list[tuple], report: LoadReport) -> tuple[int | None, dict]:
        """Fill the buffer from the intact records (offset, kind, task, time, sample id, (seq, offered,
        freed offset, freed seq), latent): live samples in file order, each task's newest state. Returns the
        spare slot (freed by the newest log sample) and where each record is."""
        dead = {(e[5][2], e[5][3]) for e in entries if e[1] == KIND_LOG_SAMPLE and e[5][2]}
        newest: dict[int, tuple[int, int, float]] = {}  # task -> (seq, offered, time) of its newest log record
        where, spare, top = {}, None, 0
        for offset, kind, task_id, timestamp, sample_id, (seq, offered, freed, _), body in entries:
            self._tasks.setdefault(task_id, [])
            if kind == KIND_TASK:
                self._offered[task_id], self._updated[task_id] = sample_id, timestamp
                self._read_name(task_id, body, report)
            elif seq > 0 and seq > newest.get(task_id, (0,))[0]:
                newest[task_id] = (seq, offered, timestamp)
            if kind == KIND_LOG_SAMPLE and seq > top:
                top, spare = seq, freed or None
            if kind in (KIND_SAMPLE, KIND_LOG_SAMPLE) and (offset, seq) not in dead:
                record = Record(task_id, timestamp, sample_id, body)
                self._tasks[task_id].append(record)
                where[id(record)] = (offset, seq)
        for task_id, (_, offered, timestamp) in newest.items():
            self._offered[task_id], self._updated[task_id] = offered, timestamp
        return spare, where
