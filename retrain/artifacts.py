"""Content-addressed, write-once storage of model artifacts (ADAPT-014).

An artifact is a blob of bytes named by its sha256. It lives at
``root/<sha256[:2]>/<sha256>``, so the name *is* the integrity check: every read
hashes the bytes again and refuses them when the digest differs.

Guarantees:

* **Atomic, durable writes.** Bytes go to a temp file in the destination
  directory, are flushed and fsynced, then ``os.replace``-d onto the final name and
  the directory is fsynced. A reader (or a crash) sees the whole artifact under
  its final name or nothing; a half-written file only ever exists under a
  ``.tmp-`` name, which :meth:`ArtifactStore.collect_orphans` removes later.
* **Write once.** Putting the same bytes twice is a no-op (it only refreshes the
  file's mtime, see :meth:`ArtifactStore.put_bytes`). Final files are read-only.
* **Private by default.** Models are a desk's intellectual property: files are
  ``0440`` and the folders the store creates (the root, missing parents of it, the
  shards) ``0750``, set explicitly whatever the umask. Other modes are settings
  (``RETRAIN_ARTIFACT_FILE_MODE``, ``RETRAIN_ARTIFACT_DIR_MODE``, see
  :func:`parse_file_mode` and :func:`parse_dir_mode`). Folders and files that
  already exist keep their modes.
* **Verify, then load.** :meth:`ArtifactStore.load_object` hashes the bytes and
  unpickles *those same bytes from memory*; it never re-opens the path after the
  check, so a file swapped between check and use cannot be unpickled.

Content addressing proves integrity, not trust: only load artifacts this system
wrote. Unpickling is code execution.

Example
-------
>>> import tempfile
>>> store = ArtifactStore(Path(tempfile.mkdtemp()))
>>> ref = store.put_object({"weights": [1, 2, 3]})
>>> store.load_object(ref.sha256)
{'weights': [1, 2, 3]}
>>> store.put_object({"weights": [1, 2, 3]}) == ref
True
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrain.core.errors import ArtifactError

__all__ = ["ArtifactRef", "ArtifactStore", "DiskUsage", "TEMP_PREFIX", "DEFAULT_FILE_MODE", "DEFAULT_DIR_MODE",
           "parse_file_mode", "parse_dir_mode"]

#: Name prefix of in-flight writes. Never a valid digest, so never mistaken for one.
TEMP_PREFIX = ".tmp-"

_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_OCTAL_RE = re.compile(r"(?:0o)?[0-7]{1,4}")

#: Artifact files: read by the owner and its group (training, validation, serving), nobody else.
DEFAULT_FILE_MODE = 0o440
#: Folders the store creates: the owner writes, the group reads and traverses.
DEFAULT_DIR_MODE = 0o750


def _octal(value: int | str, what: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{what}: not an octal mode: {value!r}")
    if isinstance(value, int):
        mode = value
    elif isinstance(value, str) and _OCTAL_RE.fullmatch(value.strip().lower()):
        mode = int(value.strip().lower().removeprefix("0o"), 8)
    else:
        raise ValueError(f"{what}: not an octal mode such as 0750: {value!r}")
    if not 0 <= mode <= 0o7777:
        raise ValueError(f"{what}: not an octal mode such as 0750: {value!r}")
    return mode


def parse_file_mode(value: int | str) -> int:
    """The mode of artifact files from an int or an octal string (``"0440"``, ``"440"``, ``"0o440"``).

    Only read bits are accepted, and the owner's is required. Files are write-once and
    named by their sha256: a write bit would invite editing in place, which nothing
    notices until the next read refuses the file; a model is not a program, so no
    execute bits either. The store reads its own files back (to check an existing copy),
    hence the owner's read bit. ``0440`` (the default) keeps them from other users;
    ``0400`` from the group too; ``0444`` is the old world-readable behaviour.

    >>> oct(parse_file_mode("0440")), oct(parse_file_mode(0o400))
    ('0o440', '0o400')
    >>> parse_file_mode("0640")
    Traceback (most recent call last):
    ...
    ValueError: artifact file mode 0o640: only read bits (0444) are allowed, files are write-once and read-only
    """
    mode = _octal(value, "artifact file mode")
    if mode & ~0o444:
        raise ValueError(f"artifact file mode {oct(mode)}: only read bits (0444) are allowed, "
                         "files are write-once and read-only")
    if not mode & stat.S_IRUSR:
        raise ValueError(f"artifact file mode {oct(mode)}: the owner must read (0400), the store verifies its files")
    return mode


def parse_dir_mode(value: int | str) -> int:
    """The mode of folders the store creates, from an int or an octal string (``"0750"``).

    The owner needs all of ``0700`` (it creates temp files, renames and lists them).
    Group bits let other users of a shared store read (``0750``, the default) or write
    (``0770``, e.g. when beat's retention runs as another user); ``02750`` makes new
    files inherit the folder's group.

    >>> oct(parse_dir_mode("750")), oct(parse_dir_mode("2770"))
    ('0o750', '0o2770')
    """
    mode = _octal(value, "artifact folder mode")
    if mode & 0o700 != 0o700:
        raise ValueError(f"artifact folder mode {oct(mode)}: the owner needs 0700 to write the store")
    return mode


@dataclass(frozen=True)
class ArtifactRef:
    """Where an artifact was stored: its digest, its size in bytes and its path."""

    sha256: str
    size: int
    path: Path


@dataclass(frozen=True)
class DiskUsage:
    """What the store occupies: finished artifacts, and temp files of unfinished writes."""

    artifacts: int
    artifact_bytes: int
    temp_files: int
    temp_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.artifact_bytes + self.temp_bytes


def _check_digest(sha256: str) -> str:
    # Digests come from the database and from messages; refusing anything but 64
    # lowercase hex characters also rules out path tricks such as "../".
    if not isinstance(sha256, str) or not _DIGEST_RE.fullmatch(sha256):
        raise ArtifactError(f"not a sha256 hex digest (64 lowercase hex characters): {sha256!r}")
    return sha256


class ArtifactStore:
    """Content-addressed artifact files under ``root``.

    Parameters
    ----------
    root
        Directory of the store; created if missing.
    fsync
        The function that makes a file descriptor durable, ``os.fsync`` by
        default. Injected so that tests can simulate a crash between writing and
        publishing a file.
    file_mode, dir_mode
        Modes of the files written and of the folders created (see
        :func:`parse_file_mode` and :func:`parse_dir_mode`); set with ``chmod``, so the
        umask does not matter.
    """

    def __init__(self, root: Path, *, fsync: Callable[[int], None] = os.fsync,
                 file_mode: int | str = DEFAULT_FILE_MODE, dir_mode: int | str = DEFAULT_DIR_MODE) -> None:
        self.root = Path(root)
        self._fsync = fsync
        self.file_mode = parse_file_mode(file_mode)
        self.dir_mode = parse_dir_mode(dir_mode)
        self._make_dirs(self.root)

    # -- paths -----------------------------------------------------------------

    def path_for(self, sha256: str) -> Path:
        """Return the final path of the artifact with this digest (it may not exist)."""
        _check_digest(sha256)
        return self.root / sha256[:2] / sha256

    # -- writing ---------------------------------------------------------------

    def put_bytes(self, data: bytes) -> ArtifactRef:
        """Store ``data`` under its sha256 and return where it is.

        If an intact copy already exists nothing is written, but its mtime is
        refreshed: a put followed by registering a version must not lose the file
        to an orphan collection that saw it unreferenced and old a moment ago.
        A present but corrupt copy is replaced by the good bytes.
        """
        data = bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        final = self.path_for(digest)
        ref = ArtifactRef(sha256=digest, size=len(data), path=final)
        if self._intact(final, digest, len(data)):
            try:
                os.utime(final)
                return ref
            except PermissionError:
                pass  # another user owns the file: rewriting it also renews the mtime
        self._write_atomically(final, data)
        return ref

    def put_object(self, obj: Any) -> ArtifactRef:
        """Serialise ``obj`` with joblib (compress=3) in memory, then :meth:`put_bytes`."""
        import joblib  # deferred: keeps importing the registry core cheap

        buf = io.BytesIO()
        joblib.dump(obj, buf, compress=3)
        return self.put_bytes(buf.getvalue())

    def _intact(self, path: Path, digest: str, size: int) -> bool:
        try:
            if path.stat().st_size != size:  # cheap answer for truncated copies
                return False
            data = path.read_bytes()
        except FileNotFoundError:
            return False
        return hashlib.sha256(data).hexdigest() == digest

    def _write_atomically(self, final: Path, data: bytes) -> None:
        shard = final.parent
        if not shard.is_dir():
            self._make_dirs(shard)
            # The new shard's entry in root must survive a crash as well.
            self._fsync_dir(self.root)
        fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=shard)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                self._fsync(f.fileno())
            os.chmod(tmp, self.file_mode)
            os.replace(tmp, final)
        except BaseException:
            # Best effort: a failure we live through leaves nothing behind. A crash
            # (kill -9, power loss) leaves the temp, which collect_orphans removes.
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self._fsync_dir(shard)

    def _make_dirs(self, path: Path) -> None:
        """Create ``path`` and its missing parents, each with the store's folder mode."""
        missing: list[Path] = []
        parent = path
        while not parent.is_dir() and parent.parent != parent:
            missing.append(parent)
            parent = parent.parent
        for directory in reversed(missing):
            try:
                # Private until chmod gives it the configured mode: never briefly wider.
                os.mkdir(directory, 0o700)
            except FileExistsError:
                continue  # made by a concurrent put, which sets its mode
            os.chmod(directory, self.dir_mode)
        if not path.is_dir():
            raise ArtifactError(f"artifact store: {path} exists and is not a folder")

    def _fsync_dir(self, directory: Path) -> None:
        # Without this the rename may be lost on power failure even though the
        # file's bytes are on disk.
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            self._fsync(fd)
        finally:
            os.close(fd)

    # -- reading ---------------------------------------------------------------

    def get_bytes(self, sha256: str) -> bytes:
        """Return the artifact's bytes after checking that they hash to ``sha256``.

        Raises :class:`~retrain.core.errors.ArtifactError` when the file is missing or
        its digest differs; the message names both digests and the path.
        """
        path = self.path_for(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactError(f"artifact sha256={sha256} is missing: no file at {path}") from None
        except OSError as exc:
            raise ArtifactError(f"artifact sha256={sha256} at {path} cannot be read: {exc}") from exc
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ArtifactError(
                f"artifact at {path} is corrupt: expected sha256 {sha256}, "
                f"actual sha256 {actual} ({len(data)} bytes); refusing to use it"
            )
        return data

    def load_object(self, sha256: str) -> Any:
        """Verify the artifact, then joblib-load it from the verified bytes in memory."""
        import joblib

        data = self.get_bytes(sha256)
        # Loading from `data`, not from the path: the file could be replaced
        # between the check and the load (time-of-check / time-of-use).
        return joblib.load(io.BytesIO(data))

    def exists(self, sha256: str) -> bool:
        """Whether a file is stored under this digest (not verified; see :meth:`get_bytes`)."""
        return self.path_for(sha256).is_file()

    # -- housekeeping ----------------------------------------------------------

    def delete(self, sha256: str) -> bool:
        """Remove the artifact; return whether it was there.

        Shard directories are left in place: removing one could race with a
        concurrent put that has just created it, and there are at most 256.
        """
        path = self.path_for(sha256)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        self._fsync_dir(path.parent)
        return True

    def iter_digests(self) -> Iterator[str]:
        """Yield the digest of every stored artifact, in sorted order."""
        for _, digest in self._iter_artifact_paths():
            yield digest

    def collect_orphans(self, referenced: Iterable[str], older_than_s: float, now_ts: float) -> list[str]:
        """Delete unreferenced artifacts and stale temp files older than a grace period.

        An artifact is removed when its digest is not in ``referenced`` and its
        mtime is at least ``older_than_s`` seconds before ``now_ts`` (a POSIX
        timestamp the caller reads from its clock). Temp files of writes that never
        finished are removed under the same age rule. Files the store does not
        recognise are left alone.

        The grace period protects an artifact between its put and the registration
        of the version that references it; it must be longer than that gap.

        Returns the sorted digests of the artifacts removed.
        """
        removed = [ref.sha256 for ref in self.find_orphans(referenced, older_than_s, now_ts) if self.delete(ref.sha256)]
        self.collect_temp(older_than_s, now_ts)
        return removed

    def find_orphans(self, referenced: Iterable[str], older_than_s: float, now_ts: float) -> list[ArtifactRef]:
        """The artifacts :meth:`collect_orphans` would remove now, with their sizes; removes nothing."""
        if older_than_s < 0:
            raise ValueError(f"older_than_s must be >= 0, got {older_than_s}")
        keep = {_check_digest(d) for d in referenced}
        cutoff = now_ts - older_than_s
        found: list[ArtifactRef] = []
        for path, digest in self._iter_artifact_paths():
            if digest in keep or not self._mtime_at_or_before(path, cutoff):
                continue
            with contextlib.suppress(FileNotFoundError):
                found.append(ArtifactRef(sha256=digest, size=path.stat().st_size, path=path))
        return found

    def collect_temp(self, older_than_s: float, now_ts: float) -> int:
        """Remove temp files of writes that never finished, older than the grace period; return how many."""
        if older_than_s < 0:
            raise ValueError(f"older_than_s must be >= 0, got {older_than_s}")
        cutoff = now_ts - older_than_s
        n = 0
        for path in self._iter_temp_paths():
            if self._mtime_at_or_before(path, cutoff):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    n += 1
        return n

    def size(self, sha256: str) -> int | None:
        """Size in bytes of the stored file (not verified), or None when there is none."""
        try:
            return self.path_for(sha256).stat().st_size
        except FileNotFoundError:
            return None

    def disk_usage(self) -> DiskUsage:
        """Count and size the stored artifacts and the leftover temp files."""
        n = size = tn = tsize = 0
        for path, _ in self._iter_artifact_paths():
            with contextlib.suppress(FileNotFoundError):
                size += path.stat().st_size
                n += 1
        for path in self._iter_temp_paths():
            with contextlib.suppress(FileNotFoundError):
                tsize += path.stat().st_size
                tn += 1
        return DiskUsage(artifacts=n, artifact_bytes=size, temp_files=tn, temp_bytes=tsize)

    @staticmethod
    def _mtime_at_or_before(path: Path, cutoff: float) -> bool:
        try:
            return path.stat().st_mtime <= cutoff
        except FileNotFoundError:  # deleted concurrently
            return False

    def _iter_shards(self) -> Iterator[Path]:
        for shard in sorted(self.root.iterdir()):
            if len(shard.name) == 2 and shard.is_dir():
                yield shard

    def _iter_artifact_paths(self) -> Iterator[tuple[Path, str]]:
        for shard in self._iter_shards():
            for path in sorted(shard.iterdir()):
                name = path.name
                if _DIGEST_RE.fullmatch(name) and name[:2] == shard.name and path.is_file():
                    yield path, name

    def _iter_temp_paths(self) -> Iterator[Path]:
        for shard in self._iter_shards():
            for path in sorted(shard.iterdir()):
                if path.name.startswith(TEMP_PREFIX) and path.is_file():
                    yield path
