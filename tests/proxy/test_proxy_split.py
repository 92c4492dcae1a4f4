"""Split mode: a sticky share of traffic answered by the student, fallback to the teacher on
student failure, and ``apidistill proxy promote|rollback`` changing the share at run time."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import httpx2
import openai

from apidistill.proxy.capture_store import iter_captures
from apidistill.testing.proxy_teacher import ProxyTeacherProcess
from tests.proxy.conftest import CLIENT_KEY, proxy_settings

MESSAGES = [{"role": "user", "content": "Route me"}]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "apidistill", "proxy", *args],
                          capture_output=True, text=True, timeout=120, env=os.environ.copy())  # fmt: skip


def _received(t: ProxyTeacherProcess) -> int:
    return t.stats()["received"]


def test_promote_sticky_share_and_rollback(teacher, start_proxy, tmp_path) -> None:
    with ProxyTeacherProcess() as student:
        proxy = start_proxy(proxy_settings(
            teacher, tmp_path, split={"student_url": student.base_url, "model": "student"}
        ))  # fmt: skip
        oa = openai.OpenAI(base_url=proxy.base_url, api_key=CLIENT_KEY, max_retries=0)

        def send(user: str) -> str:
            t0, s0 = _received(teacher), _received(student)
            oa.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5,
                                       extra_headers={"X-Apidistill-User": user})  # fmt: skip
            assert _received(teacher) - t0 + _received(student) - s0 == 1
            return "student" if _received(student) > s0 else "teacher"

        assert {send(f"u{i}") for i in range(4)} == {"teacher"}  # share 0 at start
        done = _cli("promote", "--share", "0.5", "--url", proxy.root)
        assert done.returncode == 0 and "50%" in done.stdout, done.stderr
        sides = {f"user-{i}": send(f"user-{i}") for i in range(16)}
        assert set(sides.values()) == {"teacher", "student"}
        assert all(send(u) == side for u, side in sides.items())  # sticky per user
        assert student.last()["body"]["model"] == "student"
        assert student.last()["authorization"] is None  # the client's key stays with the teacher
        captured = list(iter_captures(tmp_path / "captures.sqlite"))
        assert len(captured) == 4 + 2 * list(sides.values()).count(
            "teacher"
        )  # student answers: not teacher data
        assert _cli("rollback", "--url", proxy.root).returncode == 0
        assert {send(u) for u in sides} == {"teacher"}
        assert httpx2.get(proxy.root + "/stats").json()["split"]["share"] == 0.0


def test_student_failure_falls_back_to_the_teacher(teacher, start_proxy, tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"  # nothing listens once closed
    proxy = start_proxy(
        proxy_settings(teacher, tmp_path, split={"student_url": dead, "share": 1.0})
    )
    oa = openai.OpenAI(base_url=proxy.base_url, api_key=CLIENT_KEY, max_retries=0)
    out = oa.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5)
    assert out.choices[0].message.content
    route = httpx2.get(proxy.root + "/stats").json()["routes"]["default"]
    assert route["student_fallbacks"] == 1 and route["captured"] == 1


def test_admin_rejects_bad_shares_and_split_off(teacher, start_proxy, tmp_path) -> None:
    proxy = start_proxy(proxy_settings(teacher, tmp_path))
    r = httpx2.post(proxy.root + "/admin/split", json={"share": 0.5})
    assert r.status_code == 409 and "split mode is off" in r.json()["error"]
    done = _cli("promote", "--share", "0.5", "--url", proxy.root)
    assert done.returncode != 0 and "split mode is off" in (done.stderr + done.stdout)
