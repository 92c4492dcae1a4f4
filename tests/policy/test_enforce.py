"""Enforcement, recorded overrides, teacher routing, student re-checks and card rendering."""

from __future__ import annotations

import pytest

from apidistill.config import PolicyConfig, TeacherConfig
from apidistill.errors import ConfigError, PolicyDenied
from apidistill.policy.engine import (
    check_student_use,
    decide,
    decide_for_teacher,
    enforce,
    render_obligations_md,
    teacher_route,
)


def cfg(use: str = "commercial", **kw) -> PolicyConfig:
    return PolicyConfig(use=use, **kw)


# --------------------------------------------------------------------------- enforce


def test_allowed_decision_passes_unchanged():
    d = decide("deepseek", "deepseek-chat", "competing")
    assert enforce(d, cfg("competing")) is d


def test_deny_names_document_date_clause_and_what_to_do():
    d = decide("xai", "grok-4", "internal")
    with pytest.raises(PolicyDenied) as exc:
        enforce(d, cfg("internal"))
    msg = str(exc.value)
    assert "xAI Acceptable Use Policy" in msg and "2026-08-14" in msg
    assert "prohibition on distilling outputs" in msg
    assert "override_reference" in msg and "apidistill policy list" in msg
    assert "not legal advice" in msg
    assert exc.value.decision is d


def test_requires_authorization_needs_a_reference_and_records_it():
    d = decide("anthropic", "claude-sonnet-4-5", "internal")
    with pytest.raises(PolicyDenied, match="authorization_reference"):
        enforce(d, cfg("internal"))
    ok = enforce(d, cfg("internal", authorization_reference="Anthropic approval #1234"))
    assert ok.decision == "requires_authorization"  # what the terms say is kept
    assert ok.overridden_by == "authorization: Anthropic approval #1234"
    assert ok.overridden_at is not None and ok.permits and ok.id != d.id


def test_authorization_does_not_lift_a_deny():
    d = decide("openai", "gpt-4.1-mini", "competing")
    with pytest.raises(PolicyDenied):
        enforce(d, cfg("competing", authorization_reference="my manager said so"))


def test_unknown_needs_acknowledgement_which_is_recorded():
    d = decide("cohere", "command-a-03-2025", "internal")
    with pytest.raises(PolicyDenied, match="acknowledge_unknown"):
        enforce(d, cfg("internal"))
    ok = enforce(d, cfg("internal", acknowledge_unknown="J. Doe read the terms on 2026-11-20"))
    assert ok.overridden_by.startswith("acknowledged: J. Doe")
    unmatched = decide("acme", "mystery", "internal")
    with pytest.raises(PolicyDenied, match="no policy file covers"):
        enforce(unmatched, cfg("internal"))


def test_override_reference_lifts_a_deny_and_is_never_silent():
    d = decide("meta", "meta-llama/Meta-Llama-3-8B-Instruct", "commercial")
    ok = enforce(d, cfg(override_reference="Meta agreement LLM-2026-07"))
    assert ok.decision == "deny" and ok.overridden_by == "override: Meta agreement LLM-2026-07"
    md = render_obligations_md([ok])
    assert "override: Meta agreement LLM-2026-07" in md and "despite 'deny'" in md


def test_user_policy_file_wins_and_is_recorded(write_policy, make_policy):
    folder = write_policy("acme.yaml", make_policy(models='["gpt-4.1-*"]'))
    d = decide("openai", "gpt-4.1-mini", "commercial", extra_dirs=[folder])
    assert d.decision == "allow" and d.user_policy
    assert d.policy_file.endswith("acme.yaml") and d.document.startswith("ACME")
    # A use the agreement does not cover falls back to the built-in library.
    assert decide("openai", "gpt-4.1-mini", "competing", extra_dirs=[folder]).decision == "deny"
    # Without the folder the built-in answer stands.
    assert decide("openai", "gpt-4.1-mini", "commercial").decision == "requires_authorization"


def test_exact_name_beats_longer_glob_beats_shorter(write_policy, make_policy):
    write_policy("a.yaml", make_policy(pid="short", models='["gpt-*"]', decision="deny"))
    write_policy("b.yaml", make_policy(pid="long", models='["gpt-4.1-*"]', decision="unknown"))
    folder = write_policy("c.yaml", make_policy(pid="exact", models='["gpt-4.1-mini"]'))
    assert decide("openai", "gpt-4.1-mini", "commercial", extra_dirs=[folder]).policy_id == "exact"
    assert decide("openai", "gpt-4.1-nano", "commercial", extra_dirs=[folder]).policy_id == "long"
    assert decide("openai", "gpt-5", "commercial", extra_dirs=[folder]).policy_id == "short"


def test_channel_must_match(write_policy, make_policy):
    folder = write_policy("w.yaml", make_policy(channel="weights", models='["gpt-4.1-mini"]'))
    d = decide("openai", "gpt-4.1-mini", "commercial", channel="api", extra_dirs=[folder])
    assert not d.user_policy and d.channel == "api"


def test_equally_specific_disagreeing_matches_are_an_error(write_policy, make_policy):
    write_policy("a.yaml", make_policy(pid="a", channel="api", models='["x-1"]'))
    folder = write_policy(
        "b.yaml", make_policy(pid="b", channel="api", models='["x-1"]', decision="deny")
    )
    with pytest.raises(ConfigError, match="disagree"):
        decide("openai", "x-1", "commercial", extra_dirs=[folder])


def test_a_name_on_two_channels_gets_the_stricter_decision(write_policy, make_policy):
    write_policy("a.yaml", make_policy(pid="a", channel="api", models='["x-1"]'))
    folder = write_policy(
        "b.yaml", make_policy(pid="b", channel="weights", models='["x-*"]', decision="deny")
    )
    d = decide("openai", "x-1", "commercial", extra_dirs=[folder])
    # the api's exact name is more specific, yet the weights' deny is what could bind
    assert (d.decision, d.channel, d.policy_id) == ("deny", "weights", "b")
    assert "pass --channel" in d.reason and "api: allow" in d.reason
    assert decide("openai", "x-1", "commercial", channel="api", extra_dirs=[folder]).permits


@pytest.mark.parametrize(
    ("provider", "model", "use", "expected", "channel_given"),
    [
        # Cohere's API serves command-r-plus; its CC-BY-NC weights allow research, the API's
        # terms were not reviewed: without --channel, unknown (it used to be allowed).
        ("cohere", "command-r-plus", "research_noncommercial", "unknown", "allow_with_obligations"),
        # The Llama API forbids competing models; the Llama 4 weights license does not.
        (
            "meta",
            "Llama-4-Maverick-17B-128E-Instruct-FP8",
            "competing",
            "deny",
            "allow_with_obligations",
        ),
    ],
)
def test_hosted_and_open_weights_names_need_a_channel(
    provider, model, use, expected, channel_given
):
    d = decide(provider, model, use)
    assert d.decision == expected and d.channel == "api" and "weights:" in d.reason
    assert decide(provider, model, use, channel="weights").decision == channel_given


def test_gpt_oss_is_weights_only_without_a_channel():
    assert decide("openai", "gpt-oss-120b", "competing").channel == "weights"
    assert decide("openai", "gpt-4.1-mini", "competing").channel == "api"


# --------------------------------------------------------------------------- teacher routing


@pytest.mark.parametrize(
    ("provider", "base_url", "expected"),
    [
        ("openai", None, ("openai", "api")),
        ("anthropic", None, ("anthropic", "api")),
        ("openai", "https://api.openai.com/v1", ("openai", "api")),
        ("openai_compatible", "https://api.deepseek.com/v1", ("deepseek", "api")),
        ("openai", "https://api.deepseek.com", ("deepseek", "api")),
        ("openai_compatible", "https://api.mistral.ai/v1", ("mistral", "api")),
        ("openai_compatible", "https://api.x.ai/v1", ("xai", "api")),
        ("openai_compatible", "https://api.x.ai./v1", ("xai", "api")),  # fully qualified name
        ("openai", "https://API.OpenAI.com./v1", ("openai", "api")),
        (
            "openai_compatible",
            "https://generativelanguage.googleapis.com/v1beta/openai/",
            ("google", "api"),
        ),
        ("openai_compatible", "https://api.llama.com/compat/v1", ("meta", "api")),
        ("openai_compatible", "http://127.0.0.1:8000/v1", ("self_hosted", "weights")),
        ("openai_compatible", "http://localhost:11434/v1", ("self_hosted", "weights")),
        ("openai_compatible", "http://[::1]:8000/v1", ("self_hosted", "weights")),
        ("openai_compatible", "http://10.0.0.5:8000/v1", ("self_hosted", "weights")),
        ("openai_compatible", "https://api.together.xyz/v1", ("self_hosted", "weights")),
    ],
)
def test_teacher_route(provider, base_url, expected):
    t = TeacherConfig(provider=provider, model="m", base_url=base_url)
    assert teacher_route(t)[:2] == expected


def test_a_fully_qualified_host_is_the_same_teacher():
    """``api.x.ai.`` and ``api.x.ai`` are one server: one cache identity, one terms route."""
    from apidistill.teachers.urls import teacher_identity

    assert teacher_identity("openai", "https://API.x.ai./v1/") == teacher_identity(
        "openai", "https://api.x.ai/v1"
    )


def test_demo_teacher_is_allowed_as_apache_weights():
    t = TeacherConfig(provider="openai_compatible", model="smollm2-135m-instruct", launch={})
    d = decide_for_teacher(t, cfg("commercial"))
    assert d.decision == "allow" and d.channel == "weights"
    assert d.document == "Apache License 2.0" and "apidistill serve" in d.reason
    assert enforce(d, cfg("commercial")) is d


def test_decide_for_teacher_openai_and_anthropic():
    t = TeacherConfig(provider="openai", model="gpt-4.1-mini")
    assert decide_for_teacher(t, cfg("competing")).decision == "deny"
    t = TeacherConfig(provider="anthropic", model="claude-opus-4-1")
    assert decide_for_teacher(t, cfg("internal")).decision == "requires_authorization"


def test_third_party_host_checks_the_weights_license_and_says_so():
    t = TeacherConfig(
        provider="openai_compatible",
        model="meta-llama/Llama-3.3-70B-Instruct",
        base_url="https://api.together.xyz/v1",
    )
    d = decide_for_teacher(t, cfg("redistribute"))
    assert d.decision == "allow_with_obligations" and "api.together.xyz" in d.reason
    assert "host's own terms were not" in d.reason


def test_weights_license_hint_from_config():
    t = TeacherConfig(
        provider="openai_compatible", model="acme/house-1b", base_url="http://127.0.0.1:9/v1"
    )
    assert decide_for_teacher(t, cfg("commercial")).decision == "unknown"
    d = decide_for_teacher(t, cfg("commercial", weights_license="mit"))
    assert d.decision == "allow" and d.document == "MIT License"


def test_policy_dirs_from_config(write_policy, make_policy):
    folder = write_policy("acme.yaml", make_policy(models='["gpt-4.1-mini"]'))
    t = TeacherConfig(provider="openai", model="gpt-4.1-mini")
    d = decide_for_teacher(t, cfg("commercial", policy_dirs=[str(folder)]))
    assert d.decision == "allow" and d.user_policy


# --------------------------------------------------------------------------- student re-check


def test_student_use_recheck():
    internal = enforce(decide("openai", "gpt-4.1-mini", "internal"), cfg("internal"))
    check_student_use([internal], "internal")  # same use: fine
    with pytest.raises(PolicyDenied, match="harvested for use 'internal'"):
        check_student_use([internal], "redistribute")
    research = decide("cohere", "CohereForAI/aya-expanse-8b", "research_noncommercial")
    with pytest.raises(PolicyDenied, match="NonCommercial"):
        check_student_use([research], "commercial")
    llama = decide("meta", "meta-llama/Llama-3.1-8B-Instruct", "internal", channel="weights")
    check_student_use([llama], "redistribute")


def test_student_use_recheck_with_an_authorization():
    d = decide("openai", "gpt-4.1-mini", "internal")
    with pytest.raises(PolicyDenied):
        check_student_use([d], "commercial")
    check_student_use([d], "commercial", policy_cfg=cfg(authorization_reference="legal #9"))


def test_overridden_decision_counts_only_for_its_own_use():
    d = enforce(decide("xai", "grok-4", "internal"), cfg("internal", override_reference="deal"))
    check_student_use([d], "internal")
    with pytest.raises(PolicyDenied):
        check_student_use([d], "commercial")


# --------------------------------------------------------------------------- cards


def test_llama31_obligations_in_rendered_card():
    d = decide("meta", "meta-llama/Llama-3.1-8B-Instruct", "redistribute", channel="weights")
    md = render_obligations_md([d])
    assert 'The student\'s name must begin with "Llama".' in md
    assert '"Built with Llama"' in md
    assert "700,000,000 monthly active users" in md
    assert "Llama 3.1 Community License Agreement (2024-07-23)" in md
    assert d.id in md and "not legal advice" in md


def test_card_without_decisions_still_carries_the_disclaimer():
    md = render_obligations_md([])
    assert "No teacher policy decision" in md and "not legal advice" in md
