"""Disk full and read-only output folders: a clear error naming the path, nothing damaged.

Where the test may mount file systems (root with CAP_SYS_ADMIN, as in CI's container), a
small tmpfs is mounted: it really fills up (ENOSPC) and is really remounted read-only (EROFS,
which binds root too, unlike chmod). Elsewhere the same tests run on a simulation, and say
so: ENOSPC is raised by patching the dataset writer's two write paths (write-ahead append,
shard write) inside ``apidistill.data.store``, and the read-only folder is a path under a
regular file (ENOTDIR).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from rel_helpers import make_requests, run_cli, write_run

from apidistill.data.shards import read_manifest, read_shard
from apidistill.data.store import load_records, save_records
from apidistill.errors import ApidistillError, DataError
from apidistill.harvest import JournalStore, harvest
from apidistill.records import Message, Record, TokenLogprob, TopLogprob
from apidistill.teachers.openai import OpenAITeacher


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path | None]:
    """A fresh tmpfs of ``size`` at ``where``; ``None`` when mounting is not allowed here."""
    where.mkdir(parents=True, exist_ok=True)
    if (
        os.geteuid() != 0
        or shutil.which("mount") is None
        or os.environ.get("APIDISTILL_TEST_NO_MOUNT")  # force the simulation
    ):
        yield None
        return
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
    )
    if done.returncode != 0:
        yield None
        return
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def remount_ro(where: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True, capture_output=True)


def fill(folder: Path, leave: int = 0) -> Path:
    """Write a filler file until the file system is full (minus about ``leave`` bytes)."""
    path = folder / f"filler-{uuid.uuid4().hex[:6]}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        st = os.statvfs(folder)
        target = max(0, st.f_bavail * st.f_frsize - leave)
        chunk = b"\0" * 65536
        written = 0
        with contextlib.suppress(OSError):
            while written < target:
                written += os.write(fd, chunk[: min(len(chunk), target - written)])
    finally:
        os.close(fd)
    return path


def checksums(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith((".lock", "-shm"))
    }


def verify_dataset(folder: Path) -> int:
    manifest = read_manifest(folder)
    for info in manifest.shards:
        read_shard(folder / info.file, info, verify=True)
    return sum(s.rows for s in manifest.shards)


# --------------------------------------------------------------------------- dataset write


def record(i: int) -> Record:
    toks = [f"w{(i + j) % 50}" for j in range(6)]
    lps = [
        TokenLogprob(
            token=t,
            bytes=list(t.encode()),
            logprob=-0.1 * (j + 1),
            top=[
                TopLogprob(token=f"w{(i + j + a) % 50}", logprob=-0.1 * (j + 1) - a)
                for a in range(5)
            ],
        )
        for j, t in enumerate(toks)
    ]
    return Record(
        id=f"r{i:05d}",
        messages=[Message(role="user", content=f"input {i} " + "x" * (i % 40))],
        completion="".join(toks),
        logprobs=lps,
        label=("a", "b", "c")[i % 3],
    )


def test_dataset_write_on_a_full_disk(tmp_path: Path, monkeypatch) -> None:
    """The dataset is written once from finished records: a full disk is a DataError that
    names the folder and the cause, and readers never see a half-written dataset (the
    manifest comes last). With space back, writing again stores every record once."""
    records = [record(i) for i in range(20_000)]
    with tmpfs(tmp_path / "mnt", "2m") as mnt:
        folder = (mnt or tmp_path) / "ds"
        filler = fill(mnt, leave=200_000) if mnt is not None else None
        if mnt is None:  # simulation: ENOSPC from the shard writer
            print("simulated ENOSPC (no tmpfs here)")
            import apidistill.data.store as store

            calls = {"n": 0}
            real_write = store.write_shard

            def write_shard(path, *args, **kw):
                calls["n"] += 1
                if calls["n"] > 2:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
                return real_write(path, *args, **kw)

            monkeypatch.setattr(store, "write_shard", write_shard)
        with pytest.raises(DataError) as err:
            save_records(records, folder, shard_records=1000)
        assert str(folder) in str(err.value), err.value
        assert "space" in str(err.value).lower()
        with pytest.raises(DataError, match="not an apidistill dataset"):
            load_records(folder)  # no manifest: nothing half-written is ever read
        monkeypatch.undo()
        if filler is not None:
            filler.unlink()
        save_records(records[:2000], folder, shard_records=500, overwrite=True)
        ids = [r.id for r in load_records(folder)]
        assert ids == [r.id for r in records[:2000]]
        assert verify_dataset(folder) == len(ids)
        assert len(list(folder.glob("*.parquet"))) == 4  # the failed write left no shard


# --------------------------------------------------------------------------- journal


async def test_journal_disk_full_mid_harvest(fault, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt", "16m") as mnt:
        if mnt is None:
            pytest.skip("needs a real small file system (mount) to fill SQLite's files")
        srv = fault(latency_ms=1)
        journal = mnt / "journal.sqlite"
        teacher = OpenAITeacher("fault-model", base_url=srv.base_url)
        first = await harvest(
            make_requests(100, tag="a"), teacher=teacher, journal=journal, progress=False
        )
        assert first.done == 100
        store = JournalStore(journal, readonly=True)
        before = {r.key: r.completion_json for r in store.rows()}
        store.close()
        filler = fill(mnt, leave=150_000)
        teacher = OpenAITeacher("fault-model", base_url=srv.base_url)
        with pytest.raises(ApidistillError) as err:
            await harvest(
                make_requests(4000, tag="b"), teacher=teacher, journal=journal, progress=False
            )
        await teacher.aclose()
        assert str(journal) in str(err.value), err.value
        assert "not an apidistill journal" not in str(err.value)  # never "start afresh"
        filler.unlink()
        # opening on a completely full disk: a clear error, not "this is not a journal"
        filler = fill(mnt)
        teacher = OpenAITeacher("fault-model", base_url=srv.base_url)
        with pytest.raises(ApidistillError) as err:
            await harvest(make_requests(5, tag="c"), teacher=teacher, journal=journal)
        await teacher.aclose()
        assert str(journal) in str(err.value)
        assert "not an apidistill journal" not in str(err.value), err.value
        filler.unlink()
        store = JournalStore(journal, readonly=True)
        try:
            assert store.integrity_errors() == []
            after = {r.key: r.completion_json for r in store.rows()}
        finally:
            store.close()
        assert {k: after[k] for k in before} == before  # answers paid for are intact
        teacher = OpenAITeacher("fault-model", base_url=srv.base_url)
        again = await harvest(
            make_requests(100, tag="a"), teacher=teacher, journal=journal, progress=False
        )
        assert again.cached == 100 and again.sends == 0
        remount_ro(mnt)  # a read-only folder: the writer refuses clearly, readers still read
        for path in (journal, mnt / "new.sqlite"):
            with pytest.raises(ApidistillError) as err:
                JournalStore(path)
            assert str(path) in str(err.value)
            assert "not an apidistill journal" not in str(err.value), err.value


# --------------------------------------------------------------------------- CLI


def _clean_failure(done: subprocess.CompletedProcess[str], where: Path, how: str) -> None:
    """Exit status 2, one message naming the folder, no traceback."""
    assert done.returncode == 2, (how, done.stdout[-1000:], done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "error" in done.stderr and str(where) in done.stderr.replace("\n", ""), done.stderr


def test_cli_disk_full_then_read_only_run_folder(fault, tmp_path: Path) -> None:
    srv = fault(latency_ms=1)
    with tmpfs(tmp_path / "mnt", "16m") as mnt:
        if mnt is not None:
            run = write_run(mnt / "proj", base_url=srv.base_url, n_prompts=20)
            done = run_cli("harvest", str(run), "--no-progress")
            assert done.returncode == 0, done.stderr[-2000:]
            root = mnt / "proj" / "runs" / "rel"
            before = checksums(root)
            filler = fill(mnt)
            full = run_cli("harvest", str(run), "--no-progress")
            _clean_failure(full, root, "tmpfs full (ENOSPC)")
            filler.unlink()
            assert checksums(root) == before
            remount_ro(mnt)
            how = "tmpfs remounted read-only (EROFS)"
        else:
            run = write_run(tmp_path / "proj", base_url=srv.base_url, n_prompts=20)
            (tmp_path / "proj" / "runs").write_text("a file where the run folder should be")
            root = tmp_path / "proj" / "runs" / "rel"
            before = {}
            how = "run folder under a regular file (ENOTDIR)"
        print(how)
        failed = run_cli("harvest", str(run), "--no-progress")
        _clean_failure(failed, root, how)
        if mnt is not None:
            assert checksums(root) == before
