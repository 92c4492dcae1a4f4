"""In-process generation on a HF causal LM: the engine behind ``apidistill serve``.

Other stages call it directly (no HTTP)::

    engine = ServeEngine.from_spec("smollm2-135m-instruct")
    outs = await engine.generate(messages, None, GenerationParams(max_tokens=32, logprobs=True))

Requests that arrive together are batched and the KV cache of their shared prompt prefix is
computed once and kept in a small LRU (see :mod:`apidistill.serve.decoding`); on the demo's
few-shot prompt that is what makes a CPU teacher fast enough. Outputs equal unbatched greedy
decoding.

Logprobs are ``log_softmax`` of the raw logits (the model's unprocessed distribution, before
temperature/top-p/top-k), with each token's UTF-8 bytes. A generated EOS token ends the
sequence and is not part of ``text``/``token_ids``/``logprobs``; it is counted in
``completion_tokens`` (it was generated, as OpenAI and vLLM bill it). A LoRA adapter is merged
into the weights at load: same outputs as the unmerged model up to float rounding, no
per-step adapter cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from apidistill.errors import ApidistillError, ConfigError, ModelLoadError
from apidistill.records import GenerationParams, Message, TokenLogprob, TopLogprob
from apidistill.serve.decoding import BatchRunner, SeqRequest
from apidistill.serve.prefix_attention import enable_shared_prefix
from apidistill.serve.prefix_cache import PrefixCache
from apidistill.serve.sampling import SamplingParams, StepChoice
from apidistill.serve.scheduler import Scheduler
from apidistill.serve.sequence import SeqEvent
from apidistill.serve.tokens import TokenRenderer

if TYPE_CHECKING:
    import torch

__all__ = ["EngineOutput", "EngineStats", "ServeEngine", "StreamDelta", "physical_cores"]

MAX_TOP_LOGPROBS = 20


@dataclass
class EngineOutput:
    """One generated choice. ``logprobs`` entries have ``token_id`` filled."""

    text: str
    finish_reason: Literal["stop", "length"]
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None
    prompt_tokens: int
    completion_tokens: int
    index: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache
    stop_sequence: str | None = None  # the stop string that ended it, if one did
    # echo=True: the prompt's tokens and the logprob of each given the ones before it
    # (the first has no context: None).
    prompt_token_ids: list[int] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None


@dataclass
class StreamDelta:
    """New text of choice ``index``; the last delta of a choice has ``output`` set."""

    index: int
    text: str
    logprobs: list[TokenLogprob] | None = None
    finish_reason: Literal["stop", "length"] | None = None
    output: EngineOutput | None = None


@dataclass
class EngineStats:
    """Counters since start: how well batching and the prefix cache are working."""

    batches: int = 0
    sequences: int = 0
    largest_batch: int = 0
    busy_s: float = 0.0  # time the model thread spent generating


@dataclass
class _Prepared:
    """A validated request: prompt ids plus one SamplingParams per choice."""

    prompt_ids: list[int]
    sampling: list[SamplingParams]
    echo: bool
    as_token_ids: bool


def physical_cores() -> int:
    """Physical cores this process may run on (hyperthread siblings counted once)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    cores: set[tuple[str, str]] = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(
                (
                    (topo / "physical_package_id").read_text().strip(),
                    (topo / "core_id").read_text().strip(),
                )
            )
        except OSError:
            return max(1, len(cpus))
    return max(1, len(cores) or len(cpus) or (os.cpu_count() or 1))


class ServeEngine:
    """Batched, prefix-cached generation with logprobs on one model."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        model_name: str = "model",
        max_batch_size: int = 16,
        prefix_cache: bool = True,
        prefix_cache_entries: int = 4,
        prefix_cache_tokens: int = 16384,
        max_batch_tokens: int = 32768,
        gather_window_s: float = 0.02,
        fingerprint: str | None = None,
    ) -> None:
        """Takes ownership of ``model``: its attention is switched to the shared-prefix
        implementation (plain SDPA for every other caller)."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_batch_size = max_batch_size
        self.renderer = TokenRenderer(tokenizer)
        self.max_context = int(
            getattr(model.config, "max_position_embeddings", 0)
            or getattr(tokenizer, "model_max_length", 0)
            or 2048
        )
        self.eos_ids = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        if pad is None:  # any id works: pads are masked out; an EOS id is always valid
            pad = min(self.eos_ids) if self.eos_ids else 0
        self.shared_attention = enable_shared_prefix(model) if prefix_cache else False
        self.prefix_cache = (
            PrefixCache(prefix_cache_entries, prefix_cache_tokens) if prefix_cache else None
        )
        self._runner = BatchRunner(
            model,
            decode=self._decode,
            pad_id=int(pad),
            prefix_cache=self.prefix_cache,
            shared_attention=self.shared_attention,
        )
        self.stats = EngineStats()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="apidistill-model")
        self._sched_kwargs = {
            "max_batch_size": max_batch_size,
            "max_batch_tokens": max_batch_tokens,
            "gather_window_s": gather_window_s,
        }
        # One scheduler per event loop that uses the engine (tests and sync facades may
        # run several loops over the engine's life); the model thread is shared.
        self._schedulers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Scheduler] = (
            weakref.WeakKeyDictionary()
        )
        self.fingerprint = (
            fingerprint or "fp_" + hashlib.sha256(model_name.encode()).hexdigest()[:12]
        )

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_spec(
        cls,
        model: str,
        *,
        adapter: str | None = None,
        max_batch_size: int = 16,
        num_threads: int | None = None,
        **kwargs: Any,
    ) -> ServeEngine:
        """Load ``model`` (embedded name, folder, GGUF, exported student) + optional LoRA
        ``adapter`` and build an engine. Sets torch's thread count to the physical cores."""
        import torch

        from apidistill.model_loading import load_model

        torch.set_num_threads(num_threads or physical_cores())
        lm = load_model(model, adapter=adapter)
        tokenizer = _load_tokenizer_for(model, adapter)
        if hasattr(lm, "merge_and_unload"):  # a peft model: fold the adapter into the weights
            lm = lm.merge_and_unload()
        tag = f"{model}|{adapter or ''}|{_spec_stamp(model)}|{_spec_stamp(adapter)}"
        fp = "fp_" + hashlib.sha256(tag.encode()).hexdigest()[:12]
        return cls(
            lm, tokenizer, model_name=model, max_batch_size=max_batch_size, fingerprint=fp, **kwargs
        )

    # ------------------------------------------------------------------ tokens

    def encode_messages(
        self, messages: Sequence[Message], *, continue_final_message: bool = False
    ) -> list[int]:
        """Prompt ids of a chat, rendered with the tokenizer's chat template."""
        if not messages:
            raise ConfigError("messages must not be empty", key="messages")
        if getattr(self.tokenizer, "chat_template", None) is None:
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
            text = self.tokenizer.apply_chat_template(
                [{"role": m.role, "content": m.content} for m in messages],
                tokenize=False,
                add_generation_prompt=not continue_final_message,
                continue_final_message=continue_final_message,
            )
        except Exception as exc:
            raise ConfigError(
                f"the chat template rejected these messages: {exc}", key="messages"
            ) from None
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_prompt(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt)["input_ids"])

    def count_prompt_tokens(self, messages_or_prompt: Sequence[Message] | str) -> int:
        """Prompt tokens exactly as ``usage.prompt_tokens`` will report them."""
        if isinstance(messages_or_prompt, str):
            return len(self.encode_prompt(messages_or_prompt))
        return len(self.encode_messages(list(messages_or_prompt)))

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def token_logprob(self, step: StepChoice, *, as_token_ids: bool = False) -> TokenLogprob:
        """A chosen token with its logprob and top alternatives, as the record schema holds it."""
        return TokenLogprob(
            token_id=step.token_id,
            token=self.token_text(step.token_id, as_token_ids),
            bytes=list(self.renderer.bytes_of(step.token_id)),
            logprob=float(step.logprob if step.logprob is not None else 0.0),
            top=[
                TopLogprob(
                    token_id=t,
                    token=self.token_text(t, as_token_ids),
                    bytes=list(self.renderer.bytes_of(t)),
                    logprob=float(lp),
                )
                for t, lp in step.top
            ],
        )

    def token_text(self, token_id: int, as_token_ids: bool = False) -> str:
        """A token as the APIs show it (``token_id:<id>`` in vLLM's token-id mode)."""
        return f"token_id:{token_id}" if as_token_ids else self.renderer.text_of(token_id)

    # ------------------------------------------------------------------ requests

    def prepare(
        self,
        messages: Sequence[Message] | None,
        prompt: str | None,
        params: GenerationParams | None,
        *,
        n: int = 1,
        echo: bool = False,
        prompt_ids: Sequence[int] | None = None,
        max_tokens: int | None = None,
        continue_final_message: bool = False,
    ) -> _Prepared:
        """Validate and tokenize; raises :class:`ConfigError` naming the bad field."""
        params = params or GenerationParams()
        given = sum(x is not None for x in (messages, prompt, prompt_ids))
        if given != 1:
            raise ConfigError("give exactly one of messages, prompt or prompt token ids")
        if n < 1:
            raise ConfigError(f"n must be at least 1, got {n}", key="n")
        if messages is not None:
            ids = self.encode_messages(messages, continue_final_message=continue_final_message)
        elif prompt is not None:
            ids = self.encode_prompt(prompt)
        else:
            ids = [int(t) for t in prompt_ids or []]
            vocab = int(self.model.config.vocab_size)
            if any(t < 0 or t >= vocab for t in ids):
                raise ConfigError(f"prompt token ids must be in [0, {vocab})", key="prompt")
        if not ids:
            raise ConfigError("the prompt is empty", key="prompt")
        budget = params.max_tokens if max_tokens is None else max_tokens
        if budget < 0 or (budget == 0 and not echo):
            raise ConfigError(f"max_tokens must be at least 1, got {budget}", key="max_tokens")
        if len(ids) + budget > self.max_context:
            raise ConfigError(
                f"this request needs {len(ids)} prompt + {budget} new tokens, more than the "
                f"model's context of {self.max_context}",
                key="max_tokens",
                hint="shorten the prompt or lower max_tokens",
            )
        extra = params.extra_body or {}
        top_k = extra.get("top_k")
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool)):
            raise ConfigError(f"top_k must be an integer, got {top_k!r}", key="top_k")
        if params.top_logprobs > MAX_TOP_LOGPROBS:
            raise ConfigError(
                f"top_logprobs must be at most {MAX_TOP_LOGPROBS}", key="top_logprobs"
            )
        stop_ids = frozenset() if extra.get("ignore_eos") else self.eos_ids
        base = SamplingParams(
            max_tokens=budget,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=top_k if top_k and top_k > 0 else None,
            seed=params.seed,
            stop=tuple(s for s in (params.stop or []) if s),
            stop_token_ids=stop_ids,
            logprobs=params.logprobs or params.top_logprobs > 0,
            top_logprobs=params.top_logprobs,
        )
        return _Prepared(ids, [base] * n, echo, bool(extra.get("return_tokens_as_token_ids")))

    async def generate(
        self,
        messages: list[Message] | None,
        prompt: str | None,
        params: GenerationParams,
        *,
        echo: bool = False,
        n: int = 1,
        prompt_ids: Sequence[int] | None = None,
    ) -> list[EngineOutput]:
        """Generate ``n`` choices for a chat (``messages``) or a plain ``prompt``."""
        prepared = self.prepare(messages, prompt, params, n=n, echo=echo, prompt_ids=prompt_ids)
        return await self.run(prepared)

    async def score(
        self,
        messages: list[Message] | None = None,
        prompt: str | None = None,
        *,
        top_logprobs: int = 0,
        prompt_ids: Sequence[int] | None = None,
    ) -> EngineOutput:
        """Logprob of every prompt token given the ones before it; generates nothing."""
        params = GenerationParams(max_tokens=1, logprobs=True, top_logprobs=top_logprobs)
        prepared = self.prepare(
            messages, prompt, params, echo=True, prompt_ids=prompt_ids, max_tokens=0
        )
        return (await self.run(prepared))[0]

    def stream(
        self,
        messages: list[Message] | None,
        prompt: str | None,
        params: GenerationParams,
        *,
        echo: bool = False,
        n: int = 1,
        prompt_ids: Sequence[int] | None = None,
    ) -> AsyncIterator[StreamDelta]:
        """Like :meth:`generate`, yielding text as it is decided (see :class:`StreamDelta`)."""
        prepared = self.prepare(messages, prompt, params, n=n, echo=echo, prompt_ids=prompt_ids)
        return self.run_stream(prepared)

    async def run(self, prepared: _Prepared) -> list[EngineOutput]:
        """Run a :meth:`prepare` d request to the end."""
        outputs: dict[int, EngineOutput] = {}
        async for delta in self.run_stream(prepared):
            if delta.output is not None:
                outputs[delta.index] = delta.output
        return [outputs[i] for i in sorted(outputs)]

    async def run_stream(self, prepared: _Prepared) -> AsyncIterator[StreamDelta]:
        """Submit a :meth:`prepare` d request and yield its deltas; closing the iterator
        (a client went away) cancels its sequences."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, SeqEvent]] = asyncio.Queue()
        reqs: list[SeqRequest] = []

        def sink_for(index: int):  # called on the model thread
            def sink(ev: SeqEvent) -> None:
                try:
                    loop.call_soon_threadsafe(queue.put_nowait, (index, ev))
                except RuntimeError:  # the loop is gone: nobody is listening any more
                    reqs[index].cancelled = True

            return sink

        for i, sp in enumerate(prepared.sampling):
            reqs.append(
                SeqRequest(
                    prepared.prompt_ids,
                    sp,
                    sink_for(i),
                    sample_index=i,
                    prompt_logprobs=prepared.echo,
                )
            )
        self._scheduler(loop).submit(reqs)
        open_ = set(range(len(reqs)))
        firsts: dict[int, SeqEvent] = {}
        steps: dict[int, list[StepChoice]] = {i: [] for i in open_}
        try:
            while open_:
                index, ev = await queue.get()
                if ev.error is not None:
                    raise _engine_error(ev.error)
                firsts.setdefault(index, ev)
                steps[index].extend(ev.steps)
                want_lp = reqs[index].params.logprobs
                lps = (
                    [self.token_logprob(s, as_token_ids=prepared.as_token_ids) for s in ev.steps]
                    if want_lp and ev.steps
                    else None
                )
                if ev.finish is None:
                    if ev.text_delta or lps:
                        yield StreamDelta(index, ev.text_delta, lps)
                    continue
                open_.discard(index)
                out = self._output(index, firsts[index], ev, steps[index], prepared, want_lp)
                yield StreamDelta(index, ev.text_delta, lps, ev.finish.reason, out)
        finally:
            for r in reqs:
                r.cancelled = True

    def _output(
        self,
        index: int,
        first: SeqEvent,
        last: SeqEvent,
        steps: list[StepChoice],
        prepared: _Prepared,
        want_lp: bool,
    ) -> EngineOutput:
        fin = last.finish
        assert fin is not None
        kept = steps[: fin.token_count]
        as_ids = prepared.as_token_ids
        prompt_lps = None
        if prepared.echo and first.prompt_steps is not None:
            prompt_lps = [
                None if s is None else self.token_logprob(s, as_token_ids=as_ids)
                for s in first.prompt_steps
            ]
        return EngineOutput(
            text=fin.text,
            finish_reason=fin.reason,
            token_ids=[s.token_id for s in kept],
            logprobs=[self.token_logprob(s, as_token_ids=as_ids) for s in kept]
            if want_lp
            else None,
            prompt_tokens=first.prompt_tokens,
            completion_tokens=fin.generated,
            index=index,
            cached_tokens=first.cached_tokens,
            stop_sequence=fin.stop_sequence,
            prompt_token_ids=list(prepared.prompt_ids) if prepared.echo else None,
            prompt_logprobs=prompt_lps,
        )

    # ------------------------------------------------------------------ load and lifecycle

    def _scheduler(self, loop: asyncio.AbstractEventLoop) -> Scheduler:
        sched = self._schedulers.get(loop)
        if sched is None:
            sched = Scheduler(self._run_batch, self._executor, **self._sched_kwargs)
            self._schedulers[loop] = sched
        return sched

    def _run_batch(self, batch: list[SeqRequest]) -> None:
        """On the model thread: one batch, counted in :attr:`stats`."""
        st = self.stats
        st.batches += 1  # counted before any result can reach a caller
        st.sequences += len(batch)
        st.largest_batch = max(st.largest_batch, len(batch))
        started = time.perf_counter()
        try:
            self._runner.run(batch)
        finally:
            st.busy_s += time.perf_counter() - started

    def load(self) -> tuple[int, int]:
        """(sequences waiting, sequences generating) on the calling thread's event loop."""
        with contextlib.suppress(RuntimeError):
            sched = self._schedulers.get(asyncio.get_running_loop())
            if sched is not None:
                return sched.queued, len(sched.running)
        return 0, 0

    def last_batch_seconds(self) -> float:
        with contextlib.suppress(RuntimeError):
            sched = self._schedulers.get(asyncio.get_running_loop())
            if sched is not None:
                return sched.last_batch_s
        return 0.0

    async def aclose(self) -> None:
        """Cancel queued work on this loop's scheduler and stop the model thread."""
        with contextlib.suppress(RuntimeError):
            sched = self._schedulers.pop(asyncio.get_running_loop(), None)
            if sched is not None:
                await sched.aclose()
        self.close()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, list | tuple):
        ids.update(int(e) for e in eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    # where the chat template ends a turn (Gemma's <end_of_turn>, Llama 3's <|eot_id|>): the
    # token training taught the student to stop at, whatever eos_token says
    from apidistill.train.collate import template_end_of_turn

    eot = template_end_of_turn(tokenizer)
    if eot is not None:
        ids.add(eot)
    return frozenset(ids)


def _spec_stamp(spec: str | None) -> str:
    """Changes when the files behind a local spec change (for the fingerprint)."""
    if not spec:
        return ""
    p = Path(spec).expanduser()
    try:
        return str(p.stat().st_mtime_ns) if p.exists() else ""
    except OSError:
        return ""


def _load_tokenizer_for(model: str, adapter: str | None) -> Any:
    """The tokenizer saved with the adapter/student if there is one, else the base model's."""
    from apidistill.model_loading import load_tokenizer

    if adapter and (Path(adapter) / "tokenizer_config.json").is_file():
        return load_tokenizer(adapter)  # the export's tokenizer (its chat template may differ)
    try:
        return load_tokenizer(model)
    except ModelLoadError:
        cfg = Path(model).expanduser() / "adapter_config.json"
        if not cfg.is_file():
            raise
        import json

        base = json.loads(cfg.read_text()).get("base_model_name_or_path") or ""
        marker = cfg.parent / "base_model.txt"
        if marker.is_file():
            base = marker.read_text().strip()
        return load_tokenizer(base)


def _engine_error(exc: BaseException) -> ApidistillError:
    if isinstance(exc, ApidistillError):
        return exc
    return ApidistillError(
        f"generation failed: {type(exc).__name__}: {exc}",
        hint="the server keeps running; report this with the request that caused it",
    )
