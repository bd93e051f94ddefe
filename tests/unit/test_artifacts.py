"""The artifact store: content addressing, verification before unpickling, atomic writes, orphans."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from retrain.artifacts import (
    DEFAULT_DIR_MODE,
    DEFAULT_FILE_MODE,
    TEMP_PREFIX,
    ArtifactRef,
    ArtifactStore,
    DiskUsage,
    parse_dir_mode,
    parse_file_mode,
)
from retrain.core.errors import ArtifactError

REPO = Path(__file__).resolve().parents[2]


class _CreatesMarkerWhenUnpickled:
    """Unpickling this calls open(marker, 'w'): proof that a payload was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _overwrite(path: Path, data: bytes) -> None:
    # Final files are read-only by design; an attacker or a bit flip does not care.
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    path.write_bytes(data)


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(f"{TEMP_PREFIX}*") if p.is_file()]


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


# -- content addressing ----------------------------------------------------------------


def test_put_bytes_stores_under_sharded_digest_path(store: ArtifactStore) -> None:
    # Given some bytes
    data = b"model weights"
    digest = hashlib.sha256(data).hexdigest()

    # When they are stored
    ref = store.put_bytes(data)

    # Then they live at root/<sha[:2]>/<sha>, read-only, and read back identically
    assert ref == ArtifactRef(sha256=digest, size=len(data), path=store.root / digest[:2] / digest)
    assert ref.path.read_bytes() == data
    assert stat.S_IMODE(ref.path.stat().st_mode) & 0o222 == 0
    assert store.exists(digest)
    assert store.get_bytes(digest) == data
    assert _temp_files(store.root) == []


def test_second_put_of_same_bytes_is_a_noop_that_refreshes_mtime(store: ArtifactStore) -> None:
    # Given an artifact whose file looks old
    ref = store.put_bytes(b"same")
    os.utime(ref.path, (1_000_000, 1_000_000))
    inode = ref.path.stat().st_ino

    # When the same bytes are put again
    again = store.put_bytes(b"same")

    # Then nothing is rewritten (same file), but the grace period restarts
    assert again == ref
    assert ref.path.stat().st_ino == inode
    assert ref.path.stat().st_mtime > 1_000_000
    assert list(store.iter_digests()) == [ref.sha256]


def test_put_replaces_a_corrupt_copy_with_the_good_bytes(store: ArtifactStore) -> None:
    # Given a stored artifact that was later damaged on disk
    ref = store.put_bytes(b"good bytes")
    _overwrite(ref.path, b"bad bytes!")

    # When the good bytes are put again
    store.put_bytes(b"good bytes")

    # Then the copy is repaired
    assert store.get_bytes(ref.sha256) == b"good bytes"


def test_small_sklearn_model_round_trips(store: ArtifactStore) -> None:
    # Given a small fitted model
    rng = np.random.default_rng(7)
    X = rng.normal(size=(60, 3))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    model = LogisticRegression().fit(X, y)

    # When it is stored and loaded back
    ref = store.put_object(model)
    loaded = store.load_object(ref.sha256)

    # Then it predicts exactly as before, and storing it again names the same artifact
    assert isinstance(loaded, LogisticRegression)
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    assert store.put_object(model).sha256 == ref.sha256


# -- verification ------------------------------------------------------------------------


def test_a_flipped_byte_is_refused_naming_both_digests_and_the_path(store: ArtifactStore) -> None:
    # Given a stored artifact with one byte flipped on disk
    ref = store.put_object({"w": list(range(50))})
    data = bytearray(ref.path.read_bytes())
    data[len(data) // 2] ^= 0x01
    _overwrite(ref.path, bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()

    # When it is read or loaded, Then it is refused with a message that says why
    for read in (store.get_bytes, store.load_object):
        with pytest.raises(ArtifactError) as err:
            read(ref.sha256)
        message = str(err.value)
        assert ref.sha256 in message and actual in message and str(ref.path) in message


def test_a_missing_artifact_raises_artifact_error(store: ArtifactStore) -> None:
    # Given a digest that was never stored
    digest = hashlib.sha256(b"never stored").hexdigest()

    # When it is loaded, Then the error names the digest and the path
    with pytest.raises(ArtifactError, match=f"{digest}.*missing.*{store.path_for(digest)}"):
        store.load_object(digest)
    assert not store.exists(digest)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "ABC", "A" * 64, "g" * 64, ""])
def test_something_that_is_not_a_digest_is_refused(store: ArtifactStore, bad: str) -> None:
    # Given a name that is not 64 lowercase hex characters, When it is used, Then it is refused
    with pytest.raises(ArtifactError, match="not a sha256"):
        store.get_bytes(bad)


def test_a_tampered_pickle_payload_is_refused_and_never_unpickled(store: ArtifactStore, tmp_path: Path) -> None:
    # Given a payload whose unpickling creates a marker file, and proof that it really would
    marker = tmp_path / "executed"
    payload = pickle.dumps(_CreatesMarkerWhenUnpickled(marker))
    probe = tmp_path / "probe.pkl"
    probe.write_bytes(payload)
    joblib.load(probe)
    assert marker.exists(), "the payload must execute when loaded, or this test proves nothing"
    marker.unlink()

    # And a legitimate artifact whose file is overwritten with that payload
    ref = store.put_object({"legit": True})
    _overwrite(ref.path, payload)

    # When the artifact is loaded by its original digest
    with pytest.raises(ArtifactError, match="corrupt"):
        store.load_object(ref.sha256)

    # Then the payload was never unpickled
    assert not marker.exists()


def test_load_object_unpickles_the_verified_bytes_not_the_file(store: ArtifactStore, tmp_path: Path) -> None:
    # Given a store whose file is swapped for a malicious payload right after verification
    marker = tmp_path / "executed"
    payload = pickle.dumps(_CreatesMarkerWhenUnpickled(marker))

    class SwapAfterCheck(ArtifactStore):
        def get_bytes(self, sha256: str) -> bytes:
            data = super().get_bytes(sha256)
            _overwrite(self.path_for(sha256), payload)
            return data

    racy = SwapAfterCheck(store.root)
    ref = racy.put_object({"legit": True})

    # When it is loaded
    obj = racy.load_object(ref.sha256)

    # Then the verified object comes back and the swapped-in payload never ran
    assert obj == {"legit": True}
    assert not marker.exists()


# -- atomicity -------------------------------------------------------------------------


def test_an_exception_mid_write_leaves_nothing_under_the_final_name(tmp_path: Path) -> None:
    # Given a store whose disk fails after the bytes are written but before they are published
    temps_seen: list[list[Path]] = []

    def failing_fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            temps_seen.append(_temp_files(store.root))
            raise OSError("simulated I/O error")
        os.fsync(fd)

    store = ArtifactStore(tmp_path / "a", fsync=failing_fsync)
    data = b"x" * 10_000
    digest = hashlib.sha256(data).hexdigest()

    # When a put fails
    with pytest.raises(OSError, match="simulated"):
        store.put_bytes(data)

    # Then the failure came while the bytes sat in a temp file
    assert [len(t) for t in temps_seen] == [1]
    # And no file exists under the final name, and the temp was cleaned up
    assert not store.path_for(digest).exists()
    assert not store.exists(digest)
    assert list(store.iter_digests()) == []
    assert _temp_files(store.root) == []


def test_a_crash_mid_write_leaves_only_a_temp_that_collect_orphans_removes(tmp_path: Path) -> None:
    # Given a process that dies (no cleanup runs) between writing the bytes and publishing them
    root = tmp_path / "a"
    data = b"half-trained" * 1000
    digest = hashlib.sha256(data).hexdigest()
    script = textwrap.dedent(
        f"""
        import os, stat
        from pathlib import Path
        from retrain.artifacts import ArtifactStore

        def die_on_file_fsync(fd):
            # Directories are fsynced normally; the process dies once the bytes are written.
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os._exit(17)
            os.fsync(fd)

        store = ArtifactStore(Path({str(root)!r}), fsync=die_on_file_fsync)
        store.put_bytes({data!r})
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=30)
    assert done.returncode == 17, done.stderr.decode()

    # Then nothing is visible under the final name; only a temp file remains
    store = ArtifactStore(root)
    assert not store.path_for(digest).exists()
    assert list(store.iter_digests()) == []
    (temp,) = _temp_files(root)
    assert store.disk_usage().temp_files == 1

    # When orphans are collected inside the grace period, Then the temp stays
    mtime = temp.stat().st_mtime
    assert store.collect_orphans(set(), older_than_s=3600, now_ts=mtime + 10) == []
    assert temp.exists()

    # When orphans are collected after the grace period, Then the temp is gone
    assert store.collect_orphans(set(), older_than_s=3600, now_ts=mtime + 3601) == []
    assert _temp_files(root) == []


# -- housekeeping ----------------------------------------------------------------------


def test_collect_orphans_respects_the_grace_period_and_the_referenced_set(store: ArtifactStore) -> None:
    # Given three artifacts written an hour apart (mtimes 0 h, 1 h, 2 h), one of them referenced
    t0 = 1_700_000_000.0
    old_referenced = store.put_bytes(b"referenced")
    old_orphan = store.put_bytes(b"orphan")
    young_orphan = store.put_bytes(b"young orphan")
    os.utime(old_referenced.path, (t0, t0))
    os.utime(old_orphan.path, (t0, t0))
    os.utime(young_orphan.path, (t0 + 7200, t0 + 7200))

    # When orphans older than one hour are collected at t0 + 2 h
    removed = store.collect_orphans({old_referenced.sha256}, older_than_s=3600, now_ts=t0 + 7200)

    # Then only the old unreferenced artifact is removed
    assert removed == [old_orphan.sha256]
    assert sorted(store.iter_digests()) == sorted([old_referenced.sha256, young_orphan.sha256])

    # And a second collection removes nothing more
    assert store.collect_orphans({old_referenced.sha256}, older_than_s=3600, now_ts=t0 + 7200) == []


def test_collect_orphans_leaves_files_it_does_not_recognise(store: ArtifactStore) -> None:
    # Given a file that is neither an artifact nor a temp, in a shard and in the root
    ref = store.put_bytes(b"a")
    stray = ref.path.parent / "README"
    stray.write_text("operator notes")
    (store.root / "notes.txt").write_text("x")

    # When everything is collected
    removed = store.collect_orphans(set(), older_than_s=0, now_ts=ref.path.stat().st_mtime + 1e9)

    # Then only the artifact went
    assert removed == [ref.sha256]
    assert stray.exists() and (store.root / "notes.txt").exists()


def test_delete_iter_and_disk_usage(store: ArtifactStore) -> None:
    # Given two artifacts
    a = store.put_bytes(b"a" * 100)
    b = store.put_bytes(b"b" * 50)

    # Then they are listed in order and counted
    assert list(store.iter_digests()) == sorted([a.sha256, b.sha256])
    assert store.disk_usage() == DiskUsage(artifacts=2, artifact_bytes=150, temp_files=0, temp_bytes=0)

    # When one is deleted (twice)
    assert store.delete(a.sha256) is True
    assert store.delete(a.sha256) is False

    # Then it is gone and the other remains
    assert not store.exists(a.sha256)
    assert list(store.iter_digests()) == [b.sha256]
    assert store.disk_usage().total_bytes == 50


def test_collect_orphans_refuses_a_negative_grace_period(store: ArtifactStore) -> None:
    with pytest.raises(ValueError):
        store.collect_orphans(set(), older_than_s=-1, now_ts=0.0)


def test_find_orphans_lists_what_collect_would_remove_with_sizes_and_removes_nothing(store: ArtifactStore) -> None:
    # Given an old orphan, an old referenced artifact and a young orphan
    t0 = 1_700_000_000.0
    orphan, kept, young = store.put_bytes(b"orphan!"), store.put_bytes(b"kept"), store.put_bytes(b"young")
    for ref, t in ((orphan, t0), (kept, t0), (young, t0 + 7200)):
        os.utime(ref.path, (t, t))

    # When the orphans are listed (a dry run)
    found = store.find_orphans({kept.sha256}, older_than_s=3600, now_ts=t0 + 7200)

    # Then only the old orphan is named, with its size, and it is still there
    assert found == [ArtifactRef(orphan.sha256, len(b"orphan!"), orphan.path)]
    assert store.exists(orphan.sha256)
    assert store.size(orphan.sha256) == 7 and store.size("0" * 64) is None


def test_collect_temp_removes_only_stale_unfinished_writes(store: ArtifactStore) -> None:
    # Given a stale and a fresh temp file of unfinished writes, beside a finished artifact
    ref = store.put_bytes(b"done")
    stale, fresh = ref.path.parent / f"{TEMP_PREFIX}a", ref.path.parent / f"{TEMP_PREFIX}b"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    os.utime(stale, (1_000.0, 1_000.0))
    os.utime(fresh, (9_000.0, 9_000.0))

    # When temp files older than an hour are collected
    n = store.collect_temp(older_than_s=3600, now_ts=9_000.0)

    # Then the stale one is gone; the fresh one and the artifact stay
    assert n == 1 and not stale.exists() and fresh.exists() and store.exists(ref.sha256)
    with pytest.raises(ValueError):
        store.collect_temp(older_than_s=-1, now_ts=0.0)


# -- modes -----------------------------------------------------------------------------


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
def test_files_and_the_folders_the_store_creates_are_private_whatever_the_umask(tmp_path: Path, mask: int) -> None:
    # Given a umask (0 would make everything world-writable), and a root two missing folders deep
    root = tmp_path / "srv" / "retrain" / "artifacts"
    with _umask(mask):
        # When a store is made there and an artifact is put
        store = ArtifactStore(root)
        ref = store.put_bytes(b"desk's model")

    # Then the file is read-only for owner and group, and every folder created is 0750
    assert _mode(ref.path) == DEFAULT_FILE_MODE == 0o440
    for folder in (tmp_path / "srv", tmp_path / "srv" / "retrain", root, ref.path.parent):
        assert _mode(folder) == DEFAULT_DIR_MODE == 0o750, folder
    assert store.get_bytes(ref.sha256) == b"desk's model"


def test_configured_modes_are_applied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given modes set the way an operator sets them, and a permissive umask
    from retrain.context import Context
    from retrain.core.clock import SystemClock
    from retrain.settings import load_settings

    monkeypatch.delenv("RETRAIN_DATABASE_URL", raising=False)
    monkeypatch.setenv("RETRAIN_CONFIG", str(REPO / "retrain" / "examples" / "direction.toml"))
    monkeypatch.setenv("RETRAIN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RETRAIN_ARTIFACT_ROOT", str(tmp_path / "shared" / "artifacts"))
    monkeypatch.setenv("RETRAIN_ARTIFACT_FILE_MODE", "0400")
    monkeypatch.setenv("RETRAIN_ARTIFACT_DIR_MODE", "0770")
    with _umask(0):
        # When a process builds its context from the settings and stores an artifact
        ctx = Context.from_settings(load_settings(), SystemClock(), "test")
        ref = ctx.artifacts.put_bytes(b"weights")

    # Then the file and the folders have exactly the configured modes
    assert _mode(ref.path) == 0o400
    assert [_mode(d) for d in (tmp_path / "shared", ctx.artifacts.root, ref.path.parent)] == [0o770] * 3


def test_the_settings_default_to_the_store_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    from retrain.settings import load_settings

    monkeypatch.delenv("RETRAIN_ARTIFACT_FILE_MODE", raising=False)
    monkeypatch.delenv("RETRAIN_ARTIFACT_DIR_MODE", raising=False)
    s = load_settings()
    assert (s.artifact_file_mode, s.artifact_dir_mode) == (DEFAULT_FILE_MODE, DEFAULT_DIR_MODE)


def test_a_folder_that_already_exists_keeps_its_mode(tmp_path: Path) -> None:
    # Given a root an operator made (a mount point, say) with their own mode
    root = tmp_path / "artifacts"
    root.mkdir()
    os.chmod(root, 0o711)

    # When the store uses it, Then the store does not change it, only what it creates
    ref = ArtifactStore(root).put_bytes(b"x")
    assert _mode(root) == 0o711
    assert _mode(ref.path.parent) == 0o750


@pytest.mark.parametrize("value, mode", [("0440", 0o440), ("440", 0o440), ("0o400", 0o400), (" 0444 ", 0o444),
                                         (0o440, 0o440)])
def test_file_modes_are_octal_with_read_bits_only(value, mode) -> None:
    assert parse_file_mode(value) == mode


@pytest.mark.parametrize("value", ["0640", "0644", "0600", "0540", "0040", "0000", "04440", "rw-r-----", "0x1a0",
                                   "", "8", "-440", "99999", 0o10000, True])
def test_other_file_modes_are_refused(value) -> None:
    # Writable, executable, setuid, not readable by the owner, or not an octal mode at all
    with pytest.raises(ValueError, match="artifact file mode"):
        parse_file_mode(value)


@pytest.mark.parametrize("value, mode", [("0750", 0o750), ("700", 0o700), ("0770", 0o770), ("2750", 0o2750)])
def test_folder_modes_are_octal_and_let_the_owner_write(value, mode) -> None:
    assert parse_dir_mode(value) == mode


@pytest.mark.parametrize("value", ["0550", "0600", "0650", "750x", "0o", "12345"])
def test_other_folder_modes_are_refused(value) -> None:
    with pytest.raises(ValueError, match="artifact folder mode"):
        parse_dir_mode(value)


@pytest.mark.parametrize("name, value", [("RETRAIN_ARTIFACT_FILE_MODE", "0640"), ("RETRAIN_ARTIFACT_FILE_MODE", "rw"),
                                         ("RETRAIN_ARTIFACT_DIR_MODE", "0500")])
def test_a_bad_mode_setting_is_a_config_error_naming_the_variable(name, value, monkeypatch) -> None:
    from retrain.core.errors import ConfigError
    from retrain.settings import load_settings

    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings()


def test_a_store_refuses_bad_modes_given_directly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="only read bits"):
        ArtifactStore(tmp_path / "a", file_mode=0o640)
    assert not (tmp_path / "a").exists()
