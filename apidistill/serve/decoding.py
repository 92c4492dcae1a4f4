"""Run one batch of sequences through the model: shared prefix, padded suffixes, decode loop.

Layout of row ``i`` (prefix length L, longest suffix S)::

    [ shared prefix: L tokens ][ pad … pad | suffix_i ][ generated tokens … ]
      one KV copy for all rows   padding sits *before* the suffix, so every row's last
                                 prompt token is in the same column

Putting the padding between the prefix and the suffix means one ``logits_to_keep=1`` pass
gives every row's next-token logits, and decode steps append one column for all rows. Pads
are invisible to real tokens through an explicit 4-D boolean mask, and every real token gets
the position id it would have without padding, so a row computes what it would compute
alone (up to float rounding: greedy outputs match unbatched decoding, tested).

Rows that finish (EOS, stop string, max_tokens, cancelled) are dropped from the batch at once,
so one long answer does not make the others pay for its steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from apidistill.serve.prefix_cache import PrefixCache, PrefixKV, common_prefix_len
from apidistill.serve.sampling import RowSampler, SamplingParams, StepChoice, choose_tokens
from apidistill.serve.sequence import SeqEvent, SeqState

__all__ = ["BatchRunner", "SeqRequest"]


@dataclass
class SeqRequest:
    """One sequence to generate. ``sink`` receives :class:`SeqEvent` s from the worker thread
    (it must be thread-safe); setting ``cancelled`` drops the row at the next step."""

    prompt_ids: list[int]
    params: SamplingParams
    sink: Callable[[SeqEvent], None]
    sample_index: int = 0
    prompt_logprobs: bool = False  # echo scoring: needs logits at every prompt position
    cancelled: bool = False
    done: bool = field(default=False, init=False)


class BatchRunner:
    """Owns the model on the worker thread; :meth:`run` generates one batch to the end."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        decode: Callable[[list[int]], str],
        pad_id: int,
        prefix_cache: PrefixCache | None,
        shared_attention: bool,
        top_logprobs_cap: int = 20,
    ) -> None:
        self.model = model
        self.decode = decode
        self.pad_id = pad_id
        self.prefix_cache = prefix_cache
        self.shared_attention = shared_attention
        self.top_logprobs_cap = top_logprobs_cap
        self.device = next(model.parameters()).device

    # ------------------------------------------------------------------ entry point

    def run(self, batch: list[SeqRequest]) -> None:
        """Generate every sequence of ``batch``; errors go to the sinks, never up."""
        try:
            with torch.inference_mode():
                self._run(batch)
        except BaseException as exc:  # the server must outlive any one batch
            for req in batch:
                if not req.done:
                    req.done = True
                    req.sink(SeqEvent(error=exc))
            if not isinstance(exc, Exception):
                raise

    def _run(self, batch: list[SeqRequest]) -> None:
        live = [r for r in batch if not r.cancelled]
        if not live:
            return
        if any(r.prompt_logprobs for r in live):
            for r in live:  # echo needs every prompt position's logits: no shared prefix
                self._generate([r], prefix=None, cached=0)
            return
        prefix, cached = self._prefix_for([r.prompt_ids for r in live])
        self._generate(live, prefix=prefix, cached=cached)

    # ------------------------------------------------------------------ prefix

    def _prefix_for(self, prompts: list[list[int]]) -> tuple[PrefixKV | None, int]:
        """KV of the batch's common prefix (from the LRU where possible) and how many of its
        tokens came from the cache. Every row keeps at least one token to prefill."""
        if self.prefix_cache is None:
            return None, 0
        length = min(len(p) for p in prompts) - 1
        first = prompts[0]
        for p in prompts[1:]:
            length = min(length, common_prefix_len(first, p))
        if length <= 0:
            return None, 0
        tokens = tuple(first[:length])
        hit = self.prefix_cache.longest(tokens)
        reused = len(hit) if hit is not None else 0
        if reused == length:
            return hit, reused
        entry = self._extend(hit, tokens)
        self.prefix_cache.put(entry)
        return entry, reused

    def _extend(self, hit: PrefixKV | None, tokens: tuple[int, ...]) -> PrefixKV:
        """Compute KV for ``tokens`` given the KV of its first ``len(hit)`` tokens."""
        start = len(hit) if hit is not None else 0
        new = torch.tensor([tokens[start:]], device=self.device)
        n = new.shape[1]
        own_mask = torch.tril(torch.ones(n, n, dtype=torch.bool, device=self.device))[None, None]
        positions = torch.arange(start, start + n, device=self.device)[None]
        cache, kwargs = self._row_cache(hit, rows=1)
        mask = self._with_prefix_columns(own_mask, hit, rows=1)
        self.model(
            new,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
            **kwargs,
        )
        layers = []
        for i, layer in enumerate(cache.layers):
            k, v = layer.keys[0, :, -n:], layer.values[0, :, -n:]
            if hit is not None:
                hk, hv = hit.layers[i]
                k, v = torch.cat([hk, k], dim=1), torch.cat([hv, v], dim=1)
            layers.append((k.contiguous(), v.contiguous()))
        return PrefixKV(tokens, layers)

    def _row_cache(self, prefix: PrefixKV | None, rows: int) -> tuple[Any, dict[str, Any]]:
        """A fresh per-row cache, and the forward kwargs that make rows see ``prefix``."""
        from transformers import DynamicCache

        if prefix is None or len(prefix) == 0:
            return DynamicCache(), {}
        if self.shared_attention:
            return DynamicCache(), {"shared_prefix": prefix.layers}
        # Fallback for models without the shared-prefix attention: one copy per row.
        data = [
            (
                k.unsqueeze(0).expand(rows, -1, -1, -1).contiguous(),
                v.unsqueeze(0).expand(rows, -1, -1, -1).contiguous(),
            )
            for k, v in prefix.layers
        ]
        return DynamicCache(data), {}

    def _with_prefix_columns(
        self, own_mask: torch.Tensor, prefix: PrefixKV | None, rows: int
    ) -> torch.Tensor:
        """In the copying fallback the prefix is part of each row's cache: prepend visible
        columns for it. With shared attention the mask covers the rows' own keys only."""
        if prefix is None or len(prefix) == 0 or self.shared_attention:
            return own_mask
        b, _, q, _ = own_mask.shape
        ones = torch.ones(b, 1, q, len(prefix), dtype=torch.bool, device=self.device)
        return torch.cat([ones.expand(max(b, rows), 1, q, -1), own_mask], dim=-1)

    # ------------------------------------------------------------------ generation

    def _generate(self, reqs: list[SeqRequest], *, prefix: PrefixKV | None, cached: int) -> None:
        plen = len(prefix) if prefix is not None else 0
        suffixes = [r.prompt_ids[plen:] for r in reqs]
        b, s = len(reqs), max(len(x) for x in suffixes)
        pads = [s - len(x) for x in suffixes]
        ids = torch.full((b, s), self.pad_id, dtype=torch.long)
        for i, x in enumerate(suffixes):
            ids[i, pads[i] :] = torch.tensor(x, dtype=torch.long)
        cols = torch.arange(s)
        valid = cols[None, :] >= torch.tensor(pads)[:, None]  # (B, S) real tokens
        positions = (plen + cols[None, :] - torch.tensor(pads)[:, None]).clamp(min=plen)
        causal = torch.tril(torch.ones(s, s, dtype=torch.bool))
        mask = causal[None] & valid[:, None, :]
        mask |= torch.eye(s, dtype=torch.bool)[None] & ~valid[:, :, None]  # pads see themselves
        mask = mask[:, None]
        cache, kwargs = self._row_cache(prefix, rows=b)
        echo = b == 1 and reqs[0].prompt_logprobs
        out = self.model(
            ids.to(self.device),
            attention_mask=self._with_prefix_columns(mask.to(self.device), prefix, b),
            position_ids=positions.to(self.device),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=0 if echo else 1,
            **kwargs,
        )
        logits = out.logits[:, -1].float()
        states = [SeqState(r.params, self.decode) for r in reqs]
        samplers = [RowSampler(r.params, r.sample_index) for r in reqs]
        prompt_steps = self._prompt_steps(out.logits[0], reqs[0]) if echo else None
        first = [
            SeqEvent(
                prompt_tokens=len(r.prompt_ids), cached_tokens=cached, prompt_steps=prompt_steps
            )
            for r in reqs
        ]
        self._decode_loop(
            reqs, states, samplers, logits, cache, kwargs, valid, positions[:, -1], prefix, first
        )

    def _decode_loop(
        self,
        reqs: list[SeqRequest],
        states: list[SeqState],
        samplers: list[RowSampler],
        logits: torch.Tensor,
        cache: Any,
        kwargs: dict[str, Any],
        valid: torch.Tensor,
        last_pos: torch.Tensor,
        prefix: PrefixKV | None,
        first: list[SeqEvent],
    ) -> None:
        pending = dict(enumerate(first))  # each sequence's first event carries prompt facts
        for i, st in enumerate(states):
            if st.params.max_tokens == 0:
                st.end_without_tokens()
                self._emit(reqs[i], pending.pop(i), st, "", [])
        rows = list(range(len(reqs)))  # batch row j generates reqs[rows[j]]
        while True:
            keep = [i for i in rows if states[i].finish is None and not reqs[i].cancelled]
            if not keep:
                break
            if len(keep) < len(rows):
                logits, valid, last_pos = self._select(keep, rows, logits, cache, valid, last_pos)
            rows = keep
            choices = choose_tokens(logits, [samplers[i] for i in rows])
            for i, choice in zip(rows, choices, strict=True):
                delta, steps = states[i].push(choice)
                self._emit(reqs[i], pending.pop(i, None) or SeqEvent(), states[i], delta, steps)
            if all(states[i].finish is not None for i in rows):
                break
            step = torch.tensor([[c.token_id] for c in choices], device=self.device)
            valid = torch.cat([valid, torch.ones(len(rows), 1, dtype=torch.bool)], dim=1)
            last_pos = last_pos + 1
            out = self.model(
                step,
                attention_mask=self._with_prefix_columns(
                    valid[:, None, None, :].to(self.device), prefix, len(rows)
                ),
                position_ids=last_pos[:, None].to(self.device),
                past_key_values=cache,
                use_cache=True,
                **kwargs,
            )
            logits = out.logits[:, -1].float()
        for req in reqs:  # cancelled rows end quietly
            req.done = True

    def _select(
        self,
        keep: list[int],
        rows: list[int],
        logits: torch.Tensor,
        cache: Any,
        valid: torch.Tensor,
        last_pos: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Drop finished rows from every per-row tensor and from the cache."""
        at = {r: j for j, r in enumerate(rows)}
        idx = torch.tensor([at[r] for r in keep], dtype=torch.long)
        dev_idx = idx.to(self.device)
        for layer in cache.layers:
            if getattr(layer, "keys", None) is not None and layer.keys.numel():
                layer.keys = layer.keys.index_select(0, dev_idx)
                layer.values = layer.values.index_select(0, dev_idx)
        return (
            logits.index_select(0, dev_idx),
            valid.index_select(0, idx),
            last_pos.index_select(0, idx),
        )

    @staticmethod
    def _emit(
        req: SeqRequest, ev: SeqEvent, st: SeqState, delta: str, steps: list[StepChoice]
    ) -> None:
        ev.steps, ev.text_delta, ev.finish = steps, delta, st.finish
        if st.finish is not None:
            req.done = True
        req.sink(ev)

    def _prompt_steps(self, logits: torch.Tensor, req: SeqRequest) -> list[StepChoice | None]:
        """Logprob of each prompt token given the ones before it (first: None), with top-k."""
        ids = req.prompt_ids
        k = min(req.params.top_logprobs, self.top_logprobs_cap)
        lp = torch.log_softmax(logits[:-1].float(), dim=-1)
        target = torch.tensor(ids[1:], device=lp.device)[:, None]
        chosen = lp.gather(1, target)[:, 0].tolist()
        tops: list[list[tuple[int, float]]] = [[] for _ in chosen]
        if k > 0:
            vals, idx = torch.topk(lp, k, dim=-1)
            tops = [
                list(zip(i, v, strict=True))
                for i, v in zip(idx.tolist(), vals.tolist(), strict=True)
            ]
        steps: list[StepChoice | None] = [None]
        steps.extend(StepChoice(t, c, top) for t, c, top in zip(ids[1:], chosen, tops, strict=True))
        return steps
