"""The byte path of a drop: AES-256-CBC decrypt, gunzip, split lines, validate rows.

Small steps over bounded, reused buffers; none of them knows about Azure. Memory stays bounded
whatever the drop size: a decrypt buffer of one input chunk, an inflate output capped at
``INFLATE_CAP`` per call, and at most one partial line carried between chunks.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
from collections.abc import Iterable, Iterator

import simdjson
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from isal import isal_zlib

from .errors import BadRow, DropError, ImplausibleData, IntegrityError, RowTooLarge
from .jsondepth import json_depth

BLOCK = 16
#: Upper bound of plaintext produced by one inflate call (keeps memory flat on highly compressible data).
INFLATE_CAP = 256 * 1024
#: Compressed bytes given to one inflate call (bounds the unconsumed-tail copies zlib makes).
INFLATE_SLICE = 32 * 1024
_GZIP_WBITS = 31
_InflateError: type[Exception] = isal_zlib.error  # type: ignore[assignment]  # stub says instance
_BOM = b"\xef\xbb\xbf"
#: glibc ``mallopt`` parameters (malloc.h) and the values :func:`keep_heap_warm` sets.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
HEAP_TRIM_THRESHOLD = 8 * 1024 * 1024
HEAP_MMAP_THRESHOLD = 1024 * 1024
#: Lines at least this long on average are split by ``find`` rather than ``bytes.split`` (see
#: :func:`_split_long_lines`; the two cost the same at about 1 KB a line on the benchmark machine).
LONG_LINE_BYTES = 1024
#: The largest row any message can carry (the packer's cap on a message's uncompressed body, see
#: ``shared/messages.py``). A line is failed as soon as it grows past it: it could never be sent.
MAX_ROW_BYTES = 1024 * 1024
#: Blank (white-space only) plaintext a data file may hold: a real drop has a blank line at most,
#: and a file of little else is a decompression bomb (gigabytes of blank lines from a few MB).
MAX_BLANK_BYTES = 1024 * 1024
#: simdjson's own nesting limit; a deeper row is refused (the standard library would recurse on it).
MAX_ROW_DEPTH = 1024


@functools.cache
def keep_heap_warm() -> bool:
    """Stop glibc from returning and re-faulting heap memory for every buffer of the byte path.

    The path allocates and frees buffers of 100 KiB to 1 MiB many thousand times a second (inflate
    output, message bodies, the compressor's work area). With glibc's default, dynamic thresholds
    each of them is either a fresh ``mmap`` or lands at the top of a heap that is then trimmed, so
    every page is faulted in again: about 370,000 page faults and a quarter of the CPU time of a
    1 GB drop packed as gzip. Keeping up to ``HEAP_TRIM_THRESHOLD`` of free heap and serving
    blocks below ``HEAP_MMAP_THRESHOLD`` from the heap removes that (a few MiB more RSS at most).
    Process-wide, once; a no-op off glibc or when the environment sets these thresholds itself.
    Returns whether the thresholds are now set.
    """
    if os.environ.get("MALLOC_TRIM_THRESHOLD_") or os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
        mallopt = ctypes.CDLL(None).mallopt
    except (ValueError, OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD)
    )


class CbcDecryptor:
    """Streaming AES-256-CBC decryption into one reused buffer; PKCS7 is removed at the end only.

    The last ciphertext block is held back until :meth:`finish`, because only the final block
    carries the padding. Views returned by :meth:`update` are valid until the next call.
    """

    def __init__(self, key: bytes, iv: bytes, max_chunk: int = 4 * 1024 * 1024) -> None:
        if len(key) != 32:
            raise ValueError("AES-256 needs a 32-byte key")
        self._decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        self._buf = bytearray(max_chunk + 2 * BLOCK)
        self._view = memoryview(self._buf)
        self._held = b""  # the newest <= 16 ciphertext bytes, not decrypted yet
        self.ciphertext_bytes = 0

    def _ensure(self, size: int) -> None:
        if len(self._buf) < size:
            self._view.release()
            self._buf = bytearray(size)
            self._view = memoryview(self._buf)

    def update(self, chunk: bytes | bytearray | memoryview) -> memoryview:
        """Decrypt ``chunk`` (any length); returns the plaintext that is certainly not padding."""
        n_in = len(chunk)
        self.ciphertext_bytes += n_in
        if n_in == 0:
            return self._view[:0]
        self._ensure(n_in + 2 * BLOCK)
        dec = self._decryptor
        if n_in >= BLOCK:
            mv = memoryview(chunk)
            written = dec.update_into(self._held, self._view) if self._held else 0
            written += dec.update_into(mv[: n_in - BLOCK], self._view[written:])
            self._held = bytes(mv[n_in - BLOCK :])
            return self._view[:written]
        combined = self._held + bytes(chunk)
        keep = min(BLOCK, len(combined))
        written = dec.update_into(combined[:-keep], self._view) if len(combined) > keep else 0
        self._held = combined[-keep:]
        return self._view[:written]

    def finish(self) -> bytes:
        """Decrypt the held-back block and strip PKCS7; IntegrityError on truncation or bad padding."""
        if self.ciphertext_bytes == 0:
            raise IntegrityError("the data file is empty")
        if self.ciphertext_bytes % BLOCK or len(self._held) != BLOCK:
            raise IntegrityError(
                f"the data file is truncated: {self.ciphertext_bytes} bytes is not a whole number of AES blocks"
            )
        last = bytearray(2 * BLOCK)
        n = self._decryptor.update_into(self._held, last)
        self._decryptor.finalize()
        block = bytes(last[:n])
        pad = block[-1] if block else 0
        if not 1 <= pad <= BLOCK or block[-pad:] != bytes([pad]) * pad:
            raise IntegrityError(
                "the data file's padding is invalid: it is truncated, tampered with, or was not encrypted with this key"
            )
        return block[:-pad]


class Gunzip:
    """Streaming gunzip of one or several concatenated gzip members, output capped per call."""

    def __init__(self, cap: int = INFLATE_CAP, in_slice: int = INFLATE_SLICE) -> None:
        self._cap = cap
        self._slice = in_slice
        self._inflater = isal_zlib.decompressobj(wbits=_GZIP_WBITS)
        self._at_boundary = True  # no member started yet, or the last one ended cleanly
        self._started = False
        self.members = 0
        self._member_output = 0
        self.compressed_bytes = 0
        self.plain_bytes = 0

    def _inflate(self, data: bytes | memoryview) -> Iterator[bytes]:
        piece: bytes | memoryview = data
        cap = self._cap
        while len(piece):
            if self._at_boundary:
                if self._started:
                    self._inflater = isal_zlib.decompressobj(wbits=_GZIP_WBITS)
                self._started = True
                self._at_boundary = False
                self.members += 1
                self._member_output = 0
            inflater = self._inflater
            try:
                out = inflater.decompress(piece, cap)
            except _InflateError as exc:
                if self.members > 1 and not self._member_output:
                    raise IntegrityError(
                        "the data file has bytes after its last complete gzip member that are not gzip"
                        " (trailing garbage or padding): it was not written by MGDC as is"
                    ) from None
                where = "first" if self.members == 1 else f"member {self.members} of the"
                raise IntegrityError(
                    f"the {where} gzip stream is corrupt ({exc}): the data is tampered with or was not"
                    " encrypted with this key"
                ) from None
            if out:
                self.plain_bytes += len(out)
                self._member_output += len(out)
                yield out
            if inflater.eof:
                # RFC 1952: a gzip file may hold several members; start a new one with what is left.
                self._at_boundary = True
                piece = inflater.unused_data
            else:
                piece = inflater.unconsumed_tail

    def feed(self, data: memoryview | bytes) -> Iterator[bytes]:
        """Inflate ``data``; yields plaintext pieces of at most ``cap`` bytes."""
        self.compressed_bytes += len(data)
        step = self._slice
        for offset in range(0, len(data), step):
            yield from self._inflate(data[offset : offset + step])

    def finish(self) -> None:
        """Check that the stream ended at the end of a complete member (with a valid CRC)."""
        if not self._started:
            raise IntegrityError("the data file holds no gzip data")
        if not self._at_boundary:
            if self.members > 1 and not self._member_output:
                raise IntegrityError(
                    "the data file has a few bytes after its last complete gzip member (trailing garbage or"
                    " padding, or a truncated extra member)"
                )
            raise IntegrityError("the gzip stream is truncated: its last member has no end")


def _split_long_lines(data: bytes) -> list[bytes]:
    """``data.split(b"\\n")``, for long lines: ``bytes.split`` looks at every byte in turn (about
    1 ns a byte), ``find`` skips to the next newline with ``memchr`` (tens of bytes a ns), so for
    lines over about 1 KB one ``find`` and one slice per line cost less (2.5 times, for rows of 2.8 KB)."""
    lines: list[bytes] = []
    append, find = lines.append, data.find
    start, end = 0, data.find(b"\n")
    while end >= 0:
        append(data[start:end])
        start = end + 1
        end = find(b"\n", start)
    append(data[start:])
    return lines


class LineSplitter:
    """Splits plaintext into lines, carrying a partial line across pieces.

    Strips a UTF-8 BOM at the start and CR of CRLF line ends; a last line without newline counts.
    The partial line is kept as a list of pieces (joined once, when its newline arrives: linear
    time) and may not grow past ``max_line`` bytes: :class:`RowTooLarge` as soon as it does.
    """

    def __init__(self, max_line: int = MAX_ROW_BYTES) -> None:
        self._pieces: list[bytes] = []
        self._carried = 0
        self._at_start = True
        self.max_line = max_line
        self.lines = 0  # complete lines returned so far (names the line that is too long)
        self._long_lines = False  # the last piece's lines were long: split the next one by find

    @property
    def _carry(self) -> bytes:
        return b"".join(self._pieces)

    def _keep(self, piece: bytes) -> None:
        if piece:
            self._pieces.append(piece)
            self._carried += len(piece)
        if self._carried > self.max_line:
            raise RowTooLarge(
                f"line {self.lines + 1} is longer than {self.max_line} bytes, the largest row a message can"
                " carry; it can never be delivered"
            )

    def feed(self, data: bytes) -> list[bytes]:
        """Complete lines in ``carry + data`` (the partial last line is kept)."""
        if self._at_start:
            if self._carried + len(data) < len(_BOM):
                self._keep(data)
                return []
            data = self._carry + data
            self._pieces, self._carried = [], 0
            self._at_start = False
            if data.startswith(_BOM):
                data = data[len(_BOM) :]
        if b"\n" not in data:
            self._keep(data)
            return []
        # Split the piece itself (no copy of the whole block): the carried partial line joins the
        # first line, and what follows the last newline is the next carry.
        lines = _split_long_lines(data) if self._long_lines else data.split(b"\n")
        self._long_lines = len(data) >= LONG_LINE_BYTES * len(lines)
        if self._pieces:
            lines[0] = self._carry + lines[0]
            self._pieces, self._carried = [], 0
            self._keep(b"")  # (nothing is carried now)
            if len(lines[0]) > self.max_line:
                self._carried = len(lines[0])
                self._keep(b"")
        self._keep(lines.pop())
        if b"\r" in data or lines[0].endswith(b"\r"):
            lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
        self.lines += len(lines)
        return lines

    def finish(self) -> list[bytes]:
        """The last line, if the data did not end with a newline."""
        tail = self._carry
        self._pieces, self._carried = [], 0
        if self._at_start and tail.startswith(_BOM):
            tail = tail[len(_BOM) :]
        tail = tail.removesuffix(b"\r")
        return [tail] if tail.strip() else []


def _stdlib_object(line: bytes) -> bool | None:
    """True/False whether ``line`` is a JSON object per the standard library; None if not JSON.

    The line is decoded as UTF-8 first: ``json.loads`` of bytes would detect UTF-16 or UTF-32 and
    accept rows a consumer reading UTF-8 cannot. Nesting is measured before parsing (the standard
    library recurses and would overflow on a row nested tens of thousands deep).
    """
    if json_depth(line) > MAX_ROW_DEPTH:
        return None
    try:
        return isinstance(json.loads(line.decode("utf-8"), parse_constant=_reject_constant), dict)
    except (ValueError, RecursionError):
        return None


def _reject_constant(name: str) -> object:
    # NaN and Infinity are not JSON: a strict consumer could not parse a message holding them.
    raise ValueError(f"{name} is not valid JSON")


class RowValidator:
    """Checks that each line is exactly one JSON object (simdjson; also validates UTF-8)."""

    def __init__(self, max_blank_bytes: int = MAX_BLANK_BYTES) -> None:
        self._parser = simdjson.Parser()
        self.rows = 0
        self.blank_bytes = 0
        self.max_blank_bytes = max_blank_bytes

    def _slow(self, lines: list[bytes]) -> list[bytes]:
        kept: list[bytes] = []
        parse = self._parser.parse
        for line in lines:
            if not line.strip():
                # A blank line is not a row; a file of little else is a decompression bomb.
                self.blank_bytes += len(line) + 1
                if self.blank_bytes > self.max_blank_bytes:
                    raise ImplausibleData(
                        f"the data holds more than {self.max_blank_bytes} bytes of blank lines; no real drop"
                        " does (a decompression bomb?)"
                    )
                continue
            where = f"row {self.rows + len(kept) + 1}"
            try:
                doc = parse(line)
                is_object = isinstance(doc, simdjson.Object)
                del doc
            except UnicodeDecodeError:
                raise BadRow(f"{where} is not valid UTF-8 JSON") from None
            except (ValueError, RuntimeError) as exc:
                # simdjson refuses numbers outside 64-bit/double range that JSON itself allows
                # (e.g. 1e400, 30-digit integers); such rows are valid and pass through unchanged.
                verdict = _stdlib_object(line)
                if verdict is None:
                    first = str(exc).split(":")[0]
                    raise BadRow(f"{where} is not valid JSON: {first}") from None
                is_object = verdict
            if not is_object:
                raise BadRow(f"{where} is valid JSON but not an object")
            kept.append(line)
        return kept

    def validate(self, lines: list[bytes]) -> list[bytes]:
        """Return the rows of ``lines`` (blank lines dropped); BadRow names the first bad one."""
        if not lines:
            return lines
        parse = self._parser.parse
        object_type = simdjson.Object
        try:
            for line in lines:
                # Each line must parse on its own: joining lines could hide a row split in two.
                if type(parse(line)) is not object_type:
                    break
            else:
                self.rows += len(lines)
                return lines
        except (ValueError, RuntimeError, UnicodeDecodeError):
            pass  # the slow path below names the bad row, or accepts what simdjson cannot represent
        kept = self._slow(lines)
        self.rows += len(kept)
        return kept


def decode_rows(
    chunks: Iterable[bytes | memoryview], key: bytes, iv: bytes, *, validator: RowValidator | None = None
) -> Iterator[list[bytes]]:
    """The whole byte path for one data file: yields validated rows in batches (lists of bytes).

    Raises :class:`IntegrityError` for truncated or tampered data (checked at the end: a drop is
    complete only once the gzip stream ended with a valid CRC) and :class:`BadRow` for a bad line.
    A bad line is only reported as such once the rest of the file proved intact: tampered
    ciphertext often inflates to garbage lines before the CRC check fails, and the honest reason
    then is the tampering. Nothing is yielded after a bad line.
    """
    keep_heap_warm()
    decryptor = CbcDecryptor(key, iv)
    gunzip = Gunzip()
    splitter = LineSplitter()
    check = validator or RowValidator()
    bad: DropError | None = None

    def rows_of(pieces: Iterator[bytes]) -> Iterator[list[bytes]]:
        nonlocal bad
        for piece in pieces:
            if bad is not None:
                yield []  # still inflating to check the CRC: keep the caller's heartbeat going
                continue
            try:
                lines = splitter.feed(piece)
                # An empty batch too: a long stretch without rows still lets the caller renew its lease.
                yield check.validate(lines) if lines else []
            except (BadRow, RowTooLarge) as exc:
                bad = exc  # keep inflating: the CRC decides whether this is tampering

    try:
        for chunk in chunks:
            yield from rows_of(gunzip.feed(decryptor.update(chunk)))
        yield from rows_of(gunzip.feed(decryptor.finish()))
        gunzip.finish()
    except IntegrityError as broken:
        if bad is not None:
            raise IntegrityError(f"{broken.reason} (it first produced an unreadable row: {bad.reason})") from None
        raise
    last = splitter.finish()
    if bad is None and last:
        yield check.validate(last)
    if bad is not None:
        raise bad
