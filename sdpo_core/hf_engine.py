"""The transformers + peft generation engine: runs everywhere (CPU tests and demo, GPU).

A decode loop of our own rather than `generate`, for three reasons:
- attempts of different adapters share a batch (peft `adapter_names`, one adapter per row);
- a finished attempt leaves the batch at once and a waiting one takes its slot, so no slot decodes padding while
  the longest attempt runs on (plain `generate` at batch 32 spent ~70% of its slots on padding here);
- sampling is inverse-CDF with per-attempt uniform streams (engine.attempt_uniforms), reproducible whatever the
  batch holds.
Each distinct prompt is prefilled once; its KV cache is copied into the slots of its attempts.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from sdpo_core.engine import Completion, GenerationRequest, attempt_uniforms
from sdpo_core.policy import LoraPolicy


@dataclass
class _Slot:
    """One attempt being decoded."""

    request: int
    attempt: int  # position within its request
    adapter: str | None
    max_new_tokens: int
    temperature: float
    tokens: list[int]
    logprobs: list[float]


def _layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer, each (B, heads, L, head_dim), across transformers versions."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))


def _left_pad(t: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    pad = length - t.shape[dim]
    if pad == 0:
        return t
    shape = list(t.shape)
    shape[dim] = pad
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class TransformersEngine:
    """Batched multi-adapter sampling on a LoraPolicy; the policy's adapters are used live (no copies)."""

    def __init__(self, policy: LoraPolicy, max_batch_size: int = 32, stop_token_ids: set[int] | None = None) -> None:
        self.policy = policy
        self.max_batch_size = max_batch_size
        self.stop_token_ids = stop_token_ids if stop_token_ids is not None else policy.stop_token_ids

    def publish_adapter(self, name: str) -> None:
        """Nothing to do: generation reads the adapter's live weights."""

    def drop_adapter(self, name: str) -> None:
        """Nothing to do: the policy owns the adapter."""

    @torch.no_grad()
    def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        device = self.policy.device
        stop = torch.tensor(sorted(self.stop_token_ids), device=device)
        prompts = [self._prefill(r) for r in requests]  # (cache layers, last logits) per request
        queue = deque(
            _Slot(i, j, r.adapter, r.max_new_tokens, r.temperature, [], [])
            for i, r in enumerate(requests) for j in range(r.n)
        )
        results: list[list[Completion | None]] = [[None] * r.n for r in requests]

        slots: list[_Slot] = []
        while slots or queue:
            if not slots:  # an empty batch: start its tensors afresh
                cache = DynamicCache()  # rebuilt only when slots join or leave
                mask = torch.zeros(0, 0, dtype=torch.long, device=device)  # (B, L)
                next_pos = torch.zeros(0, dtype=torch.long, device=device)  # (B,)
                logits = torch.zeros(0, 0, device=device)  # (B, V) for the token each slot samples next
                uniforms = torch.zeros(0, 0, device=device)  # (B, max_new)
            # ---- fill free slots with waiting attempts (their KV cache is their prompt's) ----
            newcomers = [queue.popleft() for _ in range(min(self.max_batch_size - len(slots), len(queue)))]
            if newcomers:
                layers, mask, next_pos, logits, uniforms = self._admit(
                    newcomers, requests, prompts, _layers(cache) if slots else [], mask, next_pos, logits, uniforms
                )
                cache = DynamicCache(ddp_cache_data=layers)
                slots += newcomers

            # ---- sample one token per slot ----
            steps = torch.tensor([len(s.tokens) for s in slots], device=device)
            temps = torch.tensor([s.temperature for s in slots], device=device)
            tokens, token_lp = _sample(logits, temps, uniforms.gather(1, steps[:, None])[:, 0])
            is_stop = torch.isin(tokens, stop)
            finished = set()
            for b, (slot, tok, lp, ended) in enumerate(zip(slots, tokens.tolist(), token_lp.tolist(), is_stop.tolist())):
                slot.tokens.append(tok)
                slot.logprobs.append(lp)
                if ended or len(slot.tokens) >= slot.max_new_tokens:
                    results[slot.request][slot.attempt] = self._completion(slot, truncated=not ended)
                    finished.add(b)

            # ---- finished attempts leave; the rest decode one step ----
            if finished:
                keep = torch.tensor([b for b in range(len(slots)) if b not in finished], device=device, dtype=torch.long)
                slots = [slots[b] for b in keep.tolist()]
                if not slots:
                    continue
                layers = [(k.index_select(0, keep), v.index_select(0, keep)) for k, v in _layers(cache)]
                mask, next_pos, tokens = mask.index_select(0, keep), next_pos.index_select(0, keep), tokens[keep]
                uniforms = uniforms.index_select(0, keep)
                layers, mask = _trim_padding(layers, mask)
                cache = DynamicCache(ddp_cache_data=layers)
            mask = torch.cat([mask, mask.new_ones(len(slots), 1)], dim=1)
            logits = self.policy.next_token_logits(
                tokens[:, None], mask, next_pos[:, None], cache, [s.adapter for s in slots]
            ).float()
            next_pos = next_pos + 1
        return [[c for c in per_request if c is not None] for per_request in results]

    def _prefill(self, request: GenerationRequest) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """The prompt's KV cache (batch 1) and the logits of the first response token."""
        ids = torch.tensor([request.prompt_ids], device=self.policy.device)
        mask = torch.ones_like(ids)
        positions = torch.arange(ids.shape[1], device=ids.device)[None]
        cache = DynamicCache()
        logits = self.policy.next_token_logits(ids, mask, positions, cache, [request.adapter]).float()
        return _layers(cache), logits[0]

    def _admit(self, newcomers, requests, prompts, layers, mask, next_pos, logits, uniforms):
        """Append new slots to the batch: right-align every row's cache to a common length."""
        device = mask.device
        prompt_lens = [len(requests[s.request].prompt_ids) for s in newcomers]
        length = max([mask.shape[1], *prompt_lens])
        width = max([uniforms.shape[1] if len(uniforms) else 0, *(s.max_new_tokens for s in newcomers)])
        new_mask = torch.zeros(len(newcomers), length, dtype=torch.long, device=device)
        for b, n in enumerate(prompt_lens):
            new_mask[b, length - n:] = 1
        new_layers = []
        for layer_idx in range(len(prompts[0][0])):
            ks = [_left_pad(prompts[s.request][0][layer_idx][0], length, 2) for s in newcomers]
            vs = [_left_pad(prompts[s.request][0][layer_idx][1], length, 2) for s in newcomers]
            new_layers.append((torch.cat(ks), torch.cat(vs)))
        if layers:
            layers = [
                (torch.cat([_left_pad(k, length, 2), nk]), torch.cat([_left_pad(v, length, 2), nv]))
                for (k, v), (nk, nv) in zip(layers, new_layers, strict=True)
            ]
        else:
            layers = new_layers
        new_uniforms = torch.stack([
            torch.from_numpy(_padded(attempt_uniforms(requests[s.request].seed,
                                                      requests[s.request].attempt_indices[s.attempt],
                                                      s.max_new_tokens), width))
            for s in newcomers
        ]).to(device)
        return (
            layers,
            torch.cat([_left_pad(mask, length, 1), new_mask]),
            torch.cat([next_pos, torch.tensor(prompt_lens, device=device)]),
            torch.cat([logits, torch.stack([prompts[s.request][1] for s in newcomers])]) if len(logits) else
            torch.stack([prompts[s.request][1] for s in newcomers]),
            torch.cat([F.pad(uniforms, (0, width - uniforms.shape[1])), new_uniforms]) if len(uniforms) else
            new_uniforms,
        )

    def _completion(self, slot: _Slot, truncated: bool) -> Completion:
        text = self.policy.tokenizer.decode(slot.tokens, skip_special_tokens=True)
        return Completion(token_ids=slot.tokens, logprobs=slot.logprobs, truncated=truncated, text=text)


def _padded(values, width: int):
    import numpy as np

    return np.pad(values, (0, width - len(values)))


def _trim_padding(layers, mask):
    """Drop leading cache columns that no row attends to any more."""
    used = mask.any(dim=0).nonzero()
    start = int(used[0]) if len(used) else mask.shape[1]
    if start == 0:
        return layers, mask
    return [(k[:, :, start:], v[:, :, start:]) for k, v in layers], mask[:, start:]


def _sample(logits: torch.Tensor, temperatures: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-CDF sampling with given uniforms; greedy where the temperature is 0. Returns (tokens, log-probs)."""
    greedy = temperatures <= 0
    log_probs = F.log_softmax(logits / torch.where(greedy, 1.0, temperatures)[:, None], dim=-1)  # (B, V)
    cdf = log_probs.exp().cumsum(-1)
    target = (u * cdf[:, -1])[:, None]
    sampled = torch.searchsorted(cdf, target, right=True)[:, 0].clamp(max=logits.shape[-1] - 1)
    tokens = torch.where(greedy, logits.argmax(-1), sampled)
    return tokens, log_probs.gather(-1, tokens[:, None])[:, 0]
