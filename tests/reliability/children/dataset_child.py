"""Child process: write records ``0..n-1`` with DatasetWriter, resuming after a crash.

Usage: python dataset_child.py FOLDER N ACK_FILE. Ids already stored are skipped; after each
``write`` returns, the id is appended to ACK_FILE (so the parent knows what was written).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from apidistill.data.schema import Message, Record, TokenLogprob, TopLogprob
from apidistill.data.store import DatasetWriter


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


def main() -> None:
    folder, n, ack_path = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    ack = os.open(ack_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    with DatasetWriter(folder, shard_records=64, on_damage=lambda m: None) as writer:
        have = writer.ids()
        os.write(1, f"ready {len(have)}\n".encode())
        for i in range(n):
            rec = record(i)
            if rec.id in have:
                continue
            writer.write(rec)
            os.write(ack, f"{rec.id}\n".encode())
            if i % 8 == 7:  # paced so the parent can stop it at a chosen record count
                time.sleep(0.004)
    os.write(1, b"done\n")


if __name__ == "__main__":
    main()
