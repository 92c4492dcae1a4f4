"""``apidistill serve`` fails on bad input with one readable error (exit 2), not a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from apidistill.errors import ConfigError, ModelLoadError


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COLUMNS": "400", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "apidistill", "serve", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=full_env,
    )


def assert_one_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and lines[0].startswith("error:"), proc.stderr
    # The message itself is one line; a hint (what to do) may follow it on a second line.
    assert len(lines) <= 2, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_help_lists_the_options():
    proc = serve("--help")
    assert proc.returncode == 0
    for opt in (
        "--model",
        "--adapter",
        "--port",
        "--api-key-env",
        "--max-queue",
        "--max-body-bytes",
    ):
        assert opt in proc.stdout


def test_missing_model_folder_names_the_path(tmp_path):
    missing = tmp_path / "no-such-student"
    assert_one_error(serve("--model", str(missing)), str(missing))


def test_missing_adapter_folder_names_the_path(tmp_path):
    missing = tmp_path / "no-adapter"
    assert_one_error(serve("--adapter", str(missing)), str(missing), "adapter")


def test_a_gguf_that_is_not_a_model_names_the_path(tmp_path):
    fake = tmp_path / "broken.gguf"
    fake.write_bytes(b"GGUF" + os.urandom(64))
    assert_one_error(serve("--model", str(fake), "--port", "0"), str(fake))


def test_busy_port_and_missing_key_env_are_option_errors():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert_one_error(serve("--port", str(port)), "--port", str(port))
    proc = serve(
        "--api-key-env", "APIDISTILL_TEST_UNSET_KEY", env={"APIDISTILL_TEST_UNSET_KEY": ""}
    )
    assert_one_error(proc, "APIDISTILL_TEST_UNSET_KEY")


def test_launcher_raises_model_load_error_with_the_childs_message(tmp_path):
    from apidistill.serve.launcher import launch_server

    missing = tmp_path / "gone"
    with pytest.raises(ModelLoadError, match="gone"):
        launch_server(str(missing), startup_timeout=120)


def test_launch_servers_starts_all_at_once_and_stops_the_rest_when_one_fails(tmp_path, monkeypatch):
    """Eval starts base and student together (their loads overlap); a student that cannot
    start must not leave the base running."""
    from apidistill.serve import launcher

    spawned = []
    real = launcher._spawn

    def spawn(**kw):
        spawned.append(real(**kw))
        return spawned[-1]

    monkeypatch.setattr(launcher, "_spawn", spawn)
    with pytest.raises(ModelLoadError, match="gone"):
        launcher.launch_servers(
            {"model": str(tmp_path / "gone")}, {"model": "smollm2-135m-instruct"}
        )
    assert len(spawned) == 2  # both were started before the first was waited on
    assert all(p.proc.poll() is not None for p in spawned)


def test_launch_servers_gives_overlapping_loads_time_for_each(monkeypatch):
    from apidistill.serve import launcher

    waited: list[float] = []

    class _Fake:
        def wait(self, timeout: float):
            waited.append(timeout)
            return object()

    monkeypatch.setattr(launcher, "_spawn", lambda **kw: _Fake())
    launcher.launch_servers({"model": "a"}, {"model": "b"}, startup_timeout=60)
    assert waited == [120, 120]  # two loads share the CPU: each may take two loads' time


def test_command_checks_limits_before_loading_anything():
    from apidistill.cli.serve import _check_options

    with pytest.raises(ConfigError, match="--max-batch-size"):
        _check_options(0, 0, 1, 1, 1, 1024)
    with pytest.raises(ConfigError, match="--port"):
        _check_options(70000, 1, 1, 1, 1, 1024)
    _check_options(0, 1, 0, 1, 1, 1024)  # an empty queue is allowed


def test_backend_and_device_options_are_checked_before_loading(monkeypatch):
    assert_one_error(serve("--backend", "nope", "--port", "0"), "--backend", "nope")
    proc = serve("--device", "cuda", "--port", "0", env={"CUDA_VISIBLE_DEVICES": ""})
    assert_one_error(proc, "--device", "cuda")
    proc = serve("--backend", "vllm", "--port", "0")
    assert_one_error(proc, "--backend", "vllm")
