"""Signal handling for every procmon command: handlers only set flags.

Python runs a handler wherever the main thread is, including inside the ctypes ring-buffer
callback, where a raised exception would be swallowed and could hang the poll loop.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType, TracebackType


class Signals:
    """SIGINT/SIGTERM set ``stop`` (and call ``on_stop``); with ``reload``, SIGHUP sets
    ``reload``. Installed for the life of a ``with`` block; the old handlers come back after.
    Calling the object answers "stop?", so it can be a loop's stop condition."""

    def __init__(self, reload: bool = False, on_stop: Callable[[], None] | None = None) -> None:
        self.stop = False
        self.reload = False
        self._wants_reload = reload
        self._on_stop = on_stop
        self._previous: dict[int, object] = {}

    def __call__(self) -> bool:
        return self.stop

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop = True
        if self._on_stop is not None:
            self._on_stop()

    def _reload(self, signum: int, frame: FrameType | None) -> None:
        self.reload = True

    def __enter__(self) -> Signals:
        wanted: dict[int, Callable[[int, FrameType | None], None]] = {
            signal.SIGINT: self._stop,
            signal.SIGTERM: self._stop,
        }
        if self._wants_reload:
            wanted[signal.SIGHUP] = self._reload
        try:
            for signum, handler in wanted.items():
                self._previous[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread (embedded use): the caller stops us
            self.__exit__(None, None, None)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()
