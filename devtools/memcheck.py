"""Peak memory of the byte path and packer on rows that compress extremely well (rows of ``{}``).

``python -m devtools.memcheck [--rows 30000000] [--encoding gzip-base64]`` encrypts a data file of
that many ``{}`` rows in memory (a few MB of ciphertext), streams it through decrypt, gunzip, line
splitting, validation and the packer, and prints the messages, the largest uncompressed message
body and the peak RSS of the process. See docs/reliability.md (limits on hostile input).
"""

from __future__ import annotations

import argparse
import base64
import os
import resource
import time

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from isal import isal_zlib

from shared.bytepath import decode_rows
from shared.messages import Envelope, Message
from shared.sinks import PackedSink


def _body(payload: str, encoding: str) -> bytes:
    """A message's JSON body as a consumer sees it (without parsing it: that would dominate memory)."""
    if encoding == "json":
        return payload.encode("utf-8")
    raw = base64.b64decode(payload)
    return isal_zlib.decompress(raw, 31) if encoding == "gzip-base64" else raw


class _LargestSink(PackedSink):
    """Counts messages and remembers the largest decoded body (what a consumer inflates)."""

    def __init__(self, encoding: str) -> None:
        super().__init__(Envelope("t", "memcheck", "tbl"), encoding)
        self.messages = 0
        self.largest = 0

    def put(self, message: Message) -> None:
        self.messages += 1
        if not message.final:
            self.largest = max(self.largest, len(_body(message.payload, self.packer.encoding)))


def _encrypted_rows(rows: int, key: bytes, iv: bytes) -> bytes:
    compressor = isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31)
    block = b"{}\n" * 1_000_000
    parts = [compressor.compress(block) for _ in range(rows // 1_000_000)]
    parts.append(compressor.compress(b"{}\n" * (rows % 1_000_000)) + compressor.flush())
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    plain = padder.update(b"".join(parts)) + padder.finalize()
    return encryptor.update(plain) + encryptor.finalize()


def main() -> None:
    """Run the check and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=30_000_000)
    parser.add_argument("--encoding", default="gzip-base64")
    args = parser.parse_args()
    key, iv = os.urandom(32), os.urandom(16)
    data = _encrypted_rows(args.rows, key, iv)
    sink = _LargestSink(args.encoding)
    started = time.perf_counter()
    chunks = (data[i : i + 4 * 1024 * 1024] for i in range(0, len(data), 4 * 1024 * 1024))
    rows = 0
    for batch in decode_rows(chunks, key, iv):
        rows += len(batch)
        sink.write(batch)
    sink.finish({})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"memcheck: rows={rows} ciphertext_mb={len(data) / 1e6:.1f} messages={sink.messages}"
        f" largest_body_bytes={sink.largest} seconds={time.perf_counter() - started:.1f}"
        f" peak_rss_mib={peak:.0f}"
    )


if __name__ == "__main__":
    main()
