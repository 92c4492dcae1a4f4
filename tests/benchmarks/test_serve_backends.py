"""Which GGUF the serve_backends benchmark measures as the student (#23 item 3): the trained
student from a .gguf, a run folder's export or a student folder; the untrained stand-in only
when none is given."""

from __future__ import annotations

import pytest

from apidistill.errors import ConfigError
from benchmarks.serve_backends import student_gguf


def test_without_a_student_the_untrained_base_stands_in(tmp_path):
    from apidistill.testing.llamacpp_server import embedded_gguf

    path, kind = student_gguf(None, tmp_path)
    assert path == embedded_gguf() and kind.startswith("untrained stand-in")


def test_a_gguf_file_or_a_run_folder_export_is_the_student(tmp_path):
    gguf = tmp_path / "s.gguf"
    gguf.write_bytes(b"GGUF")
    assert student_gguf(str(gguf), tmp_path / "out")[0] == gguf
    run = tmp_path / "run"
    (run / "export" / "gguf").mkdir(parents=True)
    q8 = run / "export" / "gguf" / "demo-q8_0.gguf"
    q8.write_bytes(b"GGUF")
    (run / "export" / "gguf" / "demo-f16.gguf").write_bytes(b"GGUF")
    path, kind = student_gguf(str(run), tmp_path / "out")
    assert path == q8 and kind.startswith("trained student")


def test_a_missing_student_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no such GGUF file or folder"):
        student_gguf(str(tmp_path / "nope"), tmp_path)
