"""Count a request's input tokens before sending it, saying how exact the count is.

Budgets reserve and estimates charge by these counts, so each count carries ``exact`` and the
``method`` used; nothing guesses silently.

- OpenAI models: ``bpe_openai`` with the model family's encoding (``o200k_base`` for gpt-4o,
  gpt-4.1, gpt-4.5, gpt-5 and the o-series; ``cl100k_base`` for gpt-4 and gpt-3.5) plus the
  chat format's overhead. The overhead follows OpenAI's cookbook, "How to count tokens with
  tiktoken" (``num_tokens_from_messages``): every message costs 3 tokens plus its role and
  content (plus 1 for a ``name``), and every reply is primed with 3 more
  (``<|start|>assistant<|message|>``). The cookbook checks this against ``usage.prompt_tokens``
  of the API for gpt-3.5-turbo, gpt-4, gpt-4o and gpt-4o-mini; for the newer families the same
  format is assumed, so those counts are flagged not exact.
- A self-hosted teacher with a known tokenizer (``teacher.tokenizer``, or the model an
  ``apidistill serve`` block starts): the chat template with the generation prompt,
  tokenized: exactly the ``prompt_tokens`` the server reports.
- Anything else: characters / 4, stated as an approximation.

The budget cannot reserve an approximation: it reserves :meth:`TokenCounter.bound`, a count
the teacher's ``usage.prompt_tokens`` can never exceed. It is the exact count where the
tokenizer and the chat format are known (a self-hosted tokenizer, an OpenAI model on
api.openai.com whose overhead OpenAI verified), the BPE count plus a small slack where only
the format is assumed (newer OpenAI families), and otherwise the **byte bound**
(:func:`byte_bound_tokens`): every token of a byte-level tokenizer (BPE, or SentencePiece
with byte fallback) covers at least one UTF-8 byte, so a message costs at most its content
and role bytes plus the template's special tokens. Usage above the bound is not something
the request could have produced: the harvest flags it and stops (docs/costs.md).

Many requests share a long prefix (the prototype prompt's system turn and few-shot pairs);
:class:`TokenCounter` memoizes per-message counts for OpenAI models and batch-tokenizes
rendered templates for self-hosted ones, so counting thousands of requests stays fast.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from apidistill.config import TeacherConfig
from apidistill.errors import ConfigError, ModelLoadError
from apidistill.records import Message, TeacherRequest

__all__ = [
    "TEMPLATE_TOKENS_PER_MESSAGE",
    "TEMPLATE_TOKENS_PER_REQUEST",
    "TokenCount",
    "TokenCounter",
    "byte_bound_tokens",
    "count_input_tokens",
    "count_openai_chat_tokens",
    "openai_encoding_name",
]

# OpenAI chat format overhead (cookbook, see the module docstring).
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3

_O200K_PREFIXES = ("gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4")
_CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "gpt-35")
# Families whose overhead OpenAI's cookbook checked against the API's prompt_tokens.
_VERIFIED_O200K = ("gpt-4o",)

# Special tokens a chat template may put around one message besides its role and content
# (ChatML: <|im_start|> role \n ... <|im_end|> \n; Llama 3: 4 header/eot tokens; Gemma: 4),
# and around the whole request: BOS, the generation prompt, and the default system turn some
# templates add when there is none (Qwen2.5's ≈ 20 tokens, Llama 3.1's date header ≈ 25).
TEMPLATE_TOKENS_PER_MESSAGE = 8
TEMPLATE_TOKENS_PER_REQUEST = 64
# Newer OpenAI families are assumed to use the gpt-4o chat format; their bound adds this
# much per message (a ``name``, a changed separator) and per request.
_ASSUMED_FORMAT_SLACK_PER_MESSAGE = 2
_ASSUMED_FORMAT_SLACK = 8


@dataclass(frozen=True)
class TokenCount:
    n: int
    exact: bool
    method: str


def _openai_base_name(model: str) -> str:
    """The model name that decides the tokenizer: a fine-tune ``ft:<base>:<org>::<id>``
    tokenizes as its base model (``ft:gpt-4.1-mini-2025-04-14:acme::B1x2`` → gpt-4.1-mini-…)."""
    name = model.lower().rsplit("/", 1)[-1]
    if name.startswith("ft:"):
        name = name[3:].split(":", 1)[0]
    return name


def openai_encoding_name(model: str) -> str | None:
    """``o200k_base`` / ``cl100k_base`` for an OpenAI chat model name (a fine-tune: its base
    model's), ``None`` if unknown."""
    name = _openai_base_name(model)
    if name.startswith(_O200K_PREFIXES):
        return "o200k_base"
    if name.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    return None


@lru_cache(maxsize=4)
def _encoding(name: str) -> Any:
    import bpe_openai

    return bpe_openai.get_encoding(name)


@lru_cache(maxsize=4)
def _hf_tokenizer(spec: str) -> Any:
    from apidistill.model_loading import load_tokenizer

    try:
        return load_tokenizer(spec)
    except ModelLoadError as exc:
        raise ConfigError(
            f"cannot load the teacher tokenizer {spec!r}: {exc.message}",
            key="teacher.tokenizer",
            hint="give a local folder, a GGUF file or the embedded 'smollm2-135m-instruct'",
        ) from exc


def count_openai_chat_tokens(
    messages: Sequence[Mapping[str, str]], encoding_name: str = "o200k_base"
) -> int:
    """Prompt tokens of an OpenAI chat request: the cookbook's formula (module docstring).

    Text is encoded as ordinary text (a literal ``<|endoftext|>`` in a message is text to the
    API, not a special token).
    """
    enc = _encoding(encoding_name)
    n = REPLY_PRIMING
    for message in messages:
        n += TOKENS_PER_MESSAGE
        for key, value in message.items():
            n += len(enc.encode_ordinary(value))
            if key == "name":
                n += TOKENS_PER_NAME
    return n


BPE_ENCODINGS = frozenset({"o200k_base", "cl100k_base"})


def byte_bound_tokens(request: TeacherRequest) -> int:
    """Input tokens no byte-level tokenizer exceeds for ``request``, whatever its script.

    Each token covers at least one UTF-8 byte of the text (a CJK character is 3 bytes, an
    emoji 4, a combining mark 2), so the content and the role cost at most their bytes; the
    template adds at most :data:`TEMPLATE_TOKENS_PER_MESSAGE` per message and
    :data:`TEMPLATE_TOKENS_PER_REQUEST` per request.
    """
    if request.messages is None:
        return len((request.prompt or "").encode("utf-8")) + TEMPLATE_TOKENS_PER_REQUEST
    return TEMPLATE_TOKENS_PER_REQUEST + sum(
        len(m.content.encode("utf-8")) + len(m.role.encode("utf-8")) + TEMPLATE_TOKENS_PER_MESSAGE
        for m in request.messages
    )


def _tokenizer_spec(teacher: TeacherConfig) -> str | None:
    """The Hugging Face tokenizer to count with; ``None`` for bpe-openai or an estimate."""
    if teacher.tokenizer:
        return None if teacher.tokenizer in BPE_ENCODINGS else teacher.tokenizer
    if teacher.launch is not None:
        return teacher.launch.model
    return None


def _is_official_openai(teacher: TeacherConfig) -> bool:
    """OpenAI's own API (no base URL, or api.openai.com), not a gateway or a lookalike."""
    if teacher.provider != "openai":
        return False
    if not teacher.base_url:
        return True
    host = (urlsplit(teacher.base_url).hostname or "").lower().rstrip(".")
    return host == "api.openai.com"


def _is_openai(teacher: TeacherConfig) -> bool:
    """Counted with bpe-openai: OpenAI itself, or a teacher whose tokenizer is named as an
    OpenAI encoding (``teacher.tokenizer: o200k_base``)."""
    return teacher.tokenizer in BPE_ENCODINGS or _is_official_openai(teacher)


@dataclass
class TokenCounter:
    """Counts input tokens for one teacher, remembering what repeats across requests."""

    teacher: TeacherConfig
    _memo: dict[str, int] = field(default_factory=dict, repr=False)

    def count(self, request: TeacherRequest) -> TokenCount:
        return self.count_many([request])[0]

    def count_many(self, requests: Sequence[TeacherRequest]) -> list[TokenCount]:
        spec = _tokenizer_spec(self.teacher)
        if spec is not None:
            return self._count_hf(spec, requests)
        if _is_openai(self.teacher):
            return [self._count_openai(r) for r in requests]
        return [self._approximate(r) for r in requests]

    def bound(self, request: TeacherRequest) -> TokenCount:
        return self.bound_many([request])[0]

    def bound_many(self, requests: Sequence[TeacherRequest]) -> list[TokenCount]:
        """Upper bounds of the input tokens the teacher will report (module docstring).

        ``exact`` says the bound is the count itself; the budget reserves these."""
        spec = _tokenizer_spec(self.teacher)
        if spec is not None:
            return self._count_hf(spec, requests)
        if _is_openai(self.teacher) and self._encoding_name() is not None:
            return [self._openai_bound(r) for r in requests]
        return [
            TokenCount(byte_bound_tokens(r), False, "bound: UTF-8 bytes + template tokens")
            for r in requests
        ]

    def _openai_bound(self, request: TeacherRequest) -> TokenCount:
        count = self._count_openai(request)
        n_msgs = len(request.messages or [])
        if not _is_official_openai(self.teacher):
            # an encoding named for another server: its template is not OpenAI's chat format
            n = count.n + TEMPLATE_TOKENS_PER_MESSAGE * n_msgs + TEMPLATE_TOKENS_PER_REQUEST
            return TokenCount(n, False, f"bound: {count.method} + template tokens")
        if count.exact:
            return count
        slack = _ASSUMED_FORMAT_SLACK_PER_MESSAGE * n_msgs + _ASSUMED_FORMAT_SLACK
        return TokenCount(count.n + slack, False, f"bound: {count.method} + {slack} slack")

    def count_text(self, text: str) -> TokenCount:
        """Tokens of a bare text (e.g. a gold answer, to predict output lengths)."""
        spec = _tokenizer_spec(self.teacher)
        if spec is not None:
            tok = _hf_tokenizer(spec)
            return TokenCount(len(tok(text, add_special_tokens=False)["input_ids"]), True, spec)
        enc_name = self._encoding_name() if _is_openai(self.teacher) else None
        if enc_name is not None:
            return TokenCount(len(_encoding(enc_name).encode_ordinary(text)), True, enc_name)
        return TokenCount(math.ceil(len(text) / 4), False, "≈ characters / 4")

    def prefix_tokens(self, prefix: Sequence[Message], sample: TeacherRequest) -> int:
        """Tokens that ``prefix`` (leading messages of ``sample``) contributes to ``sample``.

        This is the part a provider's prompt cache can serve; 0 when it cannot be told.
        """
        if not prefix or sample.messages is None:
            return 0
        spec = _tokenizer_spec(self.teacher)
        if spec is not None:
            tok = _hf_tokenizer(spec)
            full = tok.apply_chat_template(
                [_plain(m) for m in sample.messages], add_generation_prompt=True, tokenize=False
            )
            head = tok.apply_chat_template(
                [_plain(m) for m in prefix], add_generation_prompt=False, tokenize=False
            )
            if not full.startswith(head):
                return 0
            return len(tok(head, add_special_tokens=False)["input_ids"])
        if _is_openai(self.teacher):
            enc_name = self._encoding_name() or "o200k_base"
            return sum(
                TOKENS_PER_MESSAGE
                + self._memo_len(enc_name, m.role)
                + self._memo_len(enc_name, m.content)
                for m in prefix
            )
        return math.ceil(sum(len(m.content) + len(m.role) for m in prefix) / 4)

    # ------------------------------------------------------------------ OpenAI

    def _encoding_name(self) -> str | None:
        if self.teacher.tokenizer in BPE_ENCODINGS:
            return self.teacher.tokenizer
        return openai_encoding_name(self.teacher.model)

    def _count_openai(self, request: TeacherRequest) -> TokenCount:
        model = self.teacher.model
        enc_name = self._encoding_name()
        assumed = enc_name is None
        enc_name = enc_name or "o200k_base"
        enc = _encoding(enc_name)
        name = _openai_base_name(model)
        verified = (enc_name == "cl100k_base" and not assumed) or name.startswith(_VERIFIED_O200K)
        if request.prompt is not None:
            n = len(enc.encode_ordinary(request.prompt))
            return TokenCount(n, not assumed, f"bpe-openai {enc_name} (completion prompt)")
        n = REPLY_PRIMING
        for m in request.messages or []:
            n += (
                TOKENS_PER_MESSAGE
                + self._memo_len(enc_name, m.role)
                + self._memo_len(enc_name, m.content)
            )
        if verified:
            method = f"bpe-openai {enc_name} + chat overhead (3/message + 3)"
        elif assumed:
            method = f"bpe-openai {enc_name} assumed for unknown OpenAI model {model!r}"
        else:
            method = f"bpe-openai {enc_name} + chat overhead assumed as for gpt-4o"
        return TokenCount(n, verified, method)

    def _memo_len(self, enc_name: str, text: str) -> int:
        key = f"{enc_name}\x00{text}"
        n = self._memo.get(key)
        if n is None:
            n = len(_encoding(enc_name).encode_ordinary(text))
            self._memo[key] = n
        return n

    # ------------------------------------------------------------------ self-hosted

    def _count_hf(self, spec: str, requests: Sequence[TeacherRequest]) -> list[TokenCount]:
        tok = _hf_tokenizer(spec)
        texts: list[str] = []
        specials: list[bool] = []
        for r in requests:
            if r.messages is not None:
                texts.append(
                    tok.apply_chat_template(
                        [_plain(m) for m in r.messages], add_generation_prompt=True, tokenize=False
                    )
                )
                specials.append(False)  # the template already holds its special tokens
            else:
                texts.append(r.prompt or "")
                specials.append(True)
        out: list[TokenCount] = []
        chat = [t for t, s in zip(texts, specials, strict=True) if not s]
        plain = [t for t, s in zip(texts, specials, strict=True) if s]
        chat_ids = iter(tok(chat, add_special_tokens=False)["input_ids"] if chat else [])
        plain_ids = iter(tok(plain)["input_ids"] if plain else [])
        for special in specials:
            ids = next(plain_ids) if special else next(chat_ids)
            method = f"{spec} tokenizer" + (" (prompt)" if special else " chat template")
            out.append(TokenCount(len(ids), True, method))
        return out

    # ------------------------------------------------------------------ fallback

    def _approximate(self, request: TeacherRequest) -> TokenCount:
        if request.prompt is not None:
            chars = len(request.prompt)
        else:
            chars = sum(len(m.content) + len(m.role) for m in request.messages or [])
        return TokenCount(
            math.ceil(chars / 4), False, f"≈ characters / 4 (no tokenizer for {self.teacher.model})"
        )


def _plain(m: Message) -> dict[str, str]:
    return {"role": m.role, "content": m.content}


def count_input_tokens(teacher: TeacherConfig, request: TeacherRequest) -> TokenCount:
    """Input tokens of one request as the teacher will count them (see the module docstring).

    For many requests use :class:`TokenCounter`, which reuses the counts of repeated messages.
    """
    return TokenCounter(teacher).count(request)
