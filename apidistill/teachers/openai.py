"""OpenAI and every OpenAI-compatible server, on the official ``AsyncOpenAI`` client.

Request bodies and response parsing are plain functions (:func:`build_openai_body`,
:func:`parse_openai_body`) because the Batch API sends the same bodies as JSONL lines and
gets the same objects back; :class:`OpenAITeacher` only adds the one HTTP call, headers and
timing. The SDK is built with ``max_retries=0``: ``harvest/retry.py`` owns retrying, and an
SDK retry would hide a possibly billed attempt from the ledger.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from typing import Any

import httpx2
import openai

from apidistill.errors import CapabilityError, ConfigError, register_secret
from apidistill.records import Completion, TeacherRequest, Usage
from apidistill.teachers.base import Capabilities, TeacherResponse
from apidistill.teachers.failures import TRANSPORT_ERRORS, malformed_body, map_failure
from apidistill.teachers.logprobs import NormalizedLogprobs, TokenVocab, extract_choice_logprobs
from apidistill.teachers.profiles import (
    ServerProfile,
    openai_model_defaults,
    openai_profile,
    server_profile,
)
from apidistill.teachers.ratelimits import openai_rate_limits
from apidistill.teachers.token_recovery import raw_token_constraints, recover_token_bytes
from apidistill.teachers.transport import resolve_transport, sdk_http_client
from apidistill.teachers.urls import teacher_identity

__all__ = [
    "OPENAI_BASE_URL",
    "STORE_METADATA_KEY",
    "OpenAITeacher",
    "build_openai_body",
    "check_openai_request",
    "parse_openai_body",
    "sampling_settings",
]

OPENAI_BASE_URL = "https://api.openai.com/v1"
# The ``metadata`` key that carries a request's cache key when ``store=True`` (OpenAI allows
# 16 keys of ≤ 64 characters with values of ≤ 512; a cache key is 64 hex characters).
STORE_METADATA_KEY = "apidistill_key"
_SDK_FAILURES = (openai.OpenAIError, *TRANSPORT_ERRORS)
# What ``chat.completions.create`` sends as options: bearer auth only (not an admin key).
_POST_OPTIONS: openai.RequestOptions = {"security": {"bearer_auth": True}}


def check_openai_request(
    request: TeacherRequest,
    *,
    model: str,
    capabilities: Capabilities,
    model_defaults: Mapping[str, str] | None = None,
) -> None:
    """Refuse, before sending, what the teacher declares it cannot do."""
    p = request.params
    caps = capabilities
    if request.prompt is not None and not caps.completions_endpoint:
        raise CapabilityError(
            f"{model!r} has no /v1/completions endpoint for plain prompts",
            hint="give 'messages' (chat) instead of 'prompt'",
        )
    if p.logprobs and not caps.output_logprobs:
        raise CapabilityError(
            f"{model!r} returns no logprobs ({caps.notes or 'declared by its profile'})",
            hint="use training.method: sequence_kd, or harvest.on_missing_logprobs: sequence_kd",
        )
    if p.logprobs and p.top_logprobs > caps.max_top_logprobs:
        raise CapabilityError(
            f"{model!r} gives at most {caps.max_top_logprobs} top logprobs, "
            f"{p.top_logprobs} were asked",
            hint=f"set harvest.top_logprobs to {caps.max_top_logprobs} or less",
        )
    if p.logprobs and caps.logprobs_requires:
        effective = {**(model_defaults or {}), **p.extra_body}
        for key, value in caps.logprobs_requires:
            if effective.get(key) != value:
                raise CapabilityError(
                    f"{model!r} returns logprobs only with {key}={value!r} "
                    f"(got {effective.get(key)!r})",
                    hint=f"set {key}: {value} in the request's extra_body, or turn logprobs off",
                )
    if caps.fixed_sampling and (p.temperature != 1.0 or p.top_p not in (None, 1.0)):
        raise CapabilityError(
            f"{model!r} is a reasoning model and accepts only temperature 1 and no top_p "
            f"(got temperature {p.temperature:g}, top_p {p.top_p})",
            hint="set harvest.temperature: 1 and leave top_p unset for this model",
        )


def build_openai_body(
    request: TeacherRequest, *, model: str, profile: ServerProfile
) -> tuple[str, dict[str, Any]]:
    """``(path, JSON body)`` for one request; the path is relative to a ``.../v1`` base URL."""
    p = request.params
    body: dict[str, Any] = {"model": model}
    chat = request.messages is not None
    if chat:
        body["messages"] = [{"role": m.role, "content": m.content} for m in request.messages or ()]
        body[profile.max_tokens_field] = p.max_tokens
    else:
        body["prompt"] = request.prompt
        body["max_tokens"] = p.max_tokens
    if not profile.capabilities.fixed_sampling:
        body["temperature"] = p.temperature
        if p.top_p is not None:
            body["top_p"] = p.top_p
        body.update(profile.sampling_body)
    if p.stop:
        body["stop"] = list(p.stop)
    if p.seed is not None:
        body["seed"] = p.seed
    if p.logprobs:
        if chat:
            body["logprobs"] = True
            body["top_logprobs"] = p.top_logprobs
        else:
            body["logprobs"] = p.top_logprobs
        body.update(profile.logprob_body)
    body.update(profile.extra_body)
    body.update(p.extra_body)
    return ("/chat/completions" if chat else "/completions"), body


# Body fields that change which token is drawn (OpenAI's and llama.cpp's/vLLM's names).
SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "typical_p",
    "seed",
    "repeat_penalty",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "mirostat_mode",
    "reasoning_effort",
)


def _digest(fields: Mapping[str, Any]) -> str:
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


def sampling_settings(body: Mapping[str, Any]) -> dict[str, Any]:
    """The sampling fields of a request body as sent: what shaped the answer, kept on it."""
    return {k: body[k] for k in SAMPLING_FIELDS if k in body}


def _count(obj: object, key: str) -> int:
    v = obj.get(key) if isinstance(obj, Mapping) else None
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


def _usage(data: Mapping[str, Any]) -> Usage:
    u = data.get("usage")
    if not isinstance(u, Mapping):
        return Usage()
    details = u.get("prompt_tokens_details")
    return Usage(
        input_tokens=_count(u, "prompt_tokens"),
        output_tokens=_count(u, "completion_tokens"),
        cached_input_tokens=_count(details, "cached_tokens"),
    )


def parse_openai_body(
    data: object,
    *,
    chat: bool,
    logprobs_requested: bool,
    top_k: int,
    provider: str,
    model: str,
    quirks: frozenset[str] = frozenset(),
    vocab: TokenVocab | None = None,
    request_hash: str = "",
    latency_ms: float = 0.0,
    sampling: Mapping[str, Any] | None = None,
) -> tuple[Completion, NormalizedLogprobs]:
    """A decoded chat (``chat``) or legacy completion object → Completion (first choice).

    Batch results pass ``logprobs_requested`` from the presence of the field and the widest
    ``top_k``; ``request_hash`` is then the caller's to fill from its own journal.
    ``sampling`` is the sent body's :func:`sampling_settings`, stored on the completion.
    With the quirk ``lossy_token_text`` and a known vocabulary, tokens the server spelled
    lossily get their bytes and ids back from the text (:mod:`~apidistill.teachers.token_recovery`).
    """
    if not isinstance(data, Mapping):
        raise malformed_body(provider, f"expected a JSON object, got {type(data).__name__}")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise malformed_body(provider, "no 'choices' in the answer")
    choice = choices[0]
    if chat:
        message = choice.get("message")
        if not isinstance(message, Mapping):
            raise malformed_body(provider, "choice has no 'message' object")
        text = message.get("content")
    else:
        text = choice.get("text")
    if text is not None and not isinstance(text, str):
        raise malformed_body(provider, "the answer text is not a string")
    finish = choice.get("finish_reason")
    lp = extract_choice_logprobs(
        choice,
        requested=logprobs_requested,
        top_k=top_k,
        chat=chat,
        quirks=quirks,
        vocab=vocab,
        model=model,
    )
    if lp.tokens and vocab is not None and "lossy_token_text" in quirks:
        given = raw_token_constraints(choice.get("logprobs"))
        if given is not None:
            recover_token_bytes(lp.tokens, text or "", given, vocab)
    usage = _usage(data)
    fingerprint = data.get("system_fingerprint")
    returned_model = data.get("model")
    version = fingerprint if isinstance(fingerprint, str) and fingerprint else returned_model
    completion = Completion(
        text=text or "",
        finish_reason=finish if isinstance(finish, str) else None,
        logprobs=lp.tokens,
        logprobs_invalid=lp.invalid,
        logprobs_dropped=lp.dropped,
        usage=usage,
        latency_ms=latency_ms,
        provider=provider,
        model=model,
        model_version=version if isinstance(version, str) else None,
        request_hash=request_hash,
        sampling=dict(sampling or {}),
    )
    return completion, lp


class OpenAITeacher:
    """One model on OpenAI or on an OpenAI-compatible server (profile chooses which).

    ``api_key`` comes from the argument or from the env var ``api_key_env``; it is handed to
    the SDK client and kept nowhere else on this object, so it cannot show in ``repr``.
    ``transport`` picks the SDK's HTTP transport (``auto``: aiohttp when installed, else
    httpx2; see :mod:`apidistill.teachers.transport`); ``http_client`` replaces it with a
    client of your own (then ``transport`` is ``"custom"``). ``aclose`` closes either.

    ``store=True`` sends ``store: true`` and the request's cache key as ``metadata``
    (:data:`STORE_METADATA_KEY`), and :meth:`recover` finds a stored answer by that key
    (``GET /v1/chat/completions?metadata[...]``): the harvest asks it before re-sending a
    request whose outcome is unknown, so the provider's copy is used instead of paying twice.
    """

    def __init__(
        self,
        model: str,
        *,
        provider: str = "openai_compatible",
        base_url: str | None = None,
        api_key: str | None = None,
        profile: ServerProfile | None = None,
        timeout_s: float = 120.0,
        vocab: TokenVocab | None = None,
        max_connections: int = 1000,
        http_client: Any | None = None,
        identity: str | None = None,
        transport: str = "auto",
        store: bool = False,
    ) -> None:
        self.provider = provider
        self.store = store
        self.model = model
        if provider == "openai":
            # like the SDK: an explicit URL, else $OPENAI_BASE_URL, else api.openai.com
            base_url = base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL
            self._profile = profile or openai_profile(model)
            self._defaults = openai_model_defaults(model)
        else:
            if not base_url:
                raise ConfigError(
                    "an OpenAI-compatible teacher needs a base URL",
                    key="teacher.base_url",
                    hint="set teacher.base_url, e.g. http://127.0.0.1:8000/v1",
                )
            self._profile = profile or server_profile("generic")
            self._defaults = {}
        self.base_url = base_url.rstrip("/")
        # ``identity`` replaces the URL in the cache key when the URL is not what identifies the
        # teacher (a server the pipeline starts on a free port each run).
        self._teacher_id = identity or teacher_identity(provider, self.base_url)
        if self._profile.sampling_body:
            # The profile's sampling fields shape every answer but are not request params:
            # they join the identity, so the journal never answers from other sampling.
            self._teacher_id += "+sampling:" + _digest(self._profile.sampling_body)
        self._vocab = vocab
        self.transport = "custom" if http_client is not None else resolve_transport(transport)
        register_secret(api_key)  # redacted by value in every message
        self._client = openai.AsyncOpenAI(
            api_key=api_key or "EMPTY",
            base_url=self.base_url,
            max_retries=0,
            timeout=httpx2.Timeout(timeout_s, connect=min(10.0, timeout_s)),
            http_client=http_client
            or sdk_http_client(openai, self.transport, max_connections=max_connections),
        )

    def __repr__(self) -> str:
        return (
            f"OpenAITeacher(provider={self.provider!r}, model={self.model!r}, "
            f"base_url={self.base_url!r}, profile={self._profile.name!r}, "
            f"transport={self.transport!r})"
        )

    @property
    def teacher_id(self) -> str:
        return self._teacher_id

    @property
    def capabilities(self) -> Capabilities:
        return self._profile.capabilities

    @property
    def profile(self) -> ServerProfile:
        return self._profile

    def build(self, request: TeacherRequest) -> tuple[str, dict[str, Any]]:
        """Check capabilities and build ``(path, body)``; raises CapabilityError, sends nothing."""
        check_openai_request(
            request, model=self.model, capabilities=self.capabilities, model_defaults=self._defaults
        )
        path, body = build_openai_body(request, model=self.model, profile=self._profile)
        if self.store and request.messages is not None:
            body["store"] = True
            body["metadata"] = {STORE_METADATA_KEY: request.cache_key(self.teacher_id, self.model)}
        return path, body

    @property
    def can_recover(self) -> bool:
        """Whether :meth:`recover` can find lost answers (stored chat completions)."""
        return self.store

    async def recover(self, request: TeacherRequest) -> TeacherResponse | None:
        """The provider's stored answer to ``request`` (sent earlier with ``store: true``),
        or None when it has none (never sent, not finished, or not stored)."""
        if not self.store or request.messages is None:
            return None
        key = request.cache_key(self.teacher_id, self.model)
        started = time.perf_counter()
        try:
            page = await self._client.chat.completions.list(
                model=self.model, metadata={STORE_METADATA_KEY: key}, limit=1
            )
        except _SDK_FAILURES as exc:
            raise map_failure(self.provider, exc) from exc
        if not page.data:
            return None
        data = page.data[0].model_dump(mode="json", exclude_unset=True)
        _, body = self.build(request)  # the body it was stored under: same request, same body
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        completion, lp = self._parse(data, request, elapsed_ms, body)
        if request.params.logprobs and completion.logprobs is None:
            return None  # stored without the logprobs this request needs: send it again
        return TeacherResponse(completion=completion, logprobs_missing_reason=lp.missing_reason)

    def _parse(
        self, data: Any, request: TeacherRequest, latency_ms: float, body: Mapping[str, Any]
    ) -> tuple[Completion, NormalizedLogprobs]:
        """A chat/text completion object (sent now, or stored earlier) for ``request``."""
        return parse_openai_body(
            data,
            chat=request.messages is not None,
            logprobs_requested=request.params.logprobs,
            top_k=request.params.top_logprobs,
            provider=self.provider,
            model=self.model,
            quirks=self.capabilities.quirks,
            vocab=self._vocab,
            request_hash=request.cache_key(self.teacher_id, self.model),
            latency_ms=latency_ms,
            sampling=sampling_settings(body),
        )

    async def complete(self, request: TeacherRequest) -> TeacherResponse:
        path, body = self.build(request)
        started = time.perf_counter()
        try:
            # The SDK's documented raw call (``client.post(path, cast_to=httpx2.Response)``):
            # the same client, auth, headers, timeouts and status errors as
            # ``chat.completions.create``, minus its per-call TypedDict walk over the body
            # (the largest CPU cost per request at high concurrency); the body is already the
            # exact JSON we send, built and checked by :meth:`build`.
            raw = await self._client.post(
                path, cast_to=httpx2.Response, body=body, options=_POST_OPTIONS
            )
            content = raw.content
        except _SDK_FAILURES as exc:
            raise map_failure(self.provider, exc) from exc
        latency_ms = (time.perf_counter() - started) * 1000.0
        headers = dict(raw.headers.items())
        try:
            data = json.loads(content)
        except (ValueError, UnicodeDecodeError) as exc:
            raise malformed_body(self.provider, f"not JSON ({exc})") from exc
        completion, lp = self._parse(data, request, latency_ms, body)
        return TeacherResponse(
            completion=completion,
            rate_limits=openai_rate_limits(raw.headers),
            headers=headers,
            logprobs_missing_reason=lp.missing_reason,
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> OpenAITeacher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
