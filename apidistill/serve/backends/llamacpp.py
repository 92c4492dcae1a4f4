"""The llama.cpp backend: a GGUF model run by llama-cpp-python behind the same HTTP surface.

Why llama.cpp: on CPU its quantized kernels answer several times faster than the transformers
engine's float32 (issue #23 measured 5.2× on the embedded SmolLM2). Why not its own server:
the OpenAI and Anthropic routes, their error contract, admission control and logprob records
(token ids + UTF-8 bytes, which distillation aligns on) stay this project's.

:class:`LlamaCppEngine` reuses :class:`~apidistill.serve.engine.ServeEngine`'s request plumbing
(validation in ``prepare``, the scheduler's queue, stop strings and held-back streaming text in
:class:`~apidistill.serve.sequence.SeqState`, the logprob records) and replaces only the
model runner. One llama.cpp context decodes one sequence at a time: requests queue and run in
turn, and a request that fails ends alone (its error goes to its own client only). The
context's KV cache keeps the last prompt, so a request that shares its prefix with the one
before (the prompted teacher's long instructions) only evaluates what differs. The price, as
in llama.cpp's own server (``cache_prompt``): logits computed over a cached prefix differ from
a whole-prompt evaluation in the last bits (other kernel batch sizes), which can flip a
near-tied greedy choice; ``prefix_cache=False`` (``--no-prefix-cache``) evaluates every prompt
whole, so the same request always gets the same answer.

Sampling is neutral, as OpenAI's API means it: no repeat penalty, no top-k or min-p unless a
request asks; temperature 0 (or below :data:`GREEDY_BELOW`) is greedy argmax. Reported logprobs
are ``log_softmax`` of llama.cpp's raw logits, before any sampler or grammar, as in the
transformers engine. ``response_format`` (json_object / json_schema) and tool calls are
decoded under a GBNF grammar built from the JSON schema.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from apidistill.errors import ConfigError, ModelLoadError
from apidistill.records import GenerationParams, Message
from apidistill.serve.decoding import SeqRequest
from apidistill.serve.engine import EngineStats, ServeEngine, _Prepared, physical_cores
from apidistill.serve.sampling import SamplingParams, StepChoice
from apidistill.serve.sequence import SeqEvent, SeqState

__all__ = ["GrammarSamplingParams", "LlamaCppEngine", "grammar_for_response_format"]

DEFAULT_N_CTX = 4096


@dataclass(frozen=True)
class GrammarSamplingParams(SamplingParams):
    """Sampling settings plus a GBNF grammar the output must follow."""

    grammar: str | None = None


class _Vocab:
    """Token text and bytes from llama.cpp's own vocabulary (``token_to_piece`` of one id),
    cached per id; also the ``tokenizer.decode`` the completion route uses."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm
        self._cache: dict[int, bytes] = {}

    def bytes_of(self, token_id: int) -> bytes:
        hit = self._cache.get(token_id)
        if hit is None:
            hit = bytes(self._llm.detokenize([int(token_id)], special=True))
            self._cache[token_id] = hit
        return hit

    def text_of(self, token_id: int) -> str:
        return self.bytes_of(token_id).decode("utf-8", errors="replace")

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return b"".join(self.bytes_of(int(i)) for i in ids).decode("utf-8", errors="replace")


class LlamaCppEngine(ServeEngine):
    """:class:`ServeEngine`'s interface over one ``llama_cpp.Llama`` context."""

    supports_grammar = True

    def __init__(
        self,
        llm: Any,
        *,
        model_name: str,
        chat_template: str | None,
        max_batch_size: int = 16,
        fingerprint: str | None = None,
        gather_window_s: float = 0.02,
        trained_context: int = 0,
        prefix_cache: bool = True,
    ) -> None:  # ServeEngine.__init__ wants a torch model: its plumbing is set up here instead
        import llama_cpp

        self.llm = llm
        self.model_name = model_name
        self.max_batch_size = max_batch_size
        n_vocab = int(llm.n_vocab())
        self.model = SimpleNamespace(config=SimpleNamespace(vocab_size=n_vocab))
        self.tokenizer = _Vocab(llm)
        self.renderer = self.tokenizer
        self.max_context = min(int(llm.n_ctx()), trained_context or int(llm.n_ctx()))
        vocab = llm._model.vocab
        self.eos_ids = frozenset(
            i for i in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i)
        )
        self.shared_attention = False
        self.prefix_cache = None
        self._template = _compile_template(chat_template) if chat_template else None
        self._bos = self.tokenizer.text_of(int(llm.token_bos())) if llm.token_bos() >= 0 else ""
        self._eos = self.tokenizer.text_of(int(llm.token_eos())) if llm.token_eos() >= 0 else ""
        self._runner = _LlamaRunner(llm, self._decode, reuse_prefix=prefix_cache)
        self.stats = EngineStats()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="apidistill-llamacpp")
        self._sched_kwargs = {
            "max_batch_size": max_batch_size,
            "max_batch_tokens": 1 << 30,  # one sequence decodes at a time anyway
            "gather_window_s": gather_window_s,
        }
        self._schedulers = weakref.WeakKeyDictionary()
        self.fingerprint = (
            fingerprint or "fp_" + hashlib.sha256(model_name.encode()).hexdigest()[:12]
        )

    @classmethod
    def from_gguf(
        cls,
        gguf: str | Path,
        *,
        model_name: str | None = None,
        max_batch_size: int = 16,
        num_threads: int | None = None,
        n_ctx: int | None = None,
        prefix_cache: bool = True,
    ) -> LlamaCppEngine:
        """Load a GGUF file. Threads default to the physical cores: llama.cpp's OpenMP
        workers spin, and one per hyperthread (or more threads than cores on a loaded
        machine) collapses throughput."""
        try:
            import llama_cpp
        except ImportError as exc:
            raise ModelLoadError(
                f"the llama.cpp backend needs llama-cpp-python ({exc})",
                hint="pip install llama-cpp-python (it builds from source: ~30 min on 2 cores), "
                "or serve with --backend transformers",
            ) from None
        path = Path(gguf)
        threads = num_threads or physical_cores()
        try:
            llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx or DEFAULT_N_CTX,
                n_threads=threads,
                n_threads_batch=threads,
                logits_all=False,
                verbose=False,
            )
            meta = dict(llm.metadata)
            arch = meta.get("general.architecture", "")
            trained = int(meta.get(f"{arch}.context_length") or 0)
            template = meta.get("tokenizer.chat_template")
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(f"{path}: llama.cpp cannot load this GGUF file: {exc}") from None
        stat = path.stat()
        tag = f"llamacpp|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        fp = "fp_" + hashlib.sha256(tag.encode()).hexdigest()[:12]
        return cls(
            llm,
            model_name=model_name or str(path),
            chat_template=template,
            max_batch_size=max_batch_size,
            fingerprint=fp,
            trained_context=trained,
            prefix_cache=prefix_cache,
        )

    # ------------------------------------------------------------------ tokens

    def encode_messages(
        self, messages: Sequence[Message], *, continue_final_message: bool = False
    ) -> list[int]:
        """The GGUF's own chat template (jinja, as transformers renders it), then llama.cpp's
        tokenizer with special tokens parsed: the prompt the model was trained on."""
        if not messages:
            raise ConfigError("messages must not be empty", key="messages")
        if self._template is None:
            raise ConfigError(
                f"model {self.model_name!r} has no chat template",
                key="messages",
                hint="send a plain prompt to /v1/completions instead",
            )
        if continue_final_message and messages[-1].role != "assistant":
            raise ConfigError(
                "continuing the final message needs the last message to be from the assistant",
                key="messages",
            )
        try:
            text = self._template.render(
                messages=[{"role": m.role, "content": m.content} for m in messages],
                add_generation_prompt=not continue_final_message,
                bos_token=self._bos,
                eos_token=self._eos,
            )
        except Exception as exc:
            raise ConfigError(
                f"the chat template rejected these messages: {exc}", key="messages"
            ) from None
        if continue_final_message:  # as transformers does: cut after the final content
            final = messages[-1].content.strip()
            at = text.rfind(final) if final else -1
            if at >= 0:
                text = text[: at + len(final)]
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def encode_prompt(self, prompt: str) -> list[int]:
        return list(self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False))

    # ------------------------------------------------------------------ requests

    def prepare(
        self,
        messages: Sequence[Message] | None,
        prompt: str | None,
        params: GenerationParams | None,
        **kwargs: Any,
    ) -> _Prepared:
        """:meth:`ServeEngine.prepare`, plus the grammar of ``response_format`` / tools (carried in
        ``params.extra_body``), checked here so a bad schema is a 400 before any decoding."""
        prepared = super().prepare(messages, prompt, params, **kwargs)
        extra = (params.extra_body if params else None) or {}
        grammar = _request_grammar(extra)
        if grammar is not None:
            self._check_grammar(grammar)
            prepared.sampling = [
                GrammarSamplingParams(
                    **{f.name: getattr(sp, f.name) for f in fields(SamplingParams)},
                    grammar=grammar,
                )
                for sp in prepared.sampling
            ]
        return prepared

    def _check_grammar(self, grammar: str) -> None:
        import llama_cpp

        sampler = llama_cpp.llama_sampler_init_grammar(
            self.llm._model.vocab, grammar.encode("utf-8"), b"root"
        )
        if not sampler:
            raise ConfigError(
                "llama.cpp could not build a grammar from this schema",
                key="response_format",
                hint="simplify the JSON schema (see llama.cpp's json-schema-to-grammar)",
            )
        llama_cpp.llama_sampler_free(sampler)

    async def aclose(self) -> None:
        await super().aclose()
        await asyncio.sleep(0)


class _LlamaRunner:
    """Runs on the engine's model thread: each request of a batch in turn, each to its end."""

    def __init__(self, llm: Any, decode: Any, *, reuse_prefix: bool = True) -> None:
        self.llm = llm
        self.decode = decode
        self.reuse_prefix = reuse_prefix
        self.n_vocab = int(llm.n_vocab())

    def run(self, batch: list[SeqRequest]) -> None:
        for req in batch:
            if req.cancelled:
                req.done = True
                continue
            try:
                self._generate(req)
            except Exception as exc:  # this request fails alone; the next one runs
                self.llm.reset()  # the KV cache may hold half a prompt
                if not req.done:
                    req.done = True
                    req.sink(SeqEvent(error=exc))

    def _generate(self, req: SeqRequest) -> None:
        llm, p = self.llm, req.params
        ids = list(req.prompt_ids)
        cached = 0
        if not self.reuse_prefix:
            llm.reset()  # every prompt evaluated whole: the same request, the same logits
        if llm.n_tokens and not req.prompt_logprobs:
            held = llm.input_ids[: llm.n_tokens].tolist()
            cached = min(_common_prefix(held, ids), len(ids) - 1)
        prompt_steps = self._score_prompt(ids, p.top_logprobs) if req.prompt_logprobs else None
        first: SeqEvent | None = SeqEvent(
            prompt_tokens=len(ids), cached_tokens=max(0, cached), prompt_steps=prompt_steps
        )
        st = SeqState(p, self.decode)
        if p.max_tokens == 0:
            st.end_without_tokens()
            self._emit(req, first, st, "", [])
            return
        grammar_text = getattr(p, "grammar", None)
        grammar = _grammar(grammar_text) if grammar_text else None
        seed = p.seed * 1_000_003 + req.sample_index if p.seed is not None else None
        llm.set_seed((seed if seed is not None else secrets.randbits(31)) % (2**31))
        need_lp = p.logprobs or p.top_logprobs > 0
        gen = llm.generate(
            ids,
            top_k=p.top_k or 0,
            top_p=p.top_p if p.top_p is not None else 1.0,
            min_p=0.0,
            typical_p=1.0,
            temp=0.0 if p.greedy else p.temperature,
            repeat_penalty=1.0,
            grammar=grammar,
        )
        try:
            for token in gen:
                if req.cancelled:
                    break
                choice = StepChoice(int(token))
                if need_lp:
                    self._attach_logprobs(choice, self._last_logits(), p.top_logprobs)
                delta, steps = st.push(choice)
                self._emit(req, first or SeqEvent(), st, delta, steps)
                first = None
                if st.finish is not None:
                    break
        finally:
            gen.close()
        req.done = True

    def _last_logits(self) -> np.ndarray:
        import llama_cpp

        ptr = llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float64)

    @staticmethod
    def _attach_logprobs(choice: StepChoice, logits: np.ndarray, k: int) -> None:
        lp = _log_softmax(logits)
        choice.logprob = float(lp[choice.token_id])
        if k > 0:
            choice.top = _top(lp, k)

    def _score_prompt(self, ids: list[int], k: int) -> list[StepChoice | None]:
        """Logprob of each prompt token given the ones before it (echo): the prompt is
        decoded with logits at every position, chunk by chunk, and stays in the KV cache."""
        import llama_cpp

        llm = self.llm
        llm.reset()
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        rows: list[np.ndarray] = []
        for start in range(0, len(ids), llm.n_batch):
            chunk = ids[start : start + llm.n_batch]
            llm._batch.set_batch(batch=chunk, n_past=start, logits_all=True)
            llm._ctx.decode(llm._batch)
            ptr = llama_cpp.llama_get_logits(llm._ctx.ctx)
            flat = np.ctypeslib.as_array(ptr, shape=(len(chunk) * self.n_vocab,))
            rows.extend(flat.reshape(len(chunk), self.n_vocab).astype(np.float64))
            llm.input_ids[start : start + len(chunk)] = chunk
            llm.n_tokens = start + len(chunk)
        llm.n_tokens = 0  # the next generate() evaluates the prompt again: nothing stale
        llm.reset()
        steps: list[StepChoice | None] = [None]
        for pos in range(1, len(ids)):
            lp = _log_softmax(rows[pos - 1])
            steps.append(StepChoice(ids[pos], float(lp[ids[pos]]), _top(lp, k) if k else []))
        return steps

    @staticmethod
    def _emit(
        req: SeqRequest, ev: SeqEvent, st: SeqState, delta: str, steps: list[StepChoice]
    ) -> None:
        ev.steps, ev.text_delta, ev.finish = steps, delta, st.finish
        if st.finish is not None:
            req.done = True
        req.sink(ev)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = float(np.max(x))
    return x - (m + float(np.log(np.sum(np.exp(x - m)))))


def _top(lp: np.ndarray, k: int) -> list[tuple[int, float]]:
    k = min(k, lp.shape[0])
    idx = np.argpartition(-lp, k - 1)[:k]
    idx = idx[np.argsort(-lp[idx], kind="stable")]
    return [(int(i), float(lp[i])) for i in idx]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _grammar(text: str) -> Any:
    from llama_cpp import LlamaGrammar

    return LlamaGrammar.from_string(text, verbose=False)


def _request_grammar(extra: dict[str, Any]) -> str | None:
    """GBNF for the request's ``response_format`` or tool call, if it has one."""
    tools = extra.get("tool_call_schema")
    if tools is not None:
        return _schema_grammar(tools, "tools")
    fmt = extra.get("response_format")
    if fmt is None:
        return None
    return grammar_for_response_format(fmt)


def grammar_for_response_format(fmt: dict[str, Any]) -> str | None:
    """GBNF for OpenAI's ``response_format``: ``text`` → none, ``json_object`` → any JSON
    object, ``json_schema`` → its ``json_schema.schema``. Anything else is a ConfigError."""
    kind = fmt.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return _schema_grammar({"type": "object"}, "response_format")
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise ConfigError(
                "response_format.json_schema.schema must be a JSON schema object",
                key="response_format.json_schema.schema",
            )
        return _schema_grammar(schema, "response_format.json_schema.schema")
    raise ConfigError(
        f"response_format type {kind!r} is not one of text, json_object, json_schema",
        key="response_format.type",
    )


def _schema_grammar(schema: dict[str, Any], key: str) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:
        raise ConfigError(
            f"llama.cpp cannot turn this JSON schema into a grammar: {exc}", key=key
        ) from None


def _compile_template(source: str) -> Any:
    """The chat template compiled the way transformers compiles it (sandboxed jinja, trimmed
    blocks, loop controls, ``raise_exception`` and ``strftime_now``)."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(
        x, ensure_ascii=False, indent=indent
    )
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)
