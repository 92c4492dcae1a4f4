"""Dataset store: round trip, checksums, versions, and folders of the write-ahead era."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import make_record

from apidistill.data.store import (
    dataset_status,
    iter_provenance,
    iter_token_arrays,
    load_records,
    record_ids,
    save_records,
    save_splits,
)
from apidistill.errors import DataError
from apidistill.records import Record


def _assert_same(a: Record, b: Record, *, rtol: float = 2**-10) -> None:
    assert a.model_dump(exclude={"logprobs"}) == b.model_dump(exclude={"logprobs"})
    if a.logprobs is None:
        assert b.logprobs is None
        return
    assert b.logprobs is not None and len(a.logprobs) == len(b.logprobs)
    for x, y in zip(a.logprobs, b.logprobs, strict=True):
        assert (x.token_id, x.token, x.bytes) == (y.token_id, y.token, y.bytes)
        assert y.logprob == pytest.approx(x.logprob, rel=rtol, abs=1e-7)
        assert len(x.top) == len(y.top)
        for u, v in zip(x.top, y.top, strict=True):
            assert (u.token_id, u.token, u.bytes) == (v.token_id, v.token, v.bytes)
            assert v.logprob == pytest.approx(u.logprob, rel=rtol, abs=1e-7)


def test_round_trip_top20_within_float16(tmp_path: Path) -> None:
    recs = [make_record(i, t=40, k=20, label="a") for i in range(12)]
    recs.append(make_record(50, t=25, k=20, with_ids=False))  # API teacher: bytes, no ids
    recs.append(make_record(51))  # no logprobs at all
    save_records(recs, tmp_path / "ds", shard_records=5)
    back = load_records(tmp_path / "ds")
    assert [r.id for r in back] == [r.id for r in recs]
    for a, b in zip(recs, back, strict=True):
        _assert_same(a, b)
    status = dataset_status(tmp_path / "ds")
    assert len(status.shards) == 3 and status.shard_rows == 14
    assert status.logprob_tokens == 12 * 40 + 25


def test_quirky_tokens_round_trip(tmp_path: Path) -> None:
    """llama.cpp-style quirks: bytes null, empty tokens, partial UTF-8 bytes, -9999, 0.0."""
    from apidistill.records import Message, TokenLogprob, TopLogprob

    lp = [
        TokenLogprob(token="", bytes=None, logprob=0.0, top=[TopLogprob(token="", logprob=0.0)]),
        TokenLogprob(
            token="\\xe2",
            bytes=[0xE2],
            logprob=-0.5,
            top=[
                TopLogprob(token="\\xe2", bytes=[0xE2], logprob=-0.5),
                TopLogprob(token="x", bytes=None, logprob=-9999.0),
            ],
        ),
        TokenLogprob(token="z", bytes=[122], logprob=-3.0, top=[]),
    ]
    rec = Record(id="q", messages=[Message(role="user", content="hi")], completion="z", logprobs=lp)
    save_records([rec], tmp_path / "ds")
    _assert_same(rec, load_records(tmp_path / "ds")[0])


def test_crash_after_shard_before_manifest(tmp_path: Path) -> None:
    """An orphan shard (renamed, but not yet in the manifest) is never read."""
    folder = tmp_path / "ds"
    save_records([make_record(1)], folder)
    shard = next(folder.glob("shard-*.parquet"))
    orphan = folder / "shard-00001-deadbeef.parquet"
    orphan.write_bytes(shard.read_bytes())
    assert [r.id for r in load_records(folder)] == ["r1"]


def test_damaged_shard_checksum_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    save_records([make_record(1)], folder)
    shard = next(folder.glob("shard-*.parquet"))
    blob = bytearray(shard.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    shard.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="checksum") as err:
        load_records(folder)
    assert shard.name in str(err.value)


def test_newer_store_version_fails_with_message(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    save_records([make_record(1)], folder)
    shard = next(folder.glob("shard-*.parquet"))
    pf = pq.ParquetFile(shard)
    meta = dict(pf.metadata.metadata)
    meta[b"apidistill.store_version"] = b"99"
    tbl = pf.read()
    with pq.ParquetWriter(shard, tbl.schema, store_schema=False) as w:
        w.add_key_value_metadata(meta)
        w.write_table(tbl)
    with pytest.raises(DataError, match=r"(?s)newer apidistill.*upgrade"):
        load_records(folder, verify=False)
    m = json.loads((folder / "manifest.json").read_text())
    m["store_version"] = 7
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="store format 7"):
        load_records(folder)


def test_a_folder_with_write_ahead_files_of_an_older_version_is_refused(tmp_path: Path) -> None:
    """Records still in write-ahead files would be silently missing: the folder is refused
    by name, and the hint says where the records are (the run's journal)."""
    folder = tmp_path / "ds"
    save_records([make_record(1)], folder)
    (folder / "wal").mkdir()
    (folder / "wal" / "20260101T000000-1-abcdef.wal").write_bytes(b"\x00" * 16)
    with pytest.raises(DataError, match="write-ahead files of an older apidistill") as err:
        load_records(folder)
    assert err.value.file == str(folder / "wal") and "journal" in (err.value.hint or "")
    (folder / "wal" / "20260101T000000-1-abcdef.wal").unlink()  # an empty wal/ is harmless
    assert [r.id for r in load_records(folder)] == ["r1"]


def test_not_a_dataset_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not an apidistill dataset"):
        load_records(tmp_path)
    with pytest.raises(DataError, match="unknown split"):
        load_records(tmp_path, split="dev")


def test_splits_token_arrays_and_ids(tmp_path: Path) -> None:
    recs = [make_record(i, t=6, k=8) for i in range(6)]
    for i, r in enumerate(recs):
        r.split = ["train", "test", "validation"][i % 3]
    counts = save_splits(recs, tmp_path / "ds")
    assert counts == {"train": 2, "test": 2, "validation": 2}
    assert [r.id for r in load_records(tmp_path / "ds", split="test")] == ["r1", "r4"]
    with pytest.raises(DataError, match="already holds"):
        save_splits(recs, tmp_path / "ds")
    arrays = dict(iter_token_arrays(tmp_path / "ds", split="train"))
    a = arrays["r0"]
    assert a is not None and a.topk_ids.shape == (6, 8)
    want = recs[0].logprobs
    assert a.ids.tolist() == [p.token_id for p in want]
    assert a.topk_ids[2].tolist() == [x.token_id for x in want[2].top]
    np.testing.assert_allclose(a.topk_logprobs[2], [x.logprob for x in want[2].top], rtol=1e-3)
    assert record_ids(tmp_path / "ds") == {r.id for r in recs}


def test_provenance_column_only_matches_full_records(tmp_path: Path) -> None:
    """The terms check reads provenance alone, every shard's records once, equal to what the
    full read gives; a damaged value names its shard row."""
    from apidistill.records import Provenance

    folder = tmp_path / "ds"
    recs = [make_record(i, t=4, k=5) for i in range(5)]
    recs[1].provenance = None
    recs[3].provenance = Provenance(provider="anthropic", model="claude-x", policy_decision_id="d1")
    save_records(recs, folder, shard_records=3)
    assert len(list(iter_provenance(folder))) == 5
    assert list(iter_provenance(folder)) == [r.provenance for r in load_records(folder)]
    assert [p.model if p else None for p in iter_provenance(folder)].count(None) == 1

    shard = next(folder.glob("shard-*.parquet"))
    table = pq.read_table(shard)
    col = table.column_names.index("provenance")
    bad = ["{not json", *table.column("provenance").to_pylist()[1:]]
    pq.write_table(table.set_column(col, "provenance", [bad]), shard)
    with pytest.raises(DataError, match=rf"{shard.name} row 1: stored provenance is malformed"):
        list(iter_provenance(folder))


def test_q8_codec_keeps_distribution(tmp_path: Path) -> None:
    recs = [make_record(i, t=30, k=20) for i in range(4)]
    save_records(recs, tmp_path / "ds", codec="q8")
    back = load_records(tmp_path / "ds")
    for a, b in zip(recs, back, strict=True):
        for x, y in zip(a.logprobs, b.logprobs, strict=True):
            assert [t.token_id for t in x.top] == [t.token_id for t in y.top]
            px = np.exp([t.logprob for t in x.top])
            py = np.exp([t.logprob for t in y.top])
            assert np.abs(px - py).max() < 0.02
