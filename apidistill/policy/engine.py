"""Decide whether a teacher's terms allow distilling it for an intended use, and enforce it.

The decision is a plain function of (provider, model, channel, use) and the policy files, made
before the first request is sent. How a policy is chosen:

1. Candidates are the policies for the channel (``api``, ``weights``, ``app``) whose provider
   is the teacher's, with a rule for the use. For ``weights`` the provider is only a label: a
   self-hosted teacher (provider ``self_hosted``) matches any weights policy, because whoever
   serves a checkpoint, its license is what binds.
2. A policy matches when one of its ``models`` globs matches the model name (case-insensitive;
   globs without ``/`` are matched against the name after its last ``/``), or, failing every
   glob, when the user declared the weights' license and the policy lists it.
3. A user's policy files (``policy.policy_dirs``: a signed agreement) win over the built-in
   library; within one source the most specific pattern wins (exact > longer glob > shorter).
   Two equally specific matches with different answers are an error, never a coin toss.
4. Nothing matches → ``unknown``.

:func:`enforce` turns a decision into permission or :class:`PolicyDenied`; authorizations,
acknowledgements and overrides are recorded on the decision, never applied silently.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from apidistill.config import PolicyConfig, TeacherConfig
from apidistill.errors import ConfigError, PolicyDenied
from apidistill.policy.loader import builtin_policy_dir, load_policies, pattern_specificity
from apidistill.policy.obligations import NOT_LEGAL_ADVICE, render_obligations_md
from apidistill.policy.schema import ALLOWED_VERDICTS, USES, Decision, Policy

__all__ = [
    "API_HOSTS",
    "PROVIDER_ALIASES",
    "SELF_HOSTED",
    "check_student_use",
    "decide",
    "decide_for_teacher",
    "enforce",
    "render_obligations_md",
    "teacher_route",
]

SELF_HOSTED = "self_hosted"

# Hosted APIs reachable through an OpenAI-compatible client: host → provider of the policy.
API_HOSTS: dict[str, str] = {
    "api.openai.com": "openai",
    "api.anthropic.com": "anthropic",
    "api.deepseek.com": "deepseek",
    "api.mistral.ai": "mistral",
    "api.x.ai": "xai",
    "generativelanguage.googleapis.com": "google",
    "api.llama.com": "meta",
    "api.cohere.com": "cohere",
    "api.cohere.ai": "cohere",
}
_LOCAL_NAMES = frozenset({"localhost", "host.docker.internal"})
# Names people type for a provider (CLI --teacher) → the provider of the policy files.
PROVIDER_ALIASES: dict[str, str] = {
    "self-hosted": SELF_HOSTED,
    "selfhosted": SELF_HOSTED,
    "local": SELF_HOSTED,
    "openai_compatible": SELF_HOSTED,
    "vllm": SELF_HOSTED,
    "ollama": SELF_HOSTED,
    "llamacpp": SELF_HOSTED,
    "tgi": SELF_HOSTED,
    "sglang": SELF_HOSTED,
    "gemini": "google",
    "claude": "anthropic",
    "grok": "xai",
    "llama": "meta",
    "alibaba": "qwen",
}


def _normalize(model: str) -> tuple[str, str]:
    full = model.strip().lower()
    return full, full.rsplit("/", 1)[-1]


def _best_glob(policy: Policy, model: str) -> str | None:
    full, base = _normalize(model)
    hits = [p for p in policy.models if fnmatch.fnmatchcase(full if "/" in p else base, p.lower())]
    return max(hits, key=pattern_specificity) if hits else None


def _provider_matches(policy: Policy, provider: str) -> bool:
    if policy.provider in ("*", provider):
        return True
    return policy.channel == "weights" and provider == SELF_HOSTED


def _pick(
    matches: list[tuple[tuple[int, int], str, Policy]], model: str, use: str
) -> tuple[str, Policy] | None:
    if not matches:
        return None
    matches.sort(key=lambda m: m[0], reverse=True)
    top = [m for m in matches if m[0] == matches[0][0]]
    verdicts = {(m[2].rules[use].decision, m[2].document) for m in top}  # type: ignore[index]
    if len(verdicts) > 1:
        where = ", ".join(f"{m[2].id} ({m[2].file}:{m[2].line}, pattern {m[1]!r})" for m in top)
        raise ConfigError(
            f"model {model!r} matches equally specific policies that disagree: {where}",
            hint="pass --channel / set the teacher's base_url, or make one pattern more specific "
            "(apidistill policy validate shows overlaps)",
        )
    return top[0][1], top[0][2]


def _select(
    policies: Sequence[Policy],
    provider: str,
    model: str,
    use: str,
    channel: str | None,
    license_hint: str | None,
) -> tuple[str, Policy] | None:
    usable = [
        p
        for p in policies
        if use in p.rules
        and (channel is None or p.channel == channel)
        and _provider_matches(p, provider)
    ]
    for source in (True, False):  # user policies first
        pool = [p for p in usable if p.user is source]
        globbed = [(pattern_specificity(g), g, p) for p in pool if (g := _best_glob(p, model))]
        picked = _pick(globbed, model, use)
        if picked is None and license_hint:
            lic = license_hint.strip().lower()
            by_license = [((0, 0), lic, p) for p in pool if lic in p.licenses]
            picked = _pick(by_license, model, use)
        if picked is not None:
            return picked
    return None


# How binding a verdict is, least to most: a name served on two channels without --channel
# gets the more binding one (its terms are the ones that could apply to the user).
_STRICTNESS = {
    "allow": 0,
    "allow_with_obligations": 1,
    "requires_authorization": 2,
    "unknown": 3,
    "deny": 4,
}


def decide(
    provider: str,
    model: str,
    use: str,
    *,
    channel: str | None = None,
    extra_dirs: Sequence[Path] = (),
    license: str | None = None,
    include_builtin: bool = True,
) -> Decision:
    """The terms' answer for distilling ``model`` served by ``provider`` for ``use``.

    ``extra_dirs`` are the user's own policy folders (they win over the built-in library);
    ``license`` is a self-hosted teacher's declared weights license, used only when no policy
    names the model itself. Without ``channel``, a name that the provider's policies cover on
    more than one channel (``command-r-plus``: Cohere's API and its CC-BY-NC weights) gets
    the stricter of those channels' decisions, and its reason says to pass the channel: the
    weights' license does not make an API's outputs usable, nor the reverse.
    """
    if use not in USES:
        raise ConfigError(
            f"unknown intended use {use!r}", key="policy.use", hint=f"use one of: {', '.join(USES)}"
        )
    if channel is not None and channel not in ("api", "weights", "app"):
        raise ConfigError(f"unknown channel {channel!r}", hint="use one of: api, weights, app")
    provider = provider.strip().lower()
    provider = PROVIDER_ALIASES.get(provider, provider)
    policies = [*load_policies(extra_dirs, user=True)]
    if include_builtin:
        policies += load_policies([builtin_policy_dir()])
    if channel is None:
        channels = sorted(  # a catch-all "*" covers whatever is served, it names nothing
            {
                p.channel
                for p in policies
                if _provider_matches(p, provider) and _best_glob(p, model) not in (None, "*")
            }
        )
        if len(channels) > 1:
            return _stricter(
                [_decide_on(policies, provider, model, use, c, license) for c in channels]
            )
    return _decide_on(policies, provider, model, use, channel, license)


def _stricter(decisions: list[Decision]) -> Decision:
    """The most binding of one name's decisions on several channels, saying so."""
    worst = max(decisions, key=lambda d: _STRICTNESS[d.decision])
    others = "; ".join(
        f"{d.channel}: {d.decision}" for d in decisions if d.channel != worst.channel
    )
    note = (
        f" [{worst.model!r} is covered on channels "
        f"{', '.join(str(d.channel) for d in decisions)}; without --channel the stricter "
        f"decision ({worst.channel}) applies (others: {others}); pass --channel to decide one]"
    )
    data = worst.model_dump()
    data.update(reason=worst.reason + note, id="")
    return Decision.model_validate(data)


def _decide_on(
    policies: Sequence[Policy],
    provider: str,
    model: str,
    use: str,
    channel: str | None,
    license: str | None,
) -> Decision:
    picked = _select(policies, provider, model, use, channel, license)
    if picked is None:
        return Decision(
            decision="unknown",
            provider=provider,
            model=model,
            use=use,  # type: ignore[arg-type]
            channel=channel,  # type: ignore[arg-type]
            reason=(
                f"no policy file covers {provider} / {model!r}"
                + (f" on channel {channel}" if channel else "")
                + f" for use {use!r}; its terms have not been reviewed"
            ),
        )
    matched, policy = picked
    rule = policy.rules[use]  # type: ignore[index]
    via_license = matched in policy.licenses and matched not in policy.models
    reason = rule.reason
    if via_license:
        reason += f" (license {matched!r} declared in policy.weights_license)"
    return Decision(
        decision=rule.decision,
        provider=provider,
        model=model,
        use=use,  # type: ignore[arg-type]
        channel=policy.channel,
        document=policy.document,
        effective_date=policy.effective_date,
        clause=rule.clause,
        reason=reason,
        source_url=policy.source_url,
        checked_on=policy.checked_on,
        obligations=policy.obligations.merged(rule.obligations),
        policy_id=policy.id,
        policy_file=_shown_file(policy),
        policy_line=policy.line,
        user_policy=policy.user,
        matched=matched,
    )


def _shown_file(policy: Policy) -> str | None:
    """Where the decision says its policy came from.

    A built-in policy is named inside the package (``apidistill/policies/meta.yaml``), never
    by this machine's install path: the name travels into datasets and model cards, and the
    decision id hashes it, so a checkout, a CI clone and an installed wheel must agree. A
    user's own policy keeps its path (a later re-check loads that folder again).
    """
    if policy.file is None or policy.user:
        return policy.file
    return f"apidistill/policies/{Path(policy.file).name}"


# --------------------------------------------------------------------------- teacher → route


def _is_local(host: str) -> bool:
    if host in _LOCAL_NAMES or host.endswith(".local"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_unspecified or ip.is_link_local


def teacher_route(teacher: TeacherConfig) -> tuple[str, str, str | None]:
    """(policy provider, channel, note) for a teacher config.

    The provider field names the client, not whose terms apply: ``openai`` with
    ``base_url: https://api.deepseek.com`` is DeepSeek's platform, and an ``openai_compatible``
    server on this machine or network is self-hosted weights whose license is what counts.
    ``openai``/``anthropic`` on a local address is taken as a gateway to that provider.
    """
    if teacher.launch is not None and not teacher.base_url:
        return SELF_HOSTED, "weights", "started by apidistill serve"
    host = (urlsplit(teacher.base_url).hostname or "").lower() if teacher.base_url else ""
    host = host.rstrip(".")  # a fully qualified name (``api.x.ai.``) is the same host
    if not host:
        default = {"openai": "openai", "anthropic": "anthropic"}.get(teacher.provider)
        if default:
            return default, "api", None
        raise ConfigError(
            "cannot tell whose terms apply: openai_compatible teacher without base_url",
            key="teacher.base_url",
        )
    for known, provider in API_HOSTS.items():
        if host == known or host.endswith("." + known):
            return provider, "api", None
    if _is_local(host):
        if teacher.provider in ("openai", "anthropic"):
            # provider openai/anthropic on this machine is a gateway or proxy to that provider
            # (or a test double of it): its terms still govern the outputs.
            return teacher.provider, "api", f"through a local endpoint at {host}"
        return SELF_HOSTED, "weights", f"self-hosted at {host}"
    return (
        SELF_HOSTED,
        "weights",
        f"served by third-party host {host}: the weights' license was checked, the host's own "
        "terms were not",
    )


def decide_for_teacher(teacher: TeacherConfig, policy: PolicyConfig) -> Decision:
    """The pipeline's entry point: route the teacher config to the right terms and decide.

    Call :func:`enforce` on the result before sending anything.
    """
    provider, channel, note = teacher_route(teacher)
    dirs = [Path(d).expanduser() for d in policy.policy_dirs]
    dec = decide(
        provider,
        teacher.model,
        policy.use,
        channel=channel,
        extra_dirs=dirs,
        license=policy.weights_license if channel == "weights" else None,
    )
    if note:
        data = dec.model_dump()
        data.update(reason=f"{dec.reason} [{note}]", id="")
        dec = Decision.model_validate(data)
    return dec


# --------------------------------------------------------------------------- enforcement


def _recorded(decision: Decision, by: str) -> Decision:
    data = decision.model_dump()
    data.update(overridden_by=by, overridden_at=datetime.now(UTC), id="")
    return Decision.model_validate(data)


def _denial(decision: Decision, what_to_do: str) -> PolicyDenied:
    if decision.document:
        head = (
            f"{decision.provider} / {decision.model} for use {decision.use!r}: "
            f"{decision.decision.replace('_', ' ')} under {decision.citation()}: {decision.reason}"
        )
        if decision.source_url:
            head += f" ({decision.source_url})"
    else:
        head = f"{decision.provider} / {decision.model} for use {decision.use!r}: {decision.reason}"
    return PolicyDenied(head, decision=decision, hint=f"{what_to_do}. {NOT_LEGAL_ADVICE}")


def enforce(decision: Decision, policy_cfg: PolicyConfig) -> Decision:
    """Permission to proceed, or :class:`PolicyDenied` saying what the user can do.

    Returns the decision to store with the records: unchanged when the terms allow the use,
    otherwise with ``overridden_by`` saying which reference the user recorded.
    """
    if decision.decision in ALLOWED_VERDICTS:
        return decision
    if policy_cfg.override_reference:
        return _recorded(decision, f"override: {policy_cfg.override_reference}")
    if decision.decision == "requires_authorization":
        if policy_cfg.authorization_reference:
            return _recorded(decision, f"authorization: {policy_cfg.authorization_reference}")
        raise _denial(
            decision,
            "if the provider has authorized this in writing, set policy.authorization_reference "
            "to that reference; otherwise choose a teacher whose terms allow it "
            "(apidistill policy list)",
        )
    if decision.decision == "unknown":
        if policy_cfg.acknowledge_unknown:
            return _recorded(decision, f"acknowledged: {policy_cfg.acknowledge_unknown}")
        raise _denial(
            decision,
            "read the provider's terms, then either add a policy file for it in "
            "policy.policy_dirs or set policy.acknowledge_unknown to who checked and why "
            "(it is written into the dataset card)",
        )
    raise _denial(
        decision,
        "choose a teacher whose terms allow this use (apidistill policy list) or a different "
        "policy.use; if you hold a signed agreement that permits it, add it as a policy file in "
        "policy.policy_dirs or set policy.override_reference",
    )


def check_student_use(
    decisions: list[Decision],
    intended_use: str,
    *,
    policy_cfg: PolicyConfig | None = None,
) -> list[Decision]:
    """Re-check a dataset's recorded decisions against the student's intended use.

    Training and export call this: data harvested for ``internal`` use does not become
    publishable because someone trains on it. A decision recorded for the same use stands
    (with its override); for another use the terms are decided again and, when ``policy_cfg``
    is given, enforced with its references.

    Returns the decisions that govern the student, one per recorded decision: the recorded
    one, or the fresh one for ``intended_use`` (whose obligations the student's card must
    carry as well).
    """
    if intended_use not in USES:
        raise ConfigError(
            f"unknown intended use {intended_use!r}", hint=f"use one of: {', '.join(USES)}"
        )
    governing: list[Decision] = []
    for dec in decisions:
        if dec.use == intended_use and dec.permits:
            governing.append(dec)
            continue
        dirs = [Path(dec.policy_file).parent] if dec.user_policy and dec.policy_file else []
        fresh = decide(
            dec.provider,
            dec.model,
            intended_use,
            channel=dec.channel,
            extra_dirs=dirs,
            license=dec.matched,  # only used when it is a license id the policy lists
        )
        if fresh.permits:
            governing.append(fresh)
            continue
        if policy_cfg is not None:
            governing.append(enforce(fresh, policy_cfg))
            continue
        raise _denial(
            fresh,
            f"the data was harvested for use {dec.use!r} (decision {dec.id}); keep the student "
            f"to that use, or record an authorization/override for {intended_use!r} in the "
            "run file's policy section",
        )
    return governing
