"""A prompt as a chain of block hashes: enough to tell which requests share a prefix, never the text.

The prompt's UTF-8 bytes are cut into blocks of BLOCK_BYTES (about 32 tokens at the usual four
characters per token); block i's hash covers block i and the hash of block i-1, so two prompts share
their first k hashes exactly when they share their first k blocks. A partial last block is not
hashed (engines do not cache it either).

A chain is written as one hex string, 16 characters (64 bits) per block; `split_chain` reads it.
The hashes are keyed with secrets that live only in the recording process, so a trace cannot be
matched against guessed prompts: Python's own bytes hash (SipHash, keyed per process at random;
about 0.2 us a block) mixed with a random salt, or keyed BLAKE2b when hash randomization is off
(PYTHONHASHSEED set), which is private too but about four times slower.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
import sys

BLOCK_BYTES = 128
HEX_PER_BLOCK = 16


class BlockHasher:
    def __init__(self, block_bytes: int = BLOCK_BYTES, keyed_by_process: bool | None = None) -> None:
        self.block_bytes = block_bytes
        self._salt = secrets.randbits(63)
        self._key = secrets.token_bytes(16)
        self._fast = bool(sys.flags.hash_randomization) if keyed_by_process is None else keyed_by_process

    def chain(self, text: str) -> str:
        data = text.encode("utf-8", "surrogatepass")
        size = self.block_bytes
        if self._fast:
            values: list[int] = []
            append = values.append
            value = self._salt
            for start in range(0, len(data) - size + 1, size):
                value = hash((value, data[start:start + size]))
                append(value)
            return struct.pack(f"<{len(values)}q", *values).hex()  # one conversion for the whole chain
        digest = hashlib.blake2b(digest_size=8, key=self._key)
        parts: list[bytes] = []
        for start in range(0, len(data) - size + 1, size):
            digest.update(data[start:start + size])  # the running digest covers the whole prefix
            parts.append(digest.digest())
        return b"".join(parts).hex()

    def key(self, value: str) -> str:
        """A pseudonym for a routing key: equal keys give equal digests within one recording."""
        return hashlib.blake2b(value.encode(), digest_size=8, key=self._key, person=b"routing-key").hexdigest()


def split_chain(chain: str) -> list[int]:
    """The block hashes of a recorded chain, as integers."""
    return [int(chain[i:i + HEX_PER_BLOCK], 16) for i in range(0, len(chain) - HEX_PER_BLOCK + 1, HEX_PER_BLOCK)]
