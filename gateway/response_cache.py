"""Triton's response cache: the answers a model gave, kept by the gateway for requests with the same inputs;
no I/O.

A model whose ``config.toml`` says ``[response_cache] enable = true`` is answered from the cache when the
server has one (``torchgate serve --cache-config local,size=BYTES``, Triton's flag and its ``local`` cache):
a request whose model version, inputs (name, datatype, shape and bytes, in order) and handler parameters are
those of an earlier answered request gets that request's outputs at once, with no worker involved (the
caller puts what tells the version's files apart in the version it gives, so that a model loaded again from
new files is not answered with the old one's answers). As in
Triton, the key is a hash of those (BLAKE2b, 128 bits), the whole outputs are kept (a request asking for some
of them is answered from the same entry), failures are never kept, and the least recently used answers go
first once the cache is full. Each gateway process, and the gRPC server, keeps a share of ``size``.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from gateway.codec import Tensor

ENTRY_OVERHEAD = 256  # bytes counted per entry beyond its tensors' data (the key, the objects)


class ResponseCache:
    """A bounded map from request keys to outputs, least recently used out first (thread-safe)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._entries: OrderedDict[bytes, tuple[list[Tensor], int]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(model: str, version: str, inputs: Sequence[Tensor], parameters: Mapping[str, Any]) -> bytes:
        """Return the key of a request: its model version, its inputs and its handler parameters."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(
            orjson.dumps([model, version, sorted(parameters.items())], option=orjson.OPT_NON_STR_KEYS)
        )
        for tensor in inputs:
            digest.update(orjson.dumps([tensor.name, tensor.datatype, list(tensor.shape), len(tensor.data)]))
            digest.update(tensor.data)
        return digest.digest()

    def get(self, key: bytes) -> list[Tensor] | None:
        """Return the outputs kept for ``key`` (now the most recently used), or None."""
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            self._entries.move_to_end(key)
            return found[0]

    def put(self, key: bytes, outputs: Sequence[Tensor]) -> bool:
        """Keep a copy of ``outputs`` for ``key``; return False when they are larger than the whole cache."""
        size = ENTRY_OVERHEAD + sum(len(t.data) for t in outputs)
        if size > self.capacity:
            return False
        kept = [Tensor(t.name, t.datatype, tuple(t.shape), bytes(t.data)) for t in outputs]
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.used -= old[1]
            while self._entries and self.used + size > self.capacity:
                _, (_, freed) = self._entries.popitem(last=False)
                self.used -= freed
            self._entries[key] = (kept, size)
            self.used += size
        return True

    def __len__(self) -> int:
        return len(self._entries)
