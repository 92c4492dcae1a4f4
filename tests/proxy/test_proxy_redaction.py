"""Redaction holds over the whole input space: a generated secret (email, phone number, API
key, Luhn-valid card number, a user pattern's match) embedded anywhere in a request or an
answer never reaches the capture file, in any of SQLite's files (main, -wal, -shm)."""

from __future__ import annotations

import tempfile
from decimal import Decimal
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apidistill.proxy.capture_store import CaptureStore, iter_captures
from apidistill.proxy.config import BUILTIN_REDACTIONS
from apidistill.proxy.redact import Redactor, luhn_ok

_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _luhn_complete(body: str) -> str:
    for d in "0123456789":
        if luhn_ok(body + d):
            return body + d
    raise AssertionError("unreachable")


emails = st.builds(
    lambda user, host, tld: f"{user}@{host}.{tld}",
    st.text("abcxyz0189._-+", min_size=1, max_size=12).filter(lambda s: s[0].isalnum()),
    st.text("abcxyz0189-", min_size=1, max_size=10).filter(lambda s: s[0].isalnum()),
    st.sampled_from(["com", "io", "co.uk", "org"]),
)
phones = st.builds(
    lambda cc, a, b, c, sep: f"+{cc}{sep}{a}{sep}{b}{sep}{c}",
    st.integers(1, 99), st.integers(100, 999), st.integers(100, 999), st.integers(1000, 9999),
    st.sampled_from([" ", "-", ".", ""]),
)  # fmt: skip
api_keys = st.builds(
    lambda prefix, body: prefix + body,
    st.sampled_from(
        ["sk-", "sk-proj-", "sk-ant-api03-", "ghp_", "gho_", "AKIA", "xoxb-", "AIza", "Bearer "]
    ),
    st.text(_ALNUM, min_size=20, max_size=40),
).map(lambda k: k if not k.startswith("AKIA") else "AKIA" + k[4:20].upper().ljust(16, "Q"))
api_keys = api_keys.map(lambda k: k if not k.startswith("AIza") else k.ljust(34, "Q"))
cards = st.builds(
    lambda first, rest, sep: sep.join(
        _luhn_complete(first + rest)[i : i + 4] for i in range(0, len(first + rest) + 1, 4)
    ),
    st.sampled_from(["4", "5", "37", "6011"]),
    st.text("0123456789", min_size=11, max_size=14),
    st.sampled_from(["", " ", "-"]),
)
secrets = st.one_of(emails, phones, api_keys, cards)
# surrounding text: anything printable, including digits and letters right next to the secret
filler = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=40)


def _embed(draw_before: str, secret: str, draw_after: str) -> str:
    return draw_before + secret + draw_after


@settings(max_examples=300, deadline=None)
@given(secret=secrets, before=filler, after=filler)
def test_a_secret_anywhere_in_a_string_is_masked(secret: str, before: str, after: str) -> None:
    out = Redactor(BUILTIN_REDACTIONS).text(_embed(before, secret, after))
    assert secret not in out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    secret=secrets,
    before=filler,
    after=filler,
    where=st.sampled_from(["user", "system", "tool", "answer"]),
)
def test_a_secret_never_reaches_the_capture_file(secret, before, after, where) -> None:  # type: ignore[no-untyped-def]
    text = _embed(before, secret, after)
    request = {"model": "m", "messages": [
        {"role": "system", "content": text if where == "system" else "be brief"},
        {"role": "user", "content": [{"type": "text", "text": text if where == "user" else "hi"}]},
    ], "tools": [{"type": "function", "function": {
        "name": "f", "description": text if where == "tool" else "d", "parameters": {}}}]}  # fmt: skip
    response = {"id": "x", "choices": [{"message": {"role": "assistant",
                "content": text if where == "answer" else "ok"}}]}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        store = CaptureStore(Path(tmp) / "c.sqlite", Redactor(BUILTIN_REDACTIONS))
        store.start("e1", route="r", api="openai", model="m", captured=True, request=request,
                    sampling={}, policy_decision_id=None, reserved_usd=Decimal(1))  # fmt: skip
        store.finish("e1", http_status=200, response=response, usage={}, cost_usd=Decimal(0))
        store.close()
        blob = b"".join(p.read_bytes() for p in Path(tmp).iterdir())
        assert secret.encode() not in blob
        assert len(list(iter_captures(Path(tmp) / "c.sqlite"))) == 1


def test_client_key_of_any_shape_is_removed_by_value() -> None:
    r = Redactor(BUILTIN_REDACTIONS)
    assert r.text("my key is zz-odd-shaped-key!", secrets=["zz-odd-shaped-key!"]) == (
        "my key is [REDACTED:api_key]"
    )


def test_structural_fields_and_plain_text_are_kept() -> None:
    r = Redactor(BUILTIN_REDACTIONS)
    obj = {"id": "chatcmpl-12345678901234", "model": "gpt-4o-mini", "content": "refund 3 items"}
    assert r.scrub(obj) == obj


def test_user_pattern_and_a_disabled_builtin() -> None:
    r = Redactor(["email"], [r"ACCT-\d+"])
    assert r.text("ACCT-77 a@b.io 4111111111111111") == (
        "[REDACTED:custom] [REDACTED:email] 4111111111111111"
    )


def _every_rule(red: Redactor, value: str, client_secrets: tuple[str, ...]) -> str:
    """The masking with every rule run on every string (what the skips must equal)."""
    from apidistill.errors import registered_secrets
    from apidistill.proxy import redact as r

    spans: list[tuple[int, int, str]] = []
    for secret in {*registered_secrets(), *(s for s in client_secrets if s and len(s) >= 6)}:
        start = value.find(secret)
        while start >= 0:
            spans.append((start, start + len(secret), "api_key"))
            start = value.find(secret, start + 1)
    spans += [(*m.span(), "api_key") for m in r._API_KEY.finditer(value)]
    spans += [(*m.span(), "email") for m in r._EMAIL.finditer(value)]
    spans += [(s, e, "card") for s, e in r._card_spans(value)]
    spans += [(s, e, "phone") for s, e in r._phone_spans(value)]
    for pattern in red.patterns:
        spans += [(*m.span(), "custom") for m in pattern.finditer(value) if m.end() > m.start()]
    out, last = [], 0
    for start, end, kind in r._merge(spans):
        out += [value[last:start], r.MASK.format(kind)]
        last = end
    return "".join([*out, value[last:]])


@given(
    parts=st.lists(st.one_of(secrets, filler, st.text("0123456789 -.()+@", max_size=20)),
                   max_size=5),
    client_key=st.text(_ALNUM, min_size=6, max_size=12),
)  # fmt: skip
def test_skipping_rules_that_cannot_match_masks_exactly_as_running_them_all(
    parts: list[str], client_key: str
) -> None:
    """The hot path skips the e-mail rule without an '@' and the phone/card rules without a
    digit, resolving the secrets once per record; over any text the result is unchanged."""
    red = Redactor(BUILTIN_REDACTIONS, [r"order-\d+"])
    value = "".join(parts) + client_key
    assert red.text(value, [client_key]) == _every_rule(red, value, (client_key,))
    record = {"messages": [{"role": "user", "content": value, value: [value, 3]}]}
    scrubbed = red.scrub(record, [client_key])["messages"][0]
    assert scrubbed["content"] == _every_rule(red, value, (client_key,))
    assert scrubbed[_every_rule(red, value, (client_key,))][0] == scrubbed["content"]
    # the same Redactor remembers keys' masks: a later record, another client key, a key that
    # holds the new key, and one that held the old one, still mask as every rule would
    other = client_key[::-1] + "Z"
    again = red.scrub([{value: 1}, {value + other: 2}], [other])
    assert [next(iter(d)) for d in again] == [_every_rule(red, value, (other,)),
                                              _every_rule(red, value + other, (other,))]  # fmt: skip
