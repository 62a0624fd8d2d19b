"""How full a BPF ring buffer is, read from its position pages without consuming anything.

The consumer and producer positions (first and second page, the kernel's layout) are mapped
read-only: a look is two loads and no syscall, so a deferring consumer can look often.
"""

from __future__ import annotations

import mmap
import struct

_POSITION = struct.Struct("<Q")


class RingFill:
    def __init__(self, map_fd: int, capacity: int) -> None:
        page = mmap.PAGESIZE
        self.capacity = capacity
        self._consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ, offset=0)
        try:
            self._producer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        except OSError:
            self._consumer.close()
            raise

    def queued(self) -> int:
        """Bytes written by the probe and not yet consumed (record headers included)."""
        producer: int = _POSITION.unpack_from(self._producer)[0]
        consumer: int = _POSITION.unpack_from(self._consumer)[0]
        return max(0, producer - consumer)

    def consumed(self) -> int:
        """The consumer position: bytes consumed since the ring was made."""
        position: int = _POSITION.unpack_from(self._consumer)[0]
        return position

    def close(self) -> None:
        self._consumer.close()
        self._producer.close()
