"""The replay buffer file's 512-byte header: written with a second copy, read even when one copy is damaged.

Layout (little-endian), compatible with every format-1 reader (they read the first copy and check the CRC of
the whole block; the rest was space padding in the first files and still ends in spaces):
  u8[8] b"EDGEADRB" | u16 version | u16 header size | u32 n | n bytes of JSON (the description)
  b"HCRC" | u32 CRC32 of everything before it                         -- the first copy's own check
  b"HBAK" | the same 16 fixed bytes, with m | m bytes of compact JSON  -- the second copy (no prose)
        | u32 CRC32 of the copy from b"HBAK" on
  spaces | u32 CRC32 of the 508 bytes before it                         -- the format-1 check
One flipped bit damages at most one of the two copies, so the records behind the header stay readable.
Files written before the second copy existed have only the format-1 check.
"""

from __future__ import annotations

import json
import math
import struct
import zlib

from firmware_sim.codecs import get_codec
from firmware_sim.errors import UserError
from firmware_sim.sizes import MAX_SIZE

MAGIC = b"EDGEADRB"
FORMAT_VERSION = 1
FILE_HEADER_SIZE = 512
HEAD = struct.Struct("<8sHHI")
_CHECK, _BACKUP = b"HCRC", b"HBAK"
_ROOM = FILE_HEADER_SIZE - HEAD.size - 4
POLICY_NAMES = ("random", "reservoir", "coverage")
MAX_DIM = 65535  # one latent dimension (C, H or W)
MAX_BUDGET = MAX_SIZE  # 2^48 B: every size is bounded the same way when parsed, written and read
# log_start: where the append log begins (the compacted file's length); log_reserve: budget bytes kept free for
# it (firmware_sim.buffer_log). Both optional: files from before the log have neither.
_KEYS = ("shape", "codec", "budget_bytes", "seed", "policy", "log_start", "log_reserve")


class HeaderLost(UserError):
    """Neither copy of the header is intact: only a salvage with a known codec and shape can read on."""


def _crc(b: bytes) -> bytes:
    return struct.pack("<I", zlib.crc32(b))


def pack_header(meta: dict) -> bytes:
    """The 512-byte header for ``meta`` (shape, codec, quantisation, budget_bytes, seed, policy, log_start,
    log_reserve), validated as a reader will validate it: a header every reader refuses is never written."""
    try:
        full = json.dumps(meta, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        raise UserError(f"replay buffer header description cannot be written: {e}") from None
    validate_meta(full, "replay buffer header to write")
    if len(full) > _ROOM - 8:
        raise UserError(f"replay buffer header description is {len(full)} B, over the {_ROOM - 8} B available")
    first = HEAD.pack(MAGIC, FORMAT_VERSION, FILE_HEADER_SIZE, len(full)) + full
    body = first + _CHECK + _crc(first)
    compact = json.dumps({k: meta.get(k) for k in _KEYS}, separators=(",", ":"), allow_nan=False).encode()
    second = _BACKUP + HEAD.pack(MAGIC, FORMAT_VERSION, FILE_HEADER_SIZE, len(compact)) + compact
    if len(body) + len(second) + 4 <= _ROOM + HEAD.size:  # the copy is left out only if it cannot fit
        body += second + _crc(second)
    head = body.ljust(FILE_HEADER_SIZE - 4, b" ")
    return head + _crc(head)


def _fixed(block: bytes, where: str) -> int:
    """Checks the fixed fields of an intact copy; returns the JSON length."""
    magic, version, header_size, n = HEAD.unpack_from(block)
    if magic != MAGIC:
        raise UserError(f"{where} is not an edgead replay buffer (expected the magic bytes {MAGIC!r})")
    if version != FORMAT_VERSION:
        raise UserError(f"{where}: replay buffer format version {version} is not supported "
                        f"(this reader knows version {FORMAT_VERSION})")
    if header_size != FILE_HEADER_SIZE or n > _ROOM:
        raise UserError(f"{where}: replay buffer header is malformed (header size {header_size}, "
                        f"description {n} B)")
    return n


def _copies(data: bytes) -> tuple[bytes | None, bytes | None, bytes | None]:
    """(JSON of the whole-block-checked copy, of the self-checked first copy, of the second copy), each None
    unless its CRC holds."""
    whole = first = second = None
    head = data[:FILE_HEADER_SIZE]
    n = HEAD.unpack_from(head)[3] if len(head) >= HEAD.size else None
    if len(head) == FILE_HEADER_SIZE and head[-4:] == _crc(head[:-4]) and n is not None and n <= _ROOM:
        whole = head[:HEAD.size + n]
    if n is not None and n <= _ROOM - 8:
        end = HEAD.size + n
        if head[end:end + 4] == _CHECK and head[end + 4:end + 8] == _crc(head[:end]):
            first = head[:end]
    at = head.find(_BACKUP, HEAD.size)
    while at != -1 and second is None:
        if at + 4 + HEAD.size <= len(head):
            m = HEAD.unpack_from(head, at + 4)[3]
            end = at + 4 + HEAD.size + m
            if m <= _ROOM and end + 4 <= len(head) and head[end:end + 4] == _crc(head[at:end]):
                second = head[at + 4:end]
        at = head.find(_BACKUP, at + 1)
    return whole, first, second


def read_header(data: bytes, where: str, budget: int | None = None) -> tuple[dict, str | None]:
    """The checked description from a buffer file's bytes, and a note when it came from the second copy.

    Raises UserError for a file that is no buffer, another version or a description that is invalid, and
    HeaderLost when no copy is intact. ``budget`` (an explicit --budget) stands in for a budget field out of
    range (written before sizes were bounded): the result then says "budget_overridden".
    """
    whole, first, second = _copies(data)
    note = None
    block = whole or first
    if whole is None and first is not None:
        note = f"{where}: the header is partly damaged; its first copy is intact"
    if block is None and second is not None:
        block, note = second, f"{where}: the header's first copy is damaged; read its second copy"
    if block is None:
        if data[:8] != MAGIC:
            raise UserError(f"{where} is not an edgead replay buffer (expected the magic bytes {MAGIC!r})")
        if len(data) < FILE_HEADER_SIZE:
            raise UserError(f"{where}: replay buffer header is truncated ({len(data)} of {FILE_HEADER_SIZE} B)")
        raise HeaderLost(f"{where}: replay buffer header is corrupt (CRC mismatch) and has no intact second copy")
    n = _fixed(block, where)
    return validate_meta(block[HEAD.size:HEAD.size + n], where, budget), note


def _int(meta: dict, key: str, lo: int, hi: int, where: str) -> int:
    v = meta.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise UserError(f"{where}: header field {key!r} is {v!r}: expected an integer in {lo}..{hi}")
    return v


def validate_meta(raw: bytes, where: str, budget_override: int | None = None) -> dict:
    """The header's JSON -> {"shape": tuple | None, "codec", "budget_bytes", "seed", "policy"}, every field
    type- and range-checked (a UserError names the field)."""
    try:
        meta = json.loads(raw, parse_constant=lambda c: math.nan)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise UserError(f"{where}: replay buffer header description is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise UserError(f"{where}: replay buffer header description is a JSON {type(meta).__name__}; "
                        "expected an object with shape, codec, budget_bytes, seed and policy")
    codec = meta.get("codec")
    if not isinstance(codec, str):
        raise UserError(f"{where}: header field 'codec' is {codec!r}: expected a codec name such as int8-device")
    try:
        get_codec(codec)
    except UserError as e:
        raise UserError(f"{where}: header field 'codec': {e}") from None
    shape = meta.get("shape")
    if shape is not None:
        if not isinstance(shape, list) or len(shape) != 3 or any(
                isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= MAX_DIM for d in shape):
            raise UserError(f"{where}: header field 'shape' is {shape!r}: expected null or [C, H, W] with each "
                            f"dimension in 1..{MAX_DIM}")
        shape = tuple(shape)
    policy = meta.get("policy")
    if policy not in POLICY_NAMES:
        raise UserError(f"{where}: header field 'policy' is {policy!r}: expected one of {', '.join(POLICY_NAMES)}")
    try:
        budget, overridden = _int(meta, "budget_bytes", 0, MAX_BUDGET, where), False
    except UserError:
        if budget_override is None:
            raise
        budget, overridden = budget_override, True
    log = {k: None if meta.get(k) is None else _int(meta, k, lo, budget, where)
           for k, lo in (("log_start", FILE_HEADER_SIZE), ("log_reserve", 0))}
    return {"shape": shape, "codec": codec, "budget_bytes": budget, "seed": _int(meta, "seed", 0, 2**64 - 1, where),
            "policy": policy, **log, **({"budget_overridden": True} if overridden else {})}
