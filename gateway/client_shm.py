"""Triton's system shared-memory extension: regions a client on this host registers by name, and the
tensors it leaves in them or asks for in them (``tritonclient.utils.shared_memory``,
``register_system_shared_memory``, ``set_shared_memory``).

Off unless the server was started with ``--allow-client-shm`` (Triton's default since 2.60 too): the regions
are then recorded in one folder of the run directory, one small file per region, so that every gateway
process and the gRPC server see the same registrations, as Triton's one process does. Each process maps a
region the first time one of its requests uses it and keeps the mapping until the region's record changes
or goes (unregistered, or registered again). While it holds mappings, a thread of the process looks for that
every ``WATCH_SECONDS``: a region unregistered through another process is unmapped here too, even if no
request comes here again (the mapping would keep the memory of an object the client unlinked). The client
owns the memory: a region is a POSIX shared-memory object (``/dev/shm/<key>``) the client created; torchgate
never creates, resizes or unlinks one.

Inputs are copied out of a region when a request is parsed (the client may write the region again as soon as
it has its answer, and what the gateway checked is what the worker computes); outputs are written into their
region before the answer is sent. Errors read as Triton's, with the HTTP status of their reason.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import mmap
import os
import re
import stat
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from gateway.codec import RegionSlice
from gateway.errors import Forbidden, InvalidArgument, NotFound

CUDA_UNSUPPORTED = (
    "Triton's CUDA shared-memory extension is not supported (a gateway never touches a GPU): use system "
    "shared memory (register_system_shared_memory)"
)
SHM_ROOT = "/dev/shm"  # where shm_open(3) puts a key's object on Linux
DISABLED = (
    "Client shared memory is disabled. Start the server with '--allow-client-shm' to enable "
    "(torchgate serve --allow-client-shm; TORCHGATE_CLIENT_SHM_DIR for a gateway run by hand)."
)
MAX_NAME = 256
MAX_REGIONS = 1024  # registered at once: each costs a record file, and a mapping in each process that uses it
MAX_SLICES = 64  # slices of one mapping remembered as allocated (past that, forgotten and allocated again)
WATCH_SECONDS = 1.0  # how often a process holding mappings looks for regions unregistered through another
_KEY = re.compile(r"/?[^/\x00]{1,255}")


@dataclass(frozen=True, slots=True)
class Region:
    """A registered region: ``byte_size`` bytes from ``offset`` into the shared-memory object ``key``."""

    name: str
    key: str
    offset: int
    byte_size: int
    inode: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the object when it was registered

    def status(self) -> dict[str, Any]:
        """The region as Triton's status endpoints list it."""
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}


def check_registration(name: str, key: Any, offset: Any, byte_size: Any) -> Region:
    """Return the region a register request describes, or raise (400) naming what is wrong; no I/O."""
    if not 0 < len(name) <= MAX_NAME:
        raise InvalidArgument(f"a region's name must be 1 to {MAX_NAME} characters")
    if key is None:
        raise InvalidArgument("Shared memory register request has no 'key' field")
    if byte_size is None:
        raise InvalidArgument("Shared memory register request has no 'byte_size' field")
    if not isinstance(key, str) or _KEY.fullmatch(key) is None or key.lstrip("/") in (".", ".."):
        raise InvalidArgument(
            f"shared memory key {key!r} is not a POSIX shared-memory name (like '/input_data': one name, "
            "no other '/')"
        )
    for field, value in (("offset", offset), ("byte_size", byte_size)):
        if type(value) is not int or value < 0:
            raise InvalidArgument(f"Shared memory register request: '{field}' must be a non-negative integer")
    if byte_size == 0:
        raise InvalidArgument(f"failed to register shared memory region '{name}': byte_size must be positive")
    return Region(name, key, offset, byte_size)


def check_slice(region: Region, where: RegionSlice) -> None:
    """Raise (400) unless ``where`` lies inside ``region``, as Triton words it; no I/O."""
    if where.offset >= region.byte_size:
        raise InvalidArgument(f"Invalid offset for shared memory region: '{region.name}'")
    if where.offset + where.byte_size > region.byte_size:
        raise InvalidArgument(f"Invalid offset + byte size for shared memory region: '{region.name}'")


@dataclass(slots=True)
class _Mapped:
    stamp: tuple[int, int]  # the record file's (st_ino, st_mtime_ns) when it was mapped
    region: Region
    view: memoryview  # the region's bytes; the mapping lives as long as a view of it
    # (offset, bytes) of the slices whose pages were allocated by an earlier use: they stay allocated while
    # the object keeps its size (a client punching holes in it, or shrinking and growing it back between two
    # uses, is not looked for)
    allocated: set[tuple[int, int]] = dataclasses.field(default_factory=set)


class ClientRegions:
    """The registered regions of one server, seen from one process; ``folder`` None: the extension is off."""

    def __init__(self, folder: str | Path | None, shm_root: str = SHM_ROOT) -> None:
        self.folder = Path(folder) if folder else None
        self.shm_root = shm_root
        self._mapped: dict[str, _Mapped] = {}
        self._seen = 0  # the folder's st_mtime_ns when the mappings were last pruned
        self._lock = threading.Lock()
        self._watcher = 0  # the pid of the process whose thread watches the records (0: none)

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    # -- the status, register and unregister endpoints ----------------------------------------------------

    def status(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every registered region, or the one named (404 when there is none)."""
        if name:
            region = self._record(name)
            if region is None:
                raise NotFound(f"Unable to find system shared memory region: '{name}'")
            return [region.status()]
        if self.folder is None:
            return []
        regions = (self._read(path) for path in sorted(self.folder.glob("*.json")))
        return sorted((r.status() for r in regions if r is not None), key=lambda doc: doc["name"])

    def register(self, name: str, key: Any, offset: Any, byte_size: Any) -> None:
        """Record a region after checking that its object exists and holds it (400 otherwise)."""
        folder = self._folder()
        region = check_registration(name, key, offset, byte_size)
        if sum(1 for _ in folder.glob("*.json")) >= MAX_REGIONS:
            raise InvalidArgument(
                f"{MAX_REGIONS} shared memory regions are registered, the most a server keeps: "
                "unregister some"
            )
        fd = self._open(region)
        try:
            info = os.fstat(fd)
        finally:
            os.close(fd)
        if region.offset + region.byte_size > info.st_size:
            raise InvalidArgument(f"failed to register shared memory region '{name}': invalid args")
        record = {**region.status(), "inode": [info.st_dev, info.st_ino]}
        fd, temporary = tempfile.mkstemp(dir=folder, prefix=".register-")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(orjson.dumps(record))
            try:  # link, not rename: a name already taken is refused, never replaced
                os.link(temporary, self._path(name))
            except FileExistsError:
                raise InvalidArgument(f"shared memory region '{name}' already in manager") from None
        finally:
            os.unlink(temporary)

    def unregister(self, name: str | None = None) -> None:
        """Forget the region named, or every region; a name not registered is no error (as in Triton)."""
        folder = self._folder()
        paths = [self._path(name)] if name else list(folder.glob("*.json"))
        for path in paths:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        with self._lock:
            self._prune()

    # -- tensors in regions -------------------------------------------------------------------------------

    def read(
        self, where: RegionSlice, limit: int, tensor: str, into: memoryview | None = None
    ) -> bytes | memoryview:
        """Return a copy of an input's bytes in a region: new ``bytes``, or ``into`` once they are copied
        there (400 past ``limit`` bytes: what is left of the largest body once the request's other inputs
        are read)."""
        if where.byte_size > limit:
            raise InvalidArgument(
                f"{tensor}: shared_memory_byte_size {where.byte_size} is more than the {limit} bytes left "
                "of what a request may carry"
            )
        view = self._view(where, where.byte_size)[where.offset : where.offset + where.byte_size]
        if into is None:
            return bytes(view)
        into[:] = view
        return into

    def write(self, where: RegionSlice, data: bytes | memoryview, tensor: str) -> memoryview:
        """Write an output's bytes at the start of its slice of a region (400 when they do not fit); return
        where they now are."""
        source = memoryview(data)
        if source.format != "B":
            source = source.cast("B")
        view = self._view(where, min(source.nbytes, where.byte_size))
        if source.nbytes > where.byte_size:
            raise InvalidArgument(
                f"shared memory size specified with the request for {tensor} ({where.byte_size} bytes) "
                f"should be at least {source.nbytes} bytes to hold the results"
            )
        written = view[where.offset : where.offset + source.nbytes]
        written[:] = source
        return written

    def _view(self, where: RegionSlice, touched: int) -> memoryview:
        """The bytes of the region ``where`` names, mapped in this process once per registration, once the
        ``touched`` bytes of ``where`` that are about to be read or written are known to be there."""
        folder = self._folder()
        path = self._path(where.region)
        with self._lock:
            try:
                now = os.stat(folder).st_mtime_ns
                if now != self._seen:
                    self._seen = now
                    self._prune()
                info = os.stat(path)
            except FileNotFoundError:
                raise NotFound(f"Unable to find shared memory region: '{where.region}'") from None
            stamp = (info.st_ino, info.st_mtime_ns)
            mapped = self._mapped.get(where.region)
            if mapped is None or mapped.stamp != stamp:
                region = self._read(path)
                if region is None:
                    raise NotFound(f"Unable to find shared memory region: '{where.region}'")
                self._check_object(region)
                mapped = self._mapped[where.region] = _Mapped(stamp, region, self._map(region))
                self._watch()
        check_slice(mapped.region, where)
        # at every use: the client may have changed it since
        span = (where.offset, touched)
        if span in mapped.allocated:
            self._check_object(mapped.region)
        else:
            self._check_object(mapped.region, *span)
            if len(mapped.allocated) >= MAX_SLICES:
                mapped.allocated.clear()
            mapped.allocated.add(span)
        return mapped.view

    def _check_object(self, region: Region, start: int = 0, length: int = 0) -> None:
        """Raise (400) unless the region's object is still the one registered, still holds the region, and
        has the memory of the ``length`` bytes from ``start`` (in the region), allocated now if they had none:
        touching a mapped page past the end of a shrunk object, or a page of a sparse object (as the client
        made it: its pages come when written) that its file system has no room for (a full /dev/shm), would
        kill this process (SIGBUS)."""
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(self._object_path(region), flags)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ELOOP):  # ELOOP: a symbolic link now
                raise InvalidArgument(f"Unable to open shared memory region: '{region.key}'") from None
            fd = -1
        try:
            info = os.fstat(fd) if fd >= 0 else None
            if info is None or (info.st_dev, info.st_ino) != region.inode:
                raise InvalidArgument(
                    f"the shared memory object '{region.key}' of region '{region.name}' was removed or "
                    "replaced since the region was registered: register it again"
                )
            if region.offset + region.byte_size > info.st_size:
                raise InvalidArgument(
                    f"shared memory region '{region.name}': its object '{region.key}' now holds only "
                    f"{info.st_size} bytes"
                )
            # Once per slice of a mapping (_view): allocating what is allocated still walks its pages (30 us
            # for 600 KiB), and looking for a hole first costs more: SEEK_HOLE walks to the object's first
            # hole, its end for one written whole (200 us for 16 MiB, for a use of 1 KiB too).
            if length:
                try:
                    os.posix_fallocate(fd, region.offset + start, length)
                except OSError as exc:
                    raise InvalidArgument(
                        f"shared memory region '{region.name}': no memory for {length} bytes of its object "
                        f"'{region.key}' ({exc.strerror}; is {self.shm_root} full?)"
                    ) from None
        finally:
            if fd >= 0:
                os.close(fd)

    def _map(self, region: Region) -> memoryview:
        fd = self._open(region)
        try:
            start = region.offset - region.offset % mmap.ALLOCATIONGRANULARITY
            lead = region.offset - start
            try:
                memory = mmap.mmap(fd, lead + region.byte_size, mmap.MAP_SHARED, offset=start)
            except (OSError, ValueError) as exc:  # changed since it was checked, say
                raise InvalidArgument(f"cannot map shared memory region '{region.name}': {exc}") from None
        finally:
            os.close(fd)
        return memoryview(memory)[lead : lead + region.byte_size]

    def _object_path(self, region: Region) -> str:
        return os.path.join(self.shm_root, region.key.lstrip("/"))

    def _open(self, region: Region) -> int:
        try:
            fd = os.open(self._object_path(region), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            raise InvalidArgument(f"Unable to open shared memory region: '{region.key}'") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise InvalidArgument(f"Invalid shared memory region: '{region.key}'")
        return fd

    def _watch(self) -> None:
        """Start this process's thread that drops the mappings of regions unregistered (or registered again)
        through any process, unless it runs (the caller holds the lock); it ends once no mapping is left."""
        if self._watcher == os.getpid():  # a forked child has no thread of its parent's
            return
        self._watcher = os.getpid()
        threading.Thread(target=self._watching, name="torchgate-client-shm", daemon=True).start()

    def _watching(self) -> None:
        while True:
            time.sleep(WATCH_SECONDS)
            with self._lock:
                self._prune()  # a stat per mapped region (the folder's time may not tell changes apart)
                if not self._mapped:
                    self._watcher = 0
                    return

    def _prune(self) -> None:
        """Drop the mappings of regions whose record is gone or changed (the caller holds the lock)."""
        for name, mapped in list(self._mapped.items()):
            try:
                info = os.stat(self._path(name))
            except FileNotFoundError:
                info = None
            if info is None or (info.st_ino, info.st_mtime_ns) != mapped.stamp:
                del self._mapped[name]  # unmapped once no request still holds a view of it

    # -- the records ---------------------------------------------------------------------------------------

    def _folder(self) -> Path:
        if self.folder is None:
            raise Forbidden(DISABLED)
        return self.folder

    def _path(self, name: str) -> Path:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:40]
        return self._folder() / f"{digest}.json"

    def _record(self, name: str) -> Region | None:
        return self._read(self._path(name)) if self.folder is not None else None

    @staticmethod
    def _read(path: Path) -> Region | None:
        try:
            doc = orjson.loads(path.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return None
        return Region(doc["name"], doc["key"], doc["offset"], doc["byte_size"], tuple(doc["inode"]))


def cuda_status(name: str | None = None) -> list[dict[str, Any]]:
    """CUDA regions, as a Triton without GPU support lists them: none (404 for one named)."""
    if name:
        raise NotFound(f"Unable to find cuda shared memory region: '{name}'")
    return []


def cuda_register(name: str) -> None:
    """Refuse a CUDA region (400), as a Triton without GPU support does, saying what to use instead."""
    raise InvalidArgument(f"failed to register CUDA shared memory region '{name}': {CUDA_UNSUPPORTED}")
