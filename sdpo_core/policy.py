"""One base model shared by many per-problem LoRA adapters.

Each run owns a student adapter (trained) and, with the EMA teacher, a teacher adapter (a slow copy). The base
weights are loaded once and never change, so a worker holds one model for every problem it serves; generation
batches attempts of different adapters together (`rows_lora`), and the update scores a step's attempts with their
shared prompt computed once (`response_hidden`).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import DynamicCache

from sdpo_core.settings import SDPOSettings

_PREFIX = "sdpo_"  # peft adapters are ModuleDict keys: a bare name like "half" would clash with nn.Module


def _key(name: str) -> str:
    """peft's name for our adapter `name` (dots are not allowed in module names)."""
    return _PREFIX + name.replace(".", "_")


class RowAdapters:
    """Which adapter each row of the next forward uses (0 = base model, i = names[i - 1])."""

    index: torch.Tensor | None = None


@torch.no_grad()
def _concat_adapters(module: LoraLayer, keys: list[str]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | tuple[None, None, None]:
    """All adapters of one layer side by side, in the base layer's dtype:
    A (sum r, in), B (out, sum r) with each adapter's scaling folded in, and a block mask (n + 1, sum r) of bools
    whose row i keeps adapter i's columns (row 0, the base model, keeps none). An adapter that does not wrap this
    layer (its job chose other target modules), or whose weights here are not finite in this dtype (a diverged
    job; its own update check fails it), has no columns: its rows get the base layer alone, and no inf or NaN
    enters the shared matmuls. (None, None, None) when no adapter has columns in this layer."""
    dtype = module.base_layer.weight.dtype
    present = []
    for i, key in enumerate(keys, start=1):
        if key in module.lora_A:
            a = module.lora_A[key].weight.to(dtype)
            b = (module.lora_B[key].weight * module.scaling[key]).to(dtype)
            if torch.isfinite(a).all() and torch.isfinite(b).all():
                present.append((i, a, b))
    if not present:
        return None, None, None
    a_cat = torch.cat([a for _, a, _ in present])
    b_cat = torch.cat([b for _, _, b in present], dim=1)
    mask = torch.zeros(len(keys) + 1, a_cat.shape[0], dtype=torch.bool, device=a_cat.device)
    start = 0
    for i, a, _ in present:
        mask[i, start: start + a.shape[0]] = True
        start += a.shape[0]
    return a_cat, b_cat, mask


def _row_lora_forward(base_layer: torch.nn.Module, rows: RowAdapters, a_cat: torch.Tensor | None,
                      b_cat: torch.Tensor | None, mask: torch.Tensor | None):
    """A LoRA layer's forward for generation: base(x) + select(mask[row's adapter], x A_cat^T, 0) B_cat^T.

    Two dense matmuls over every adapter's columns: reading them costs sum(r) * (in + out) weights, a few percent of
    the base layer's in * out, and there is no per-row gather of adapter weights. Each row keeps only its own
    adapter's columns by selection, never by multiplying with a 0/1 mask: one job's huge activations (inf) times 0
    would be NaN in every other job's row of the batch. It replaces peft's forward (and its per-call bookkeeping,
    which costs more than the matmuls at decode time) for the duration of `rows_lora`."""

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = base_layer(x, *args, **kwargs)
        if a_cat is None or rows.index is None:
            return out
        low_rank = x.to(a_cat.dtype) @ a_cat.T  # (B, T, sum r)
        low_rank = torch.where(mask[rows.index][:, None, :], low_rank, 0.0)
        return out + (low_rank @ b_cat.T).to(out.dtype)  # (B, T, out)

    return forward


def _common_prefix_length(sequences: list[list[int]]) -> int:
    first = sequences[0]
    length = min(len(seq) for seq in sequences)
    for other in sequences[1:]:
        length = next((i for i in range(length) if other[i] != first[i]), length)
    return length


def cache_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer across transformers versions."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))


class LoraPolicy:
    """The base causal LM plus named LoRA adapters, with the few operations SDPO needs."""

    def __init__(self, model: torch.nn.Module, tokenizer) -> None:
        self.base = model  # the transformers CausalLM; LoRA layers are injected into it in place
        self.tokenizer = tokenizer
        self.peft: PeftModel | None = None
        self._lora_layers: list[LoraLayer] = []  # the layers peft wrapped, found once per adapter change
        self._params: dict[str, dict[str, torch.nn.Parameter]] = {}  # per adapter, found once
        self._frozen: set[str] = set()  # adapters that never train (EMA teachers)
        self.base.requires_grad_(False)
        # transformers 5 renamed the forward's `past_key_values` to `cache`; use whichever this version has.
        params = inspect.signature(type(self.base).forward).parameters
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"

    # ---- adapters ---------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.base.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The frozen base weights' dtype (the adapters train in float32 whatever it is)."""
        return next(self.base.parameters()).dtype

    @property
    def context_length(self) -> int | None:
        """The longest sequence (prompt + attempt) the model was made for, if its config says."""
        return getattr(self.base.config, "max_position_embeddings", None)

    @property
    def adapters(self) -> list[str]:
        return [key.removeprefix(_PREFIX) for key in self.peft.peft_config] if self.peft is not None else []

    def create_adapter(self, name: str, settings: SDPOSettings, seed: int, trainable: bool = True) -> None:
        """A fresh adapter: A random (seeded), B zero, so it starts exactly at the base model."""
        config = LoraConfig(
            r=settings.lora_rank, lora_alpha=settings.lora_alpha, target_modules=list(settings.target_modules),
            lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
        )
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            if self.peft is None:
                self.peft = get_peft_model(self.base, config, adapter_name=_key(name))
            else:
                self.peft.add_adapter(_key(name), config)
        self._keep_active_adapter_valid()
        self.peft.eval()  # no dropout anywhere; eval mode is also what mixed-adapter batches require
        self._lora_layers = [m for m in self.peft.modules() if isinstance(m, LoraLayer) and hasattr(m, "base_layer")]
        if not trainable:
            self._frozen.add(name)
        self._set_requires_grad()

    def delete_adapter(self, name: str) -> None:
        if self.peft is not None and _key(name) in self.peft.peft_config:
            self.peft.delete_adapter(_key(name))
            self._params.pop(name, None)
            self._frozen.discard(name)
            self._keep_active_adapter_valid()
            self._set_requires_grad()

    def _set_requires_grad(self) -> None:
        """Every adapter's tensors require grad unless it is frozen, for good (peft's adapter switches toggle the
        flags; ours do not): a pass builds a graph only through the adapter it runs."""
        for name in self.adapters:
            for param in self.parameters(name).values():
                param.requires_grad_(name not in self._frozen)

    def _keep_active_adapter_valid(self) -> None:
        """peft keeps pointing its active adapter at a deleted one, and its forward then fails: repoint it."""
        if self.peft.peft_config and self.peft.active_adapter not in self.peft.peft_config:
            self.peft.set_adapter(next(iter(self.peft.peft_config)))

    def parameters(self, name: str) -> dict[str, torch.nn.Parameter]:
        """The adapter's LoRA tensors keyed by module path (the adapter's name left out)."""
        assert self.peft is not None and _key(name) in self.peft.peft_config, f"no adapter named {name!r}"
        if name not in self._params:
            suffix = f".{_key(name)}.weight"
            self._params[name] = {key.removesuffix(suffix): p for key, p in self.peft.named_parameters()
                                  if key.endswith(suffix)}
        return dict(self._params[name])

    def lora_settings(self, name: str) -> SDPOSettings:
        """The LoRA shape the adapter was created with (rank, alpha, target modules), as SDPOSettings fields."""
        config = self.peft.peft_config[_key(name)]
        return SDPOSettings(lora_rank=config.r, lora_alpha=config.lora_alpha,
                            target_modules=sorted(config.target_modules))

    def state(self, name: str) -> dict[str, torch.Tensor]:
        """A detached CPU copy of the adapter's tensors, for checkpoints."""
        return {key: param.detach().to("cpu", copy=True) for key, param in self.parameters(name).items()}

    @torch.no_grad()
    def load_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        params = self.parameters(name)
        assert params.keys() == state.keys(), f"adapter {name!r}: checkpoint tensors do not match the adapter"
        for key, param in params.items():
            param.copy_(state[key])

    @torch.no_grad()
    def largest_update_norm(self, name: str) -> float:
        """The largest bound ||A||_F ||B||_F * scaling over the adapter's layers (>= the spectral norm of each
        layer's weight update); inf or NaN when a weight is not finite."""
        key, largest = _key(name), 0.0
        for layer in self._lora_layers:
            if key in layer.lora_A:
                bound = (layer.lora_A[key].weight.float().norm() * layer.lora_B[key].weight.float().norm()
                         * layer.scaling[key]).item()
                if bound != bound or bound == float("inf"):
                    return bound
                largest = max(largest, bound)
        return largest

    @torch.no_grad()
    def copy_adapter(self, source: str, target: str) -> None:
        self.load_state(target, {k: v.detach() for k, v in self.parameters(source).items()})

    # ---- forward passes ---------------------------------------------------------------------------------------
    @contextmanager
    def _active(self, adapter: str | None) -> Iterator[None]:
        """Run the model with one adapter active, or with none (the base model).

        Only the LoRA layers' list of active adapters is switched. peft's own switches (`set_adapter`,
        `disable_adapter`) walk every module of the model and toggle every adapter's `requires_grad` on each call:
        a cost that grows with the jobs on a worker and was most of an update's time with 16 runs (py-spy).
        Gradients need no toggling: each adapter's tensors keep `requires_grad` from creation, and a pass builds a
        graph only through the adapter it runs."""
        assert adapter is None or (self.peft is not None and _key(adapter) in self.peft.peft_config), \
            f"no adapter named {adapter!r}"
        active = [] if adapter is None else [_key(adapter)]
        for layer in self._lora_layers:
            layer._active_adapter = active  # what peft's LoraLayer.set_adapter sets, without its requires_grad loop
        yield

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, adapter: str | None) -> torch.Tensor:
        """Final (normed) hidden states (B, T, H) of left-padded rows with `adapter` active; grads flow if enabled.
        The plain forward: the reference the engine's and the update's faster paths are tested against."""
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # left padding
        with self._active(adapter):
            out = self.base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        return out.last_hidden_state

    def response_hidden(self, sequences: list[list[int]], response_lengths: list[int], adapter: str | None
                        ) -> torch.Tensor:
        """Hidden states (sum R, H) that predict the last R_b tokens of each sequence b; grads flow if enabled.

        The sequences' common prefix (the student's prompt is the same for every attempt of a step, the teacher's
        reprompts share the chat template and the problem) runs once, batch 1, and every row continues from its
        KV cache: an update then costs tokens of the prefix once plus each row's own tokens, not rows x prompt."""
        device = self.device
        shared = min(_common_prefix_length(sequences), min(len(seq) for seq in sequences) - 1)
        with self._active(adapter):
            decoder = self.base.get_decoder()
            cache = DynamicCache()
            if shared > 0:
                prefix = torch.tensor([sequences[0][:shared]], device=device)
                prefix_hidden = decoder(input_ids=prefix, position_ids=torch.arange(shared, device=device)[None],
                                        use_cache=True, **{self.cache_kwarg: cache}).last_hidden_state[0]
                cache = DynamicCache(ddp_cache_data=[
                    (k.expand(len(sequences), -1, -1, -1), v.expand(len(sequences), -1, -1, -1))
                    for k, v in cache_layers(cache)
                ])
            suffixes = [seq[shared:] for seq in sequences]
            width = max(len(s) for s in suffixes)
            ids = torch.full((len(suffixes), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
            mask = torch.zeros((len(suffixes), shared + width), dtype=torch.long)
            mask[:, :shared] = 1
            for row, suffix in enumerate(suffixes):  # right padding: every row's own tokens start at `shared`
                ids[row, : len(suffix)] = torch.tensor(suffix)
                mask[row, shared: shared + len(suffix)] = 1
            positions = torch.arange(shared, shared + width, device=device)[None].expand(len(suffixes), -1)
            suffix_hidden = decoder(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions,
                                    use_cache=shared > 0, **{self.cache_kwarg: cache if shared > 0 else None}
                                    ).last_hidden_state
        picked = []
        for row, (seq, n) in enumerate(zip(sequences, response_lengths, strict=True)):
            start, end = len(seq) - n - 1 - shared, len(seq) - 1 - shared  # in suffix coordinates
            if start < 0:  # the token before the response is the prefix's last one
                picked.append(prefix_hidden[shared + start:])
            picked.append(suffix_hidden[row, max(start, 0): end])
        return torch.cat(picked)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states -> vocabulary logits (the frozen output embedding)."""
        return self.base.get_output_embeddings()(hidden)

    def next_token_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, cache
    ) -> torch.Tensor:
        """Logits (B, V) of the next token, inside `rows_lora`: each row with its own adapter (or none)."""
        kwargs = {self.cache_kwarg: cache, "use_cache": True, "logits_to_keep": 1}
        out = self.base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        return out.logits[:, -1, :]

    @contextmanager
    def rows_lora(self, names: list[str]) -> Iterator[RowAdapters]:
        """Batched multi-LoRA for generation: row b of a forward uses adapter `names[index[b] - 1]` (0 = base).

        Each LoRA layer's forward is replaced by one adding the rows' low-rank updates from all adapters concatenated
        once here (in the base weights' dtype): two dense matmuls per layer whatever the number of adapters (peft's
        `adapter_names` loops over adapters instead). The base weights run once for all rows.
        """
        rows = RowAdapters()
        patched = []
        if self.peft is not None:
            for module in self._lora_layers:
                stacks = _concat_adapters(module, [_key(n) for n in names]) if names else (None, None, None)
                module.forward = _row_lora_forward(module.base_layer, rows, *stacks)  # instance attribute
                patched.append(module)
        try:
            yield rows
        finally:
            for module in patched:
                del module.forward  # back to peft's own forward

    # ---- prompts ----------------------------------------------------------------------------------------------
    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a conversation with the chat template and the assistant's generation prompt."""
        if getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            return list(ids)
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]

    @property
    def stop_token_ids(self) -> set[int]:
        """Tokens that end an attempt: the tokenizer's EOS plus the model's generation-config EOS ids."""
        ids = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        config_eos = getattr(getattr(self.base, "generation_config", None), "eos_token_id", None)
        if isinstance(config_eos, int):
            ids.add(config_eos)
        elif config_eos:
            ids.update(config_eos)
        return ids
