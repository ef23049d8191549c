"""The transformers + peft generation engine: runs everywhere (CPU tests and demo, GPU).

A decode loop of our own rather than `generate`, for three reasons:
- attempts of different adapters share a batch (LoraPolicy.rows_lora: one adapter per row, batched matmuls);
- a finished attempt leaves the batch and a waiting one takes its slot, so no slot decodes padding while the
  longest attempt runs on (plain `generate` at batch 32 spent ~70% of its slots on padding here);
- sampling is inverse-CDF with per-attempt uniform streams (engine.attempt_uniforms), reproducible whatever the
  batch holds.
Each distinct prompt is prefilled once; its KV cache is copied into the slots of its attempts. Sampled tokens
stay on the device; the host looks at them every `sync_every` tokens (1 on CPU, where a look is free; more on
GPU, where each look stalls the stream), and a row that stopped meanwhile wastes at most sync_every - 1 steps.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from sdpo_core.engine import Completion, GenerationRequest, attempt_uniforms
from sdpo_core.policy import LoraPolicy, RowAdapters

Layers = list[tuple[torch.Tensor, torch.Tensor]]  # (keys, values) per layer, each (B, heads, L, head_dim)


@dataclass
class _Slot:
    """One attempt: which request, which of its attempts."""

    request: int
    attempt: int


@dataclass
class _Batch:
    """Decode state, row b of every tensor belonging to slots[b]. Caches are right-aligned (left padding)."""

    slots: list[_Slot]
    cache: DynamicCache  # grows in place while the rows stay; rebuilt when rows join or leave
    mask: torch.Tensor  # (B, L) 1 where the cache holds a real token
    next_pos: torch.Tensor  # (B,) position id of the token fed next
    logits: torch.Tensor  # (B, V) logits of the token each row samples next
    uniforms: torch.Tensor  # (B, W) the rows' random draws, one per token
    tokens: torch.Tensor  # (B, W + 1) sampled tokens; the extra column absorbs writes of finished rows
    logprobs: torch.Tensor  # (B, W + 1)
    length: torch.Tensor  # (B,) tokens sampled so far
    limit: torch.Tensor  # (B,) max_new_tokens
    temperature: torch.Tensor  # (B,)
    adapter: torch.Tensor  # (B,) index into the rows_lora names (0 = base)
    done: torch.Tensor  # (B,) bool
    stopped: torch.Tensor  # (B,) bool: done by a stop token (not by the length limit)

    _ROW_TENSORS = ("mask", "next_pos", "logits", "uniforms", "tokens", "logprobs", "length", "limit", "temperature",
                    "adapter", "done", "stopped")

    def select(self, keep: torch.Tensor) -> _Batch:
        """The rows in `keep`, with cache columns no remaining row attends to dropped."""
        picked = {name: getattr(self, name).index_select(0, keep) for name in self._ROW_TENSORS}
        used = picked["mask"].any(dim=0).nonzero()
        start = int(used[0]) if len(used) else picked["mask"].shape[1]
        picked["mask"] = picked["mask"][:, start:]
        layers = [(k.index_select(0, keep)[:, :, start:], v.index_select(0, keep)[:, :, start:])
                  for k, v in _layers(self.cache)]
        return _Batch(slots=[self.slots[b] for b in keep.tolist()], cache=DynamicCache(ddp_cache_data=layers), **picked)

    @staticmethod
    def concat(a: _Batch, b: _Batch) -> _Batch:
        """Rows of a then b: caches left-padded to a common length, per-token buffers right-padded."""
        length = max(a.mask.shape[1], b.mask.shape[1])
        width = max(a.uniforms.shape[1], b.uniforms.shape[1])
        joined = {}
        for f in fields(_Batch):
            name = f.name
            if name == "slots":
                joined[name] = a.slots + b.slots
            elif name == "cache":
                joined[name] = DynamicCache(ddp_cache_data=[
                    (torch.cat([_left_pad(ka, length, 2), _left_pad(kb, length, 2)]),
                     torch.cat([_left_pad(va, length, 2), _left_pad(vb, length, 2)]))
                    for (ka, va), (kb, vb) in zip(_layers(a.cache), _layers(b.cache), strict=True)
                ])
            elif name == "mask":
                joined[name] = torch.cat([_left_pad(a.mask, length, 1), _left_pad(b.mask, length, 1)])
            elif name in ("uniforms", "tokens", "logprobs"):
                extra = 1 if name != "uniforms" else 0
                joined[name] = torch.cat([_right_pad(getattr(a, name), width + extra),
                                          _right_pad(getattr(b, name), width + extra)])
            else:
                joined[name] = torch.cat([getattr(a, name), getattr(b, name)])
        return _Batch(**joined)


def _left_pad(t: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    pad = length - t.shape[dim]
    if pad == 0:
        return t
    shape = list(t.shape)
    shape[dim] = pad
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _right_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(t, (0, width - t.shape[1])) if t.shape[1] < width else t


def _layers(cache) -> Layers:
    """(keys, values) per layer across transformers versions."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))


class TransformersEngine:
    """Batched multi-adapter sampling on a LoraPolicy; the policy's adapters are used live (no copies)."""

    def __init__(self, policy: LoraPolicy, max_batch_size: int = 32, stop_token_ids: set[int] | None = None,
                 sync_every: int | None = None) -> None:
        self.policy = policy
        self.max_batch_size = max_batch_size
        self.stop_token_ids = stop_token_ids if stop_token_ids is not None else policy.stop_token_ids
        self.sync_every = sync_every or (8 if policy.device.type == "cuda" else 1)
        self.decode_steps = 0  # counters for benchmarks: batched decode forwards, and KV-cache bytes they read
        self.cache_bytes_read = 0

    def publish_adapter(self, name: str) -> None:
        """Nothing to do: generation reads the adapter's live weights."""

    def drop_adapter(self, name: str) -> None:
        """Nothing to do: the policy owns the adapter."""

    @torch.no_grad()
    def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        names = sorted({r.adapter for r in requests if r.adapter is not None})
        with self.policy.rows_lora(names) as rows:
            return self._generate(requests, rows, {name: i for i, name in enumerate(names, start=1)})

    def _generate(self, requests: list[GenerationRequest], rows: RowAdapters,
                  adapter_index: dict[str, int]) -> list[list[Completion]]:
        device = self.policy.device
        stop = torch.tensor(sorted(self.stop_token_ids), device=device)
        prompts = [self._prefill(r, rows, adapter_index.get(r.adapter, 0)) for r in requests]
        queue = deque(_Slot(i, j) for i, r in enumerate(requests) for j in range(r.n))
        results: list[list[Completion | None]] = [[None] * r.n for r in requests]
        batch: _Batch | None = None
        while True:
            # ---- waiting attempts take the free slots (their KV cache is their prompt's) ----
            free = self.max_batch_size - (len(batch.slots) if batch else 0)
            if queue and free > 0:
                newcomers = self._admit([queue.popleft() for _ in range(min(free, len(queue)))], requests, prompts,
                                        adapter_index)
                batch = newcomers if batch is None else _Batch.concat(batch, newcomers)
            if batch is None:
                break

            # ---- decode sync_every tokens without looking at them on the host ----
            for i in range(self.sync_every):
                tokens = self._sample(batch, stop)
                if i < self.sync_every - 1:
                    self._forward(batch, tokens, rows)

            # ---- finished attempts leave the batch; the others decode on ----
            done = batch.done.tolist()
            if any(done):
                for b in (b for b, d in enumerate(done) if d):
                    slot = batch.slots[b]
                    results[slot.request][slot.attempt] = self._completion(batch, b)
                keep = torch.tensor([b for b, d in enumerate(done) if not d], dtype=torch.long, device=device)
                if len(keep) == 0:
                    batch = None
                    continue
                batch, tokens = batch.select(keep), tokens.index_select(0, keep)
            self._forward(batch, tokens, rows)
        return [[c for c in per_request if c is not None] for per_request in results]

    def _sample(self, batch: _Batch, stop: torch.Tensor) -> torch.Tensor:
        """Sample one token per row into the batch's buffers; returns the tokens (B,)."""
        rows = torch.arange(len(batch.slots), device=batch.logits.device)
        active = ~batch.done
        u = batch.uniforms.gather(1, batch.length.clamp(max=batch.uniforms.shape[1] - 1)[:, None])[:, 0]
        tokens, token_lp = _sample(batch.logits, batch.temperature, u)
        batch.tokens[rows, batch.length] = tokens  # finished rows write past their end (the spare column)
        batch.logprobs[rows, batch.length] = token_lp
        is_stop = torch.isin(tokens, stop) & active
        batch.length += active.long()
        batch.stopped |= is_stop
        batch.done |= is_stop | (batch.length >= batch.limit)
        return tokens

    def _forward(self, batch: _Batch, tokens: torch.Tensor, rows: RowAdapters) -> None:
        """Feed `tokens` (B,) to the model: extends the cache, refreshes the logits."""
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch.slots), 1)], dim=1)
        self.decode_steps += 1
        self.cache_bytes_read += sum(2 * k.numel() * k.element_size() for k, _ in _layers(batch.cache))
        rows.index = batch.adapter
        batch.logits = self.policy.next_token_logits(tokens[:, None], batch.mask, batch.next_pos[:, None],
                                                     batch.cache).float()
        batch.next_pos = batch.next_pos + 1

    def _prefill(self, request: GenerationRequest, rows: RowAdapters, adapter: int) -> tuple[Layers, torch.Tensor]:
        """The prompt's KV cache (batch 1) and the logits of the first response token."""
        ids = torch.tensor([request.prompt_ids], device=self.policy.device)
        positions = torch.arange(ids.shape[1], device=ids.device)[None]
        cache = DynamicCache()
        rows.index = torch.tensor([adapter], device=ids.device)
        logits = self.policy.next_token_logits(ids, torch.ones_like(ids), positions, cache).float()
        return _layers(cache), logits[0]

    def _admit(self, slots: list[_Slot], requests: list[GenerationRequest], prompts: list[tuple[Layers, torch.Tensor]],
               adapter_index: dict[str, int]) -> _Batch:
        """A batch of new rows, each starting from its prompt's cache and first-token logits."""
        device = self.policy.device
        reqs = [requests[s.request] for s in slots]
        length = max(len(r.prompt_ids) for r in reqs)
        width = max(r.max_new_tokens for r in reqs)
        mask = torch.zeros(len(slots), length, dtype=torch.long, device=device)
        for b, r in enumerate(reqs):
            mask[b, length - len(r.prompt_ids):] = 1
        cache = DynamicCache(ddp_cache_data=[
            (torch.cat([_left_pad(prompts[s.request][0][i][0], length, 2) for s in slots]),
             torch.cat([_left_pad(prompts[s.request][0][i][1], length, 2) for s in slots]))
            for i in range(len(prompts[0][0]))
        ])
        uniforms = torch.stack([
            _right_pad(torch.from_numpy(attempt_uniforms(r.seed, r.attempt_indices[s.attempt], r.max_new_tokens))[None],
                       width)[0]
            for s, r in zip(slots, reqs)
        ]).to(device)
        n = len(slots)
        return _Batch(
            slots=slots, cache=cache, mask=mask,
            next_pos=torch.tensor([len(r.prompt_ids) for r in reqs], device=device),
            logits=torch.stack([prompts[s.request][1] for s in slots]),
            uniforms=uniforms,
            tokens=torch.zeros(n, width + 1, dtype=torch.long, device=device),
            logprobs=torch.zeros(n, width + 1, device=device),
            length=torch.zeros(n, dtype=torch.long, device=device),
            limit=torch.tensor([r.max_new_tokens for r in reqs], device=device),
            temperature=torch.tensor([r.temperature for r in reqs], device=device, dtype=torch.float32),
            adapter=torch.tensor([adapter_index.get(r.adapter, 0) for r in reqs], device=device),
            done=torch.zeros(n, dtype=torch.bool, device=device),
            stopped=torch.zeros(n, dtype=torch.bool, device=device),
        )

    def _completion(self, batch: _Batch, row: int) -> Completion:
        n = int(batch.length[row])
        token_ids = batch.tokens[row, :n].tolist()
        text = self.policy.tokenizer.decode(token_ids, skip_special_tokens=True)
        return Completion(token_ids=token_ids, logprobs=batch.logprobs[row, :n].tolist(),
                          truncated=not bool(batch.stopped[row]), text=text)


def _sample(logits: torch.Tensor, temperatures: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-CDF sampling with given uniforms; greedy where the temperature is 0. Returns (tokens, log-probs)."""
    greedy = temperatures <= 0
    log_probs = F.log_softmax(logits / torch.where(greedy, 1.0, temperatures)[:, None], dim=-1)  # (B, V)
    cdf = log_probs.exp().cumsum(-1)
    target = (u * cdf[:, -1])[:, None]
    sampled = torch.searchsorted(cdf, target, right=True)[:, 0].clamp(max=logits.shape[-1] - 1)
    tokens = torch.where(greedy, logits.argmax(-1), sampled)
    return tokens, log_probs.gather(-1, tokens[:, None])[:, 0]
