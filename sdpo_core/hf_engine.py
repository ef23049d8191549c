"""The transformers + peft generation engine: runs everywhere (CPU tests and demo, GPU).

A decode loop of our own rather than `generate`, for three reasons:
- attempts of different adapters share a batch (LoraPolicy.rows_lora: one adapter per row, batched matmuls);
- a finished attempt leaves the batch and a waiting one takes its row, so no row decodes padding while the
  longest attempt runs on (plain `generate` at batch 32 spent ~70% of its slots on padding here);
- sampling is inverse-CDF with per-attempt uniform streams (engine.attempt_uniforms), reproducible whatever the
  batch holds.
The KV cache is static (SlotCache): buffers allocated once per call, one row per decode slot, each row writing at
its own column, so a row changing hands copies one prompt into that row and touches nothing else, and every
decode step has the same shapes (what `torch.compile` and CUDA graphs need; `compile=True`). Each distinct prompt
is prefilled once. Sampled tokens stay on the device; the host looks at them every `sync_every` tokens (1 on CPU,
where a look is free; more on GPU, where each look stalls the stream), and a row that stopped meanwhile wastes at
most sync_every - 1 steps.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from sdpo_core.engine import Completion, GenerationRequest, attempt_uniforms
from sdpo_core.policy import LoraPolicy, RowAdapters, cache_layers

Layers = list[tuple[torch.Tensor, torch.Tensor]]  # (keys, values) per layer, each (B, heads, L, head_dim)
VIEW_BUCKET = 32  # attention reads the cache up to the longest row, rounded up to this (few distinct shapes)


@dataclass
class _Slot:
    """One attempt: which request, which of its attempts."""

    request: int
    attempt: int


class SlotCache:
    """A static KV cache for decode rows that come and go: per layer a (rows, heads, capacity, dim) buffer.

    Row b holds its prompt in columns [0, P) and the token fed to it next goes to column write_index[b]. The model's
    attention layers call `update` (one new token per row) and attend over the first `view` columns; the mask
    hides each row's columns past its own write index."""

    def __init__(self, like: Layers, rows: int, capacity: int, static: bool = False) -> None:
        self.keys = [k.new_zeros(rows, k.shape[1], capacity, k.shape[3]) for k, _ in like]
        self.values = [v.new_zeros(rows, v.shape[1], capacity, v.shape[3]) for _, v in like]
        self.write_index = torch.zeros(rows, dtype=torch.long, device=like[0][0].device)
        self.capacity = capacity
        self.view = capacity
        self._rows = torch.arange(rows, device=like[0][0].device)
        self.static = static
        self._mark_static()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Store one token per row at its write index; return the cache as attention should read it."""
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys[self._rows, :, self.write_index] = key_states[:, :, -1]
        values[self._rows, :, self.write_index] = value_states[:, :, -1]
        return keys[:, :, : self.view], values[:, :, : self.view]

    def _mark_static(self) -> None:
        """For torch.compile: the buffers keep their addresses (written in place, so CUDA graphs may capture them)."""
        for buffer in self.keys + self.values if self.static else []:
            torch._dynamo.mark_static_address(buffer)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.view

    def load_prompt(self, rows: torch.Tensor, prompt: Layers) -> None:
        """`rows` start from one prompt's cache (batch 1, P columns): columns [0, P), next write at P."""
        length = prompt[0][0].shape[2]
        for keys, values, (prompt_keys, prompt_values) in zip(self.keys, self.values, prompt, strict=True):
            keys[rows, :, :length] = prompt_keys
            values[rows, :, :length] = prompt_values
        self.write_index[rows] = length

    def advance(self) -> None:
        """Every row moves to its next column (rows past their end write into the last one, never read)."""
        self.write_index.add_(1).clamp_(max=self.capacity - 1)

    def attention_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """(rows, 1, 1, view) additive mask: row b sees columns 0..write_index[b]."""
        columns = torch.arange(self.view, device=self.write_index.device)
        visible = columns[None, :] <= self.write_index[:, None]
        return torch.where(visible, 0.0, torch.finfo(dtype).min).to(dtype)[:, None, None, :]

    def bytes_read(self) -> int:
        """KV bytes one decode step reads: every row's first `view` columns of every layer."""
        per_column = sum(k.shape[0] * k.shape[1] * k.shape[3] * k.element_size() for k in self.keys)
        return 2 * per_column * self.view

    def keep(self, rows: torch.Tensor) -> SlotCache:
        """A smaller cache holding only `rows` (renumbered 0..len(rows)-1)."""
        kept = SlotCache.__new__(SlotCache)
        kept.keys = [k.index_select(0, rows) for k in self.keys]
        kept.values = [v.index_select(0, rows) for v in self.values]
        kept.write_index = self.write_index.index_select(0, rows)
        kept.capacity, kept.view, kept.static = self.capacity, self.view, self.static
        kept._rows = torch.arange(len(rows), device=rows.device)
        kept._mark_static()
        return kept


@dataclass
class _Rows:
    """Decode state of a fixed number of rows: row b of every tensor belongs to slots[b] (None: a free row)."""

    slots: list[_Slot | None]
    cache: SlotCache
    logits: torch.Tensor  # (B, V) logits of the token each row samples next
    uniforms: torch.Tensor  # (B, W) the rows' random draws, one per token
    tokens: torch.Tensor  # (B, W + 1) sampled tokens; the extra column absorbs writes of finished rows
    logprobs: torch.Tensor  # (B, W + 1)
    length: torch.Tensor  # (B,) tokens sampled so far
    limit: torch.Tensor  # (B,) max_new_tokens
    temperature: torch.Tensor  # (B,)
    adapter: torch.Tensor  # (B,) index into the rows_lora names (0 = base)
    done: torch.Tensor  # (B,) bool (free rows count as done)
    stopped: torch.Tensor  # (B,) bool: done by a stop token (not by the length limit)
    longest: int = 0  # host-side bound on the rows' write index (no device sync needed to size the view)

    _ROW_TENSORS = ("logits", "uniforms", "tokens", "logprobs", "length", "limit", "temperature", "adapter", "done",
                    "stopped")

    @classmethod
    def empty(cls, rows: int, like: Layers, capacity: int, width: int, vocab: int, static: bool) -> _Rows:
        device = like[0][0].device
        return cls(
            slots=[None] * rows, cache=SlotCache(like, rows, capacity, static),
            logits=torch.zeros(rows, vocab, device=device),
            uniforms=torch.zeros(rows, width, device=device),
            tokens=torch.zeros(rows, width + 1, dtype=torch.long, device=device),
            logprobs=torch.zeros(rows, width + 1, device=device),
            length=torch.zeros(rows, dtype=torch.long, device=device),
            limit=torch.zeros(rows, dtype=torch.long, device=device),
            temperature=torch.ones(rows, device=device),
            adapter=torch.zeros(rows, dtype=torch.long, device=device),
            done=torch.ones(rows, dtype=torch.bool, device=device),
            stopped=torch.zeros(rows, dtype=torch.bool, device=device),
        )

    def keep(self, rows: list[int]) -> _Rows:
        """Only `rows`, renumbered: the tail of a call, when half the rows are free and nothing waits."""
        index = torch.tensor(rows, dtype=torch.long, device=self.logits.device)
        kept = {name: getattr(self, name).index_select(0, index) for name in self._ROW_TENSORS}
        return _Rows(slots=[self.slots[b] for b in rows], cache=self.cache.keep(index), longest=self.longest, **kept)


class TransformersEngine:
    """Batched multi-adapter sampling on a LoraPolicy; the policy's adapters are used live (no copies).

    `compile=True` runs the decode forward through `torch.compile` (CUDA graphs on a GPU): it pays where a decode
    step is launch-bound (small models, GPU), after a compilation per batch and view shape."""

    def __init__(self, policy: LoraPolicy, max_batch_size: int = 32, stop_token_ids: set[int] | None = None,
                 sync_every: int | None = None, compile: bool = False) -> None:
        self.policy = policy
        self.max_batch_size = max_batch_size
        self.stop_token_ids = stop_token_ids if stop_token_ids is not None else policy.stop_token_ids
        self.sync_every = sync_every or (8 if policy.device.type == "cuda" else 1)
        self.decode_steps = 0  # counters for benchmarks: batched decode forwards, and KV-cache bytes they read
        self.cache_bytes_read = 0
        self.compile = compile
        self._decode = policy.next_token_logits
        if compile:
            mode = "reduce-overhead" if policy.device.type == "cuda" else None
            self._decode = torch.compile(policy.next_token_logits, mode=mode)

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
        stop = torch.tensor(sorted(self.stop_token_ids), device=self.policy.device)
        prompts = [self._prefill(r, rows, adapter_index.get(r.adapter, 0)) for r in requests]
        queue = deque(_Slot(i, j) for i, r in enumerate(requests) for j in range(r.n))
        results: list[list[Completion | None]] = [[None] * r.n for r in requests]
        if not queue:
            return [[] for _ in requests]
        width = max(r.max_new_tokens for r in requests)
        capacity = max(len(r.prompt_ids) for r in requests) + width + self.sync_every
        batch = _Rows.empty(min(self.max_batch_size, len(queue)), prompts[0][0], capacity, width,
                            prompts[0][1].shape[-1], static=self.compile)
        while True:
            # ---- a request asked to stop (cancelled job, step past its wall clock) leaves the batch now ----
            if any(r.should_stop is not None and not r.stopped and r.should_stop() for r in requests):
                queue = self._stop(batch, queue, requests, results)

            # ---- waiting attempts take the free rows (their KV cache is their prompt's) ----
            free = [b for b, slot in enumerate(batch.slots) if slot is None]
            if queue and free:
                self._admit(batch, free[: len(queue)], [queue.popleft() for _ in free[: len(queue)]], requests,
                            prompts, adapter_index)
            busy = [b for b, slot in enumerate(batch.slots) if slot is not None]
            if not busy:
                break
            if not queue and len(busy) <= len(batch.slots) // 2:
                batch = batch.keep(busy)  # the tail: stop computing rows nobody will take

            # ---- decode sync_every tokens without looking at them on the host ----
            for i in range(self.sync_every):
                tokens = self._sample(batch, stop)
                if i < self.sync_every - 1:
                    self._forward(batch, tokens, rows)

            # ---- finished attempts leave their rows; the others decode on ----
            done, write_index = torch.stack([batch.done.long(), batch.cache.write_index]).tolist()  # one sync
            for b, slot in enumerate(batch.slots):
                if slot is not None and done[b]:
                    results[slot.request][slot.attempt] = self._completion(batch, b)
                    batch.slots[b] = None
            batch.longest = max((write_index[b] for b, slot in enumerate(batch.slots) if slot is not None), default=0)
            if any(slot is not None for slot in batch.slots):
                self._forward(batch, tokens, rows)
        return [[c for c in per_request if c is not None] for per_request in results]

    def _stop(self, batch: _Rows, queue: deque[_Slot], requests: list[GenerationRequest],
              results: list[list[Completion | None]]) -> deque[_Slot]:
        """Stop the requests whose `should_stop` says so: their rows end here (truncated), their waiting attempts
        never start. Returns the queue without them."""
        for request in requests:
            if request.should_stop is not None and not request.stopped and request.should_stop():
                request.stopped = True
        for b, slot in enumerate(batch.slots):
            if slot is not None and requests[slot.request].stopped:
                results[slot.request][slot.attempt] = self._completion(batch, b)
                batch.slots[b] = None
                batch.done[b] = True
        return deque(slot for slot in queue if not requests[slot.request].stopped)

    def _sample(self, batch: _Rows, stop: torch.Tensor) -> torch.Tensor:
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

    def _forward(self, batch: _Rows, tokens: torch.Tensor, rows: RowAdapters) -> None:
        """Feed `tokens` (B,) to the model: writes them into the cache, refreshes the logits."""
        cache = batch.cache
        cache.view = min(cache.capacity, -(-(batch.longest + 1) // VIEW_BUCKET) * VIEW_BUCKET)
        self.decode_steps += 1
        self.cache_bytes_read += cache.bytes_read()
        rows.index = batch.adapter
        positions = cache.write_index[:, None].clone()  # a copy: the cache advances it in place below
        batch.logits = self._decode(tokens[:, None], cache.attention_mask(cache.keys[0].dtype), positions,
                                    cache).float()
        cache.advance()
        batch.longest = min(batch.longest + 1, cache.capacity - 1)

    def _prefill(self, request: GenerationRequest, rows: RowAdapters, adapter: int) -> tuple[Layers, torch.Tensor]:
        """The prompt's KV cache (batch 1) and the logits of the first response token."""
        ids = torch.tensor([request.prompt_ids], device=self.policy.device)
        positions = torch.arange(ids.shape[1], device=ids.device)[None]
        cache = DynamicCache()
        rows.index = torch.tensor([adapter], device=ids.device)
        logits = self.policy.next_token_logits(ids, torch.ones_like(ids), positions, cache).float()
        return cache_layers(cache), logits[0]

    def _admit(self, batch: _Rows, free: list[int], slots: list[_Slot], requests: list[GenerationRequest],
               prompts: list[tuple[Layers, torch.Tensor]], adapter_index: dict[str, int]) -> None:
        """New attempts take the `free` rows, each starting from its prompt's cache and first-token logits."""
        device = batch.logits.device
        by_request: dict[int, list[int]] = {}
        for row, slot in zip(free, slots, strict=True):
            batch.slots[row] = slot
            by_request.setdefault(slot.request, []).append(row)
        for request, request_rows in by_request.items():
            batch.cache.load_prompt(torch.tensor(request_rows, device=device), prompts[request][0])
            batch.longest = max(batch.longest, len(requests[request].prompt_ids))
        reqs = [requests[s.request] for s in slots]
        index = torch.tensor(free, device=device)
        width = batch.uniforms.shape[1]
        batch.uniforms[index] = torch.stack([
            F.pad(torch.from_numpy(attempt_uniforms(r.seed, r.attempt_indices[s.attempt], r.max_new_tokens)),
                  (0, width - r.max_new_tokens))
            for s, r in zip(slots, reqs)
        ]).to(device)
        batch.logits[index] = torch.stack([prompts[s.request][1] for s in slots])
        batch.tokens[index] = 0
        batch.logprobs[index] = 0
        batch.length[index] = 0
        batch.limit[index] = torch.tensor([r.max_new_tokens for r in reqs], device=device)
        batch.temperature[index] = torch.tensor([r.temperature for r in reqs], device=device, dtype=torch.float32)
        batch.adapter[index] = torch.tensor([adapter_index.get(r.adapter, 0) for r in reqs], device=device)
        batch.done[index] = False
        batch.stopped[index] = False

    def _completion(self, batch: _Rows, row: int) -> Completion:
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
