"""Input token counts: OpenAI's published counts, the self-hosted chat template, the fallback."""

from __future__ import annotations

import pytest

from apidistill.config import TeacherConfig
from apidistill.costs.tokens import (
    TokenCounter,
    count_input_tokens,
    count_openai_chat_tokens,
    openai_encoding_name,
)
from apidistill.records import Message, TeacherRequest

# OpenAI cookbook, "How to count tokens with tiktoken", §6: these six messages are reported by
# the API as 124 prompt tokens for gpt-4o / gpt-4o-mini and 129 for gpt-3.5-turbo / gpt-4.
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]


@pytest.mark.parametrize(
    ("model", "published"),
    [("gpt-4o", 124), ("gpt-4o-mini", 124), ("gpt-4", 129), ("gpt-3.5-turbo", 129)],
)
def test_matches_token_counts_published_by_openai(model, published):
    assert count_openai_chat_tokens(COOKBOOK_MESSAGES, openai_encoding_name(model)) == published


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o-mini", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-4.5-preview", "o200k_base"),
        ("gpt-5-mini", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo-0125", "cl100k_base"),
        ("davinci-002", None),
    ],
)
def test_encoding_per_family(model, encoding):
    assert openai_encoding_name(model) == encoding


def test_a_finetune_counts_as_its_base_model():
    """``ft:<base>:<org>::<id>`` (the teacher of examples/migrate_finetune.yaml) uses its base
    model's encoding, counted exactly like the base model, not assumed."""
    ft = "ft:gpt-4.1-mini-2025-04-14:acme::B1x2y3"
    assert openai_encoding_name(ft) == "o200k_base"
    assert openai_encoding_name("ft:gpt-3.5-turbo-0125:acme::x") == "cl100k_base"
    req = _req(("system", "Support bot."), ("user", "Order #123 is late."))
    base = count_input_tokens(TeacherConfig(provider="openai", model="gpt-4.1-mini"), req)
    c = count_input_tokens(TeacherConfig(provider="openai", model=ft), req)
    assert (c.n, c.exact, c.method) == (base.n, base.exact, base.method)


def _req(*pairs: tuple[str, str]) -> TeacherRequest:
    return TeacherRequest(messages=[Message(role=r, content=c) for r, c in pairs])


def test_openai_request_count_is_the_cookbook_formula():
    t = TeacherConfig(provider="openai", model="gpt-4o-mini")
    req = _req(("system", "Be brief."), ("user", "Order #123 is late."))
    c = count_input_tokens(t, req)
    plain = [{"role": m.role, "content": m.content} for m in req.messages]
    assert c.n == count_openai_chat_tokens(plain, "o200k_base")
    assert c.exact and "o200k_base" in c.method


def test_teacher_tokenizer_may_name_an_openai_encoding():
    """A gateway or self-hosted server using cl100k_base: counted with that encoding, never
    loaded as a Hugging Face tokenizer (which would stop the run)."""
    req = _req(("user", "Order #123456 is late, the Alder Electric Kettle."))
    t = TeacherConfig(
        provider="openai_compatible",
        model="my-model",
        base_url="http://127.0.0.1:9/v1",
        tokenizer="cl100k_base",
    )
    c = count_input_tokens(t, req)
    plain = [{"role": m.role, "content": m.content} for m in req.messages]
    assert c.n == count_openai_chat_tokens(plain, "cl100k_base")
    assert "cl100k_base" in c.method
    text = TokenCounter(t).count_text("order_id: 123456")
    assert text.exact and text.method == "cl100k_base"


def test_newer_families_are_counted_but_flagged():
    req = _req(("user", "hello"))
    c = count_input_tokens(TeacherConfig(provider="openai", model="gpt-5"), req)
    assert not c.exact and "assumed" in c.method
    c = count_input_tokens(TeacherConfig(provider="openai", model="brand-new-model"), req)
    assert not c.exact and "unknown OpenAI model" in c.method


def test_completion_prompt_has_no_chat_overhead():
    t = TeacherConfig(provider="openai", model="gpt-4o")
    c = count_input_tokens(t, TeacherRequest(prompt="hello world"))
    assert c.n == 2


def test_shared_messages_are_encoded_once():
    t = TeacherConfig(provider="openai", model="gpt-4o")
    counter = TokenCounter(t)
    reqs = [_req(("system", "S" * 500), ("user", f"ticket {i}")) for i in range(50)]
    counts = counter.count_many(reqs)
    assert len({c.n for c in counts}) <= 2
    # system + user roles, one system text, 50 user texts
    assert len(counter._memo) == 2 + 1 + 50


def test_other_providers_are_approximated_and_say_so():
    t = TeacherConfig(provider="anthropic", model="claude-sonnet-4-5")
    c = count_input_tokens(t, _req(("user", "x" * 400)))
    assert not c.exact and "characters / 4" in c.method and c.n == 101  # (400 + 4) / 4


# --------------------------------------------------------------------------- self-hosted


@pytest.fixture(scope="module")
def smol():
    from apidistill.model_loading import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


def test_self_hosted_count_is_the_chat_template_exactly(smol):
    t = TeacherConfig(
        provider="openai_compatible",
        model="smollm2-135m-instruct",
        tokenizer="smollm2-135m-instruct",
        base_url="http://127.0.0.1:9/v1",
    )
    reqs = [
        _req(
            ("system", "Extract fields."),
            ("user", "Order #1: lamp"),
            ("assistant", "order_id: 1"),
            ("user", "Order 22 — Ñandú mug 😀"),
        ),
        _req(("user", "no system turn: the template adds its default one")),
        _req(("user", "<|im_end|> literal special-token text in content")),
    ]
    counts = TokenCounter(t).count_many(reqs)
    for req, c in zip(reqs, counts, strict=True):
        msgs = [m.model_dump() for m in req.messages]
        ids = smol.apply_chat_template(msgs, add_generation_prompt=True)["input_ids"]
        assert c.n == len(ids) and c.exact


def test_serve_block_implies_the_served_models_tokenizer(smol):
    t = TeacherConfig(
        provider="openai_compatible", model="teacher", launch={"model": "smollm2-135m-instruct"}
    )
    c = count_input_tokens(t, _req(("user", "hi")))
    assert c.exact and "smollm2-135m-instruct" in c.method


def test_prefix_tokens_self_hosted_and_openai(smol):
    prefix = [
        Message(role="system", content="Extract fields."),
        Message(role="user", content="a"),
        Message(role="assistant", content="b"),
    ]
    sample = TeacherRequest(messages=[*prefix, Message(role="user", content="the ticket")])
    hf = TokenCounter(
        TeacherConfig(
            provider="openai_compatible",
            model="m",
            tokenizer="smollm2-135m-instruct",
            base_url="http://127.0.0.1:1",
        )
    )
    head = smol.apply_chat_template([m.model_dump() for m in prefix], tokenize=False)
    assert hf.prefix_tokens(prefix, sample) == len(
        smol(head, add_special_tokens=False)["input_ids"]
    )
    oa = TokenCounter(TeacherConfig(provider="openai", model="gpt-4o"))
    total = oa.count(sample).n
    tail = oa.count(TeacherRequest(messages=[Message(role="user", content="the ticket")])).n
    assert oa.prefix_tokens(prefix, sample) == total - tail


@pytest.mark.slow
def test_matches_prompt_tokens_reported_by_apidistill_serve():
    """The acceptance check against the real server (skipped until serve/launcher.py exists)."""
    launcher = pytest.importorskip("apidistill.serve.launcher")
    import httpx2

    t = TeacherConfig(
        provider="openai_compatible",
        model="smollm2-135m-instruct",
        tokenizer="smollm2-135m-instruct",
        base_url="http://127.0.0.1:1",
    )
    req = _req(("system", "Extract fields."), ("user", "Order 778812: Aurora Yoga Mat missing."))
    expected = count_input_tokens(t, req).n
    handle = launcher.launch_server("smollm2-135m-instruct", port=0)
    try:
        base = handle.base_url.rstrip("/")
        base = base if base.endswith("/v1") else base + "/v1"
        r = httpx2.post(
            f"{base}/chat/completions",
            json={
                "model": "smollm2-135m-instruct",
                "messages": [m.model_dump() for m in req.messages],
                "max_tokens": 1,
            },
            timeout=120,
        )
    finally:
        stop = getattr(handle, "stop", None) or getattr(handle, "close", None)
        if stop is not None:
            stop()
        elif hasattr(handle, "__exit__"):
            handle.__exit__(None, None, None)
    r.raise_for_status()
    assert r.json()["usage"]["prompt_tokens"] == expected
