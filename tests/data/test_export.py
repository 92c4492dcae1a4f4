"""Export to Hugging Face datasets (in memory and a local folder; never the hub in tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import make_record

from apidistill.data.export import export_local, to_hf_dataset, to_hf_dataset_dict
from apidistill.data.store import save_records, save_splits
from apidistill.errors import DataError


def test_hf_dataset_columns(tmp_path: Path) -> None:
    recs = [make_record(i, label="x", t=5, k=4) for i in range(3)] + [make_record(3)]
    save_records(recs, tmp_path / "ds")
    ds = to_hf_dataset(tmp_path / "ds")
    assert ds.num_rows == 4 and ds["id"] == ["r0", "r1", "r2", "r3"]
    row = ds[0]
    assert row["messages"][0]["role"] == "user"
    assert row["token_ids"] == [p.token_id for p in recs[0].logprobs]
    assert row["top_tokens"][1] == [t.token for t in recs[0].logprobs[1].top]
    assert row["top_logprobs"][1][0] == pytest.approx(recs[0].logprobs[1].top[0].logprob, rel=1e-3)
    assert ds[3]["token_ids"] is None


def test_dataset_dict_and_local_export(tmp_path: Path) -> None:
    recs = [make_record(i) for i in range(5)]
    for i, r in enumerate(recs):
        r.split = "train" if i < 4 else "test"
    save_splits(recs, tmp_path / "ds")
    (tmp_path / "ds" / "README.md").write_text("# card\n")
    dd = to_hf_dataset_dict(tmp_path / "ds")
    assert {k: v.num_rows for k, v in dd.items()} == {"train": 4, "test": 1}
    out = export_local(tmp_path / "ds", tmp_path / "hf")
    import datasets

    again = datasets.load_from_disk(str(out))
    assert again["test"]["id"] == ["r4"] and (out / "README.md").read_text() == "# card\n"


def test_mixed_split_dataset_is_refused(tmp_path: Path) -> None:
    recs = [make_record(0), make_record(1)]
    recs[0].split = "train"
    save_records(recs, tmp_path / "ds")
    with pytest.raises(DataError, match="mixes split and unsplit"):
        to_hf_dataset_dict(tmp_path / "ds")
