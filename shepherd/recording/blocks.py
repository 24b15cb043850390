"""A prompt as a chain of block hashes: enough to tell which requests share a prefix, never the text.

The prompt's UTF-8 bytes are cut into blocks of BLOCK_BYTES (about 16 tokens at the usual four
characters per token); block i's hash covers block i and the hash of block i-1, so two prompts share
their first k hashes exactly when they share their first k blocks. A partial last block is not
hashed (engines do not cache it either). The hash is keyed with a salt that lives only in the
recording process, so a trace cannot be matched against guessed prompts.
"""

from __future__ import annotations

import hashlib

BLOCK_BYTES = 64


def block_chain(text: str, salt: bytes, block_bytes: int = BLOCK_BYTES) -> list[str]:
    data = text.encode("utf-8", "surrogatepass")
    chain: list[str] = []
    previous = b""
    for start in range(0, len(data) - block_bytes + 1, block_bytes):
        digest = hashlib.blake2b(previous + data[start:start + block_bytes], digest_size=8, key=salt).digest()
        chain.append(digest.hex())
        previous = digest
    return chain


def key_digest(value: str, salt: bytes) -> str:
    """A pseudonym for a routing key: equal keys give equal digests within one recording."""
    return hashlib.blake2b(value.encode(), digest_size=8, key=salt, person=b"routing-key").hexdigest()
