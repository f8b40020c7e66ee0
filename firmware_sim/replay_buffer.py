"""The latent replay buffer and its file: the one implementation shared by the host trainer and the device.

Budget. ``nbytes`` is the size of the file ``save`` writes: file header + every record (per-record header and
CRC included). The budget minus the file header is shared equally among the tasks seen; a task's share holds
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
        if head[:4] != _SYNC[:len(head[:4])]:  # no record starts here: a damaged marker, or not records at all
            return lost + ((_whole_records(end - pos, sample, 1) or 0) if sample else 0)
        length = struct.unpack_from("<I", head, 4)[0] if len(head) >= 8 else 0
        named = TASK_RECORD_SIZE <= length <= TASK_RECORD_SIZE + MAX_NAME_BYTES
        if len(head) > 8 and (head[8] == KIND_TASK or head[8] != KIND_SAMPLE and named):  # kind or length: task
            pos += length if named else TASK_RECORD_SIZE
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
    if kind not in (KIND_SAMPLE, KIND_TASK):
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
                 policy: str = "random", latent_shape: tuple[int, ...] | None = None) -> None:
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

    def _task_bytes(self, task_id: int) -> int:
        return task_record_size(self._names.get(task_id)) + sum(r.nbytes for r in self._tasks[task_id])

    def quota(self) -> int:
        """Bytes each task may use (its task record included): the budget less the header, shared equally."""
        return (self.budget_bytes - FILE_HEADER_SIZE) // max(len(self._tasks), 1)

    def _check_fits(self, record_nbytes: int) -> None:
        need = FILE_HEADER_SIZE + TASK_RECORD_SIZE + record_nbytes
        if need > self.budget_bytes:
            raise UserError(f"replay budget {format_size(self.budget_bytes)} is too small for one record of codec "
                            f"{self.codec.spec} at shape {self.shape}: a record needs {record_nbytes:,} B, so the "
                            f"budget must be at least {need:,} B with the file header and task record")

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
        if record.nbytes <= room:  # algorithm R, filling phase
            records.append(record)
            return True
        j = int(self._rng.integers(0, seen + 1))  # keep the (seen+1)-th sample with probability len/(seen+1)
        if j >= len(records):
            return False
        records[j] = record
        # Only variable-size codecs (pca) can overflow here: evict other random records until it fits.
        while self._task_bytes(record.task_id) > self.quota():
            others = [i for i, r in enumerate(records) if r is not record] or [records.index(record)]
            records.pop(others[int(self._rng.integers(0, len(others)))])
        return record in records

    def _register(self, task_id: int) -> list[Record]:
        if task_id not in self._tasks:
            self._tasks[task_id], self._offered[task_id] = [], 0
            self._updated[task_id] = time.time()
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
            if used + records[i].nbytes <= capacity:
                kept.append(i)
                used += records[i].nbytes
        return [records[i] for i in sorted(kept)]

    def cap_records(self, per_task: int) -> None:
        """At most ``per_task`` records in every task, dropped at random: a sample-count memory (the thesis's
        `memory size`) on top of the byte budget, for codecs whose records are smaller than their upper bound."""
        for task_id, records in self._tasks.items():
            if len(records) > per_task:
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
        }

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

    def _header(self) -> bytes:
        return pack_header({"shape": list(self.shape) if self.shape else None, "codec": self.codec.spec,
                            "quantisation": self.codec.description, "budget_bytes": self.budget_bytes,
                            "seed": self.seed, "policy": self.policy})

    def to_bytes(self) -> bytes:
        parts = [self._header()]
        for task_id, records in self._tasks.items():
            name = self._names.get(task_id, "").encode("utf-8")
            parts.append(_pack_record(KIND_TASK, task_id, self._updated[task_id], self._offered[task_id], name))
            parts += [_pack_record(KIND_SAMPLE, r.task_id, r.timestamp, r.sample_id, r.data) for r in records]
        data = b"".join(parts)
        assert len(data) == self.nbytes <= self.budget_bytes, "file size and byte accounting disagree"
        return data

    def save(self, path: str | Path) -> Path:
        """Write the whole file atomically: a reader or a reboot sees the previous file or this one."""
        data = self.to_bytes()
        return atomic_write(path, lambda f: f.write(data))

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
            meta, note = read_header(data, str(path))
            report.header_budget = meta["budget_bytes"]
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
                  meta["seed"], meta["policy"], latent_shape=meta["shape"])
        sample = (RECORD_OVERHEAD + buf.codec.bytes_per_sample(buf.shape)
                  if buf.codec.fixed_size and buf.shape is not None else None)
        pos, ordinal, damaged = FILE_HEADER_SIZE, 0, []
        while pos < len(data):
            parsed, why = _parse_record(data, pos)
            if parsed is not None and not 0 <= parsed[1] <= MAX_TASK_ID:
                parsed, why = None, f"task id {parsed[1]} outside 0..{MAX_TASK_ID}"
            elif parsed is not None and parsed[0] == KIND_TASK and parsed[3] < 0:
                parsed, why = None, f"task record says {parsed[3]} samples offered"
            elif parsed is not None and parsed[0] == KIND_SAMPLE:
                try:
                    encoded = EncodedLatent.from_bytes(parsed[4])
                    if encoded.codec != buf.codec.name:
                        raise UserError(f"codec {encoded.codec!r}, the file header says {buf.codec.name!r}")
                    if buf.shape is not None and encoded.shape != buf.shape:
                        raise UserError(f"shape {encoded.shape}, the file header says {buf.shape}")
                except (UserError, ValueError) as exc:
                    parsed, why = None, f"bad sample: {exc}"
                else:
                    buf._set_shape(encoded.shape)
            if parsed is None:
                start, pos = pos, data.find(_SYNC, pos + 1)
                while pos != -1 and _parse_record(data, pos)[0] is None:  # a marker inside damaged bytes
                    pos = data.find(_SYNC, pos + 1)
                pos = len(data) if pos == -1 else pos
                damaged.append((ordinal, start, pos, why))
            else:
                kind, task_id, timestamp, sample_id, body = parsed
                buf._tasks.setdefault(task_id, [])
                if kind == KIND_TASK:
                    buf._offered[task_id], buf._updated[task_id] = sample_id, timestamp
                    buf._read_name(task_id, body, report)
                else:
                    buf._tasks[task_id].append(Record(task_id, timestamp, sample_id, bytes(body)))
                pos += RECORD_OVERHEAD + len(body)
            ordinal += 1
        kept = [r.nbytes for r in buf.records()]
        sample = sample or (round(sum(kept) / len(kept)) if kept else None)  # variable-size codecs: the mean
        for ordinal, start, end, why in damaged:
            lost = _lost_samples(data, start, end, sample)
            report.dropped += lost
            what = (f"{lost} sample record(s) dropped" if lost or end < len(data) or data[start:start + 4] == _SYNC
                    else "ignored: bytes after the last record that are not a record")
            report.errors.append(f"{path}: record #{ordinal} (bytes {start}-{end}) {what}: {why}")
        for task_id, records in buf._tasks.items():  # a damaged task record: rebuild what can be known
            buf._offered[task_id] = max(buf._offered.get(task_id, 0), len(records))
            buf._updated.setdefault(task_id, max((r.timestamp for r in records), default=time.time()))
        report.file_bytes, before = buf.nbytes, len(buf)
        buf._rebalance()
        report.kept, report.evicted = len(buf), before - len(buf)
        if report.evicted:
            report.errors.append(f"{path}: {report.evicted} of {before} intact record(s) evicted: the budget "
                                 f"{format_size(buf.budget_bytes)} cannot hold the {format_size(report.file_bytes)} "
                                 "they fill")
        # Continue with fresh but reproducible randomness: replaying the seed's draws after a reboot
        # would correlate the decisions before and after it.
        buf.reseed(sum(buf._offered.values()))
        return buf, report
