"""Bytes produced in independent chunks (casts), computed on worker threads ahead of the writer.

A cast is CPU work (numpy releases the GIL), the writer mostly waits on the kernel: running
the next chunks while the current one is written keeps every core busy, across tensor
boundaries too. Memory stays bounded: at most `ahead` chunks exist at once.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

Chunk = bytes | bytearray | memoryview
MAX_WORKERS = 4
# Chunks in flight: enough that the workers never wait for the writer to come back for more
# (measured here: 6 in flight left them idle a third of the time; 16 did not), few enough
# that memory stays bounded (16 chunks of at most 4 MB).
MAX_AHEAD = 16


class BufferPool:
    """Output buffers recycled from chunk to chunk: a fresh multi-megabyte buffer per chunk
    would cost a page fault per 4 KB every time (the allocator hands big blocks back to the
    OS as soon as they are freed)."""

    def __init__(self, keep: int) -> None:
        self._free: list[bytearray] = []
        self._keep = keep
        self._lock = threading.Lock()

    def get(self, size: int) -> bytearray:
        """A buffer of at least size bytes (contents undefined)."""
        with self._lock:
            for i, buf in enumerate(self._free):
                if len(buf) >= size:
                    return self._free.pop(i)
        return bytearray(size)

    def put(self, buf: bytearray) -> None:
        with self._lock:
            if len(self._free) < self._keep:
                self._free.append(buf)


Job = Callable[[BufferPool], Chunk]


@dataclass(eq=False)
class ChunkedStream:
    """A storage's bytes as chunk jobs: `jobs()` yields one callable per chunk, in byte order,
    each safe to run on any thread and in any order (a job may return a memoryview of a
    buffer from the pool it is given; it goes back to the pool once the chunk was taken);
    `done()` runs after the last chunk was taken (it merges per-chunk statistics and may
    refuse the result)."""

    jobs: Callable[[], Iterator[Job]]
    done: Callable[[], None]


def default_workers() -> int:
    """Worker threads: the cores this process may use, at most MAX_WORKERS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores))


class ChunkPipeline:
    """Runs the chunk jobs of `streams` on worker threads, at most `ahead` chunks in flight;
    `take(stream)` yields one stream's chunks in order, and streams must be taken in the
    order given. A chunk is valid until the consumer asks for the next one."""

    def __init__(
        self, streams: Sequence[ChunkedStream], workers: int | None = None, ahead: int = 0
    ) -> None:
        self._workers = workers or default_workers()
        self._ahead = ahead or MAX_AHEAD
        self._streams = list(streams)
        self._next = 0  # index of the stream take() expects next
        self._jobs = ((i, job) for i, s in enumerate(self._streams) for job in s.jobs())
        self._pending: deque[tuple[int, Future[Chunk]]] = deque()
        self._executor: ThreadPoolExecutor | None = None
        self._buffers = BufferPool(self._ahead + self._workers)

    def _fill(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="ckpt-chunk")
        while len(self._pending) < self._ahead:
            item = next(self._jobs, None)
            if item is None:
                return
            index, job = item
            self._pending.append((index, self._executor.submit(job, self._buffers)))

    def take(self, stream: ChunkedStream) -> Iterator[Chunk]:
        """The chunks of `stream` (the next one in order); runs its done() at the end."""
        index = self._next
        if index >= len(self._streams) or self._streams[index] is not stream:
            raise RuntimeError("chunk streams taken out of order (internal)")
        self._next += 1
        while True:
            self._fill()
            if not self._pending or self._pending[0][0] != index:
                break
            _, future = self._pending.popleft()
            chunk = future.result()
            yield chunk
            if isinstance(chunk, memoryview) and isinstance(chunk.obj, bytearray):
                buf = chunk.obj
                try:
                    chunk.release()
                except BufferError:  # an export of the view itself is alive: keep the buffer
                    continue
                # (a slice of the chunk is not seen here: consumers keep no chunk data)
                self._buffers.put(buf)
        stream.done()

    def close(self) -> None:
        """Drop what was not taken (after an error) and wait for running jobs."""
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> ChunkPipeline:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
