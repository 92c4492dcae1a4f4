"""Bad input, fuzzed: run files, prompt files and provider responses.

Each property: the input is accepted, or refused with *the* apidistill error for it
(ConfigError for run files, DataError with a line or a skip count for prompt files, a
TeacherError subclass or a recorded failure for provider answers) — never another exception,
never a hang. Provider answers are served over real loopback HTTP to the real client.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rel_helpers import make_requests

from apidistill.config import RunConfig, parse_config
from apidistill.errors import ConfigError, DataError, TeacherError
from apidistill.harvest import HarvestOptions, RetryPolicy, harvest
from apidistill.pipeline.teacher_requests import load_prompts
from apidistill.records import GenerationParams, Message, TeacherRequest
from apidistill.teachers.openai import OpenAITeacher
from apidistill.teachers.profiles import server_profile
from apidistill.testing import provider_payloads as pp
from apidistill.testing.threaded_chat import ThreadedChatServer

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

VALID_RUN = """\
name: fuzz
run_dir: runs/{name}
teacher:
  provider: openai_compatible
  model: fault-model
  base_url: http://127.0.0.1:9/v1
  api_key_env: FUZZ_API_KEY
  price: {input_per_mtok: 1, output_per_mtok: 2}
prompts:
  path: prompts.jsonl
  id_field: id
  label_field: label
  skip_invalid: false
policy:
  use: internal
  acknowledge_unknown: fuzz
budget:
  usd: 5
  per_day_usd: 1
harvest:
  concurrency: 8
  rpm: 600
  max_tokens: 32
  temperature: 0.0
  logprobs: true
  top_logprobs: 5
  stop: ["\\n\\n"]
dataset:
  dedupe: exact
  filters: {drop_truncated: true, max_output_chars: 400}
  splits: {train: 0.8, validation: 0.0, test: 0.2, seed: 1}
student:
  model: smollm2-135m-instruct
  system_prompt: "Answer briefly."
training:
  method: logprob_kd
  lora: {r: 8, alpha: 16}
  kd: {loss: forward_kl, temperature: 1.0, top_k: 5}
  max_steps: 10
eval:
  scorer: exact
  thresholds: {agreement: 0.9}
serve:
  port: 8000
  max_queue: 64
"""

# --------------------------------------------------------------------------- run files

_ODD_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(
        ["{x}", "{name.__class__}", "{0}", "{", "..", "../../etc", "a/b", "a\x00b", "~", "\\", "."]
    ),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def _paths(node: Any, prefix: tuple = ()) -> Iterator[tuple]:
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


@st.composite
def structural_mutation(draw: st.DrawFn) -> str:
    """The valid run file with one to three values replaced, keys dropped or added."""
    data = yaml.safe_load(VALID_RUN)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(data) if p]
        path = draw(st.sampled_from(paths))
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["set", "drop", "add"]))
        if action == "drop":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(_ODD_SCALARS)
        else:
            parent[path[-1]] = draw(_ODD_SCALARS)
    return yaml.safe_dump(data, allow_unicode=True)


@st.composite
def textual_mutation(draw: st.DrawFn) -> str:
    """The valid run file with bytes cut, inserted or lines shuffled."""
    text = VALID_RUN
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["cut", "insert", "dup_line", "swap_lines"]))
        if kind in ("cut", "insert"):
            i = draw(st.integers(0, len(text)))
            if kind == "cut":
                text = text[:i] + text[i + draw(st.integers(1, 30)) :]
            else:
                junk = draw(st.text(alphabet=":-{}[]#&*!|>'\"%@` \n\tab{}0.\x00é", max_size=12))
                text = text[:i] + junk + text[i:]
        else:
            lines = text.splitlines()
            a, b = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            if kind == "dup_line":
                lines.insert(b, lines[a])
            else:
                lines[a], lines[b] = lines[b], lines[a]
            text = "\n".join(lines) + "\n"
    return text


def _accept_or_config_error(text: str) -> RunConfig | None:
    try:
        cfg = parse_config(text, file="run.yaml")
        # What every command does next with a parsed file: these must not blow up either.
        cfg.run_path  # noqa: B018
        cfg.resolve_path(cfg.prompts.path)
    except ConfigError as exc:
        assert exc.file == "run.yaml" and exc.message
        return None
    return cfg


def test_valid_run_file_parses() -> None:
    cfg = _accept_or_config_error(VALID_RUN)
    assert cfg is not None and cfg.harvest.top_logprobs == 5


@FUZZ
@given(text=st.one_of(structural_mutation(), textual_mutation()))
def test_fuzz_run_file_is_valid_or_config_error(text: str) -> None:
    _accept_or_config_error(text)


def test_yaml_alias_bomb_is_quick() -> None:
    """A 'billion laughs' file: refused or accepted in well under a second, not expanded."""
    lines = ['a0: &a0 ["x", "x"]']
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}]" for i in range(1, 30)]
    bomb = VALID_RUN.replace("stop: [", "stop: *a29\n  _x: [", 1)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError):
        parse_config("\n".join(lines) + "\n" + bomb, file="run.yaml")
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("name", ["..", "../x", "a/b", "a\\b", ".hidden", "", "a\x00b", "x\ny"])
def test_run_names_that_could_escape_are_refused(name: str) -> None:
    data = yaml.safe_load(VALID_RUN)
    data["name"] = name
    with pytest.raises(ConfigError) as err:
        parse_config(yaml.safe_dump(data), file="run.yaml")
    assert err.value.key == "name"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("run_dir", "{x}"),
        ("run_dir", "{0}"),
        ("run_dir", "runs/{"),
        ("run_dir", "{name.__class__}"),
        ("run_dir", "{name:>999999999}"),
        ("run_dir", "runs/{name}\x00"),
        ("prompts.path", "prompts\x00.jsonl"),
    ],
)
def test_run_paths_are_checked_when_parsed(key: str, value: str) -> None:
    """Every path a command derives from the file is a Path or a ConfigError, never a
    KeyError/ValueError from str.format or the OS (and never a 1 GB padded name)."""
    data = yaml.safe_load(VALID_RUN)
    section, _, field = key.rpartition(".")
    (data[section] if section else data)[field] = value
    with pytest.raises(ConfigError):
        _strict(yaml.safe_dump(data))


def _strict(text: str) -> RunConfig:
    cfg = parse_config(text, file="run.yaml")
    cfg.run_path  # noqa: B018
    cfg.resolve_path(cfg.prompts.path)
    return cfg


# --------------------------------------------------------------------------- prompt files

_GOOD = st.builds(
    lambda i, t: json.dumps({"id": f"g{i}", "text": t or "x", "label": "a"}),
    st.integers(0, 10**9),
    st.text(min_size=1, max_size=30).filter(lambda t: t.strip()),
)
_BAD = st.one_of(
    st.binary(max_size=40).map(lambda b: b"\xff" + b.replace(b"\n", b"")),  # not UTF-8
    st.one_of(st.integers(), st.lists(st.integers()), st.text(), st.none()).map(
        lambda v: json.dumps(v).encode()
    ),  # JSON, but not an object
    st.dictionaries(st.sampled_from(["txt", "input", "id"]), st.integers(), max_size=3).map(
        lambda d: json.dumps(d).encode()
    ),  # no text field
    st.sampled_from(["", " ", 5, [], [{"role": "robot", "content": 1}], {"a": 1}, True]).map(
        lambda v: json.dumps({"text": v}).encode()
    ),  # unusable text
    st.text(min_size=1, max_size=30).map(
        lambda t: json.dumps({"text": t + "!"})[:-2].encode()
    ),  # cut short
)


@st.composite
def prompt_lines(draw: st.DrawFn) -> list[tuple[bool, bytes]]:
    n = draw(st.integers(1, 12))
    out: list[tuple[bool, bytes]] = []
    used: set[str] = set()
    for _ in range(n):
        if draw(st.booleans()):
            line = draw(_GOOD)
            rid = json.loads(line)["id"]
            if rid in used:
                continue
            used.add(rid)
            out.append((True, line.encode()))
        else:
            out.append((False, draw(_BAD)))
    return out


def _run_with_prompts(folder: Path, body: bytes, suffix: str, skip: bool) -> RunConfig:
    (folder / f"prompts{suffix}").write_bytes(body)
    text = VALID_RUN.replace("prompts.jsonl", f"prompts{suffix}").replace(
        "skip_invalid: false", f"skip_invalid: {str(skip).lower()}"
    )
    text = text.replace("  label_field: label\n", "")
    return parse_config(text, file=str(folder / "run.yaml"))


@FUZZ
@given(lines=prompt_lines(), skip=st.booleans())
def test_fuzz_jsonl_prompts_line_or_skip_count(tmp_path: Path, lines, skip: bool) -> None:
    cfg = _run_with_prompts(tmp_path, b"\n".join(b for _, b in lines) + b"\n", ".jsonl", skip)
    good = sum(ok for ok, _ in lines)
    first_bad = next((i for i, (ok, _) in enumerate(lines, start=1) if not ok), None)
    try:
        batch = load_prompts(cfg)
    except DataError as exc:
        if first_bad is None:
            assert good == 0, exc  # only "no rows" may fail a file without bad lines
        elif not skip:
            assert exc.line == first_bad, (exc.line, first_bad, str(exc))
        else:
            assert good == 0, exc
        return
    assert first_bad is None or skip
    assert len(batch.requests) == good
    assert batch.skipped == len(lines) - good
    bad_lines = [i for i, (ok, _) in enumerate(lines, start=1) if not ok]
    assert [int(p.split(":")[1]) for p in batch.problems] == bad_lines


@FUZZ
@given(
    body=st.one_of(
        st.binary(max_size=200),
        st.text(alphabet='text,id"\n\r\x00ab;é', max_size=200).map(str.encode),
    ),
    suffix=st.sampled_from([".csv", ".parquet", ".jsonl"]),
    skip=st.booleans(),
)
def test_fuzz_prompt_file_garbage_is_data_error(tmp_path: Path, body, suffix, skip) -> None:
    cfg = _run_with_prompts(tmp_path, body, suffix, skip)
    try:
        batch = load_prompts(cfg)
    except DataError as exc:
        assert exc.file and exc.file.endswith(f"prompts{suffix}"), exc
        return
    assert batch.skipped >= 0 and len(batch.requests) + batch.skipped >= 1


# --------------------------------------------------------------------------- provider answers


class PayloadServer(ThreadedChatServer):
    """A loopback server answering every completion with whatever ``next`` holds."""

    def __init__(self) -> None:
        self.next: tuple[int, str, bytes] = (200, "application/json", b"{}")
        self.chooser: Any = None  # or a function giving each request its own answer
        super().__init__()

    async def chat(self, request: web.Request) -> web.Response:
        await request.read()
        status, ctype, body = self.chooser() if self.chooser else self.next
        return web.Response(status=status, body=body, headers={"content-type": ctype})


@pytest.fixture(scope="module")
def payload_server() -> Iterator[PayloadServer]:
    srv = PayloadServer()
    yield srv
    srv.close()


def _base_answer(top: int = 5) -> dict[str, Any]:
    body = {
        "model": "fault-model",
        "messages": [{"role": "user", "content": "hi"}],
        "logprobs": True,
        "top_logprobs": top,
        "max_tokens": 8,
    }
    return pp.openai_chat_completion(body)


_WEIRD = st.one_of(
    st.none(),
    st.just(math.nan),
    st.just(math.inf),
    st.just(-math.inf),
    st.just(-1e309),
    st.just(-9999.0),
    st.floats(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.text(max_size=8),
    st.lists(st.integers(0, 300), max_size=6),
    st.just([]),
    st.just({}),
)


@st.composite
def provider_answer(draw: st.DrawFn) -> tuple[int, str, bytes]:
    data = _base_answer()
    lp = data["choices"][0]["logprobs"]
    pristine = json.loads(json.dumps(lp["content"][0]))
    huge = draw(st.sampled_from(["none"] * 8 + ["content", "top"]))
    if huge == "content":  # thousands of positions for an 8-token answer
        lp["content"] = [pristine] * draw(st.integers(1000, 4000))
    elif huge == "top":  # thousands of alternatives at one position
        lp["content"][0]["top_logprobs"] = [{"token": "a", "logprob": -1.0, "bytes": [97]}] * 3000
    for _ in range(draw(st.integers(0, 4))):
        paths = [p for p in itertools.islice(_paths(lp), 300) if p]
        path = draw(st.sampled_from(paths))
        node = lp
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = draw(_WEIRD)
    raw = json.dumps(data, allow_nan=True).encode()
    if draw(st.booleans()):  # non-UTF-8 bytes inside the body
        i = draw(st.integers(0, len(raw)))
        raw = (
            raw[:i] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00"])) + raw[i:]
        )
    if draw(st.integers(0, 5)) == 0:
        raw = raw[: draw(st.integers(0, len(raw)))]
    ctype = draw(st.sampled_from(["application/json", "application/json", "text/html", ""]))
    status = draw(st.sampled_from([200, 200, 200, 201, 500, 429]))
    return status, ctype, raw


async def _one_call(base_url: str, profile: str) -> Any:
    teacher = OpenAITeacher(
        "fault-model", base_url=base_url, profile=server_profile(profile), timeout_s=10
    )
    req = TeacherRequest(
        messages=[Message(role="user", content="hi")],
        params=GenerationParams(max_tokens=8, logprobs=True, top_logprobs=5),
    )
    try:
        return await asyncio.wait_for(teacher.complete(req), 20)
    finally:
        await teacher.aclose()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(answer=provider_answer(), profile=st.sampled_from(["generic", "llamacpp", "vllm"]))
def test_fuzz_provider_answers_teacher_error_or_clean(payload_server, answer, profile) -> None:
    payload_server.next = answer
    try:
        resp = asyncio.run(_one_call(payload_server.base_url, profile))
    except TeacherError as exc:
        assert exc.message
        return
    comp = resp.completion
    assert isinstance(comp.text, str)
    for tok in comp.logprobs or []:  # whatever came in, what is kept is finite and sorted
        assert math.isfinite(tok.logprob)
        assert all(math.isfinite(t.logprob) for t in tok.top)


def _garbage(rng: random.Random) -> tuple[int, str, bytes]:
    """One broken answer: weird values in the logprobs, huge arrays, bad bytes, cut short."""
    data = _base_answer()
    lp = data["choices"][0]["logprobs"]
    weird = [None, math.nan, math.inf, -math.inf, -9999.0, "x", [], {}, 10**30, [1, 2]]
    for _ in range(rng.randint(0, 4)):
        paths = [p for p in _paths(lp) if p]
        path = rng.choice(paths)
        node = lp
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = rng.choice(weird)
    if rng.random() < 0.1 and isinstance(lp.get("content"), list) and lp["content"]:
        lp["content"] = lp["content"][:1] * 2000
    raw = json.dumps(data, allow_nan=True).encode()
    if rng.random() < 0.3:
        i = rng.randrange(len(raw))
        raw = raw[:i] + b"\xff\xfe" + raw[i:]
    if rng.random() < 0.15:
        raw = raw[: rng.randrange(len(raw))]
    return rng.choice([200, 200, 200, 500]), "application/json", raw


def test_garbage_answers_become_recorded_failures(payload_server, tmp_path: Path) -> None:
    """Through the engine: each garbage answer is a result with a reason, none hangs."""
    rng = random.Random(7)
    payload_server.chooser = lambda: _garbage(rng)

    async def run() -> list:
        teacher = OpenAITeacher(
            "fault-model",
            base_url=payload_server.base_url,
            profile=server_profile("generic"),
            timeout_s=5,
        )
        reqs = make_requests(40, tag="garbage")
        for r in reqs:
            r.params.logprobs, r.params.top_logprobs = True, 5
        out = []
        try:
            stream = harvest(
                reqs,
                teacher=teacher,
                journal=tmp_path / "j.sqlite",
                progress=False,
                options=HarvestOptions(
                    durable=False,
                    retry_policy=RetryPolicy(max_retries=1, timeout_s=5, initial_backoff_s=0.01),
                ),
            )
            async for r in stream:
                out.append(r)
        finally:
            await teacher.aclose()
        return out

    try:
        results = asyncio.run(asyncio.wait_for(run(), 120))
    finally:
        payload_server.chooser = None
    assert len(results) == 40
    reasons = {r.reason for r in results if not r.ok}
    assert reasons and reasons <= {"unavailable", "teacher_error", "rate_limited", "timeout"}
    assert any(r.ok for r in results)
    for r in results:
        assert r.ok or (r.reason and r.error), r


def test_unusable_logprobs_are_counted_in_records_and_summary(payload_server, tmp_path) -> None:
    """NaN / ±inf values are clamped (sampled token: -100) or left out (alternatives), and
    counted: in each harvested record, the CLI's summary and harvest_summary.json — also
    for answers a re-run takes from the journal."""
    from rel_helpers import run_cli, write_run

    data = _base_answer(top=5)
    content = data["choices"][0]["logprobs"]["content"]
    assert len(content) >= 2 and all(len(p["top_logprobs"]) >= 3 for p in content[:2])
    content[0]["logprob"] = math.nan
    content[1]["logprob"] = math.inf
    content[0]["top_logprobs"][1]["logprob"] = -math.inf
    content[1]["top_logprobs"][1]["logprob"] = math.nan
    content[1]["top_logprobs"][2]["logprob"] = math.inf
    payload_server.chooser = None
    payload_server.next = (200, "application/json", json.dumps(data, allow_nan=True).encode())
    run = write_run(tmp_path, base_url=payload_server.base_url, n_prompts=3)
    run.write_text(
        run.read_text(encoding="utf-8").replace(
            "max_retries: 3}", "max_retries: 0, logprobs: true, top_logprobs: 5}"
        ),
        encoding="utf-8",
    )
    root = tmp_path / "runs" / "rel"
    for _ in range(2):  # the second run answers every request from the journal
        done = run_cli("harvest", str(run), "--no-progress")
        assert done.returncode == 0, done.stdout + done.stderr
        summary = json.loads((root / "harvest_summary.json").read_text(encoding="utf-8"))
        assert (summary["logprobs_invalid"], summary["logprobs_dropped"]) == (6, 9), summary
        out = " ".join((done.stdout + done.stderr).split())
        assert "6 sampled token(s) stored as -100, 9 top alternative(s) left out" in out, out
    from apidistill.config import load_config
    from apidistill.pipeline.stages import RunContext, harvested_records

    records = harvested_records(RunContext.from_config(load_config(run), progress=False))
    assert len(records) == 3
    for rec in records:
        assert (rec.metadata["logprobs_invalid"], rec.metadata["logprobs_dropped"]) == (2, 3)
        assert rec.logprobs is not None and rec.logprobs[0].logprob == -100.0
        assert rec.logprobs[1].logprob == -100.0  # +inf is no probability either
        assert all(math.isfinite(t.logprob) for p in rec.logprobs for t in p.top)
