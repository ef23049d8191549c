"""Random-weight models for tests and benchmarks: the tiny test model and models shaped like real ones.

Shapes follow the published configs (SmolLM2-135M, Qwen3-0.6B, Qwen3-8B); weights are random, so they measure
speed, never quality. The tokenizer is a character-level one with a ChatML template: enough for the loop's
prompts, and it needs no download.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<pad>", "<|im_start|>", "<|im_end|>", "<unk>"]
CHARS = [chr(c) for c in range(32, 127)] + ["\n"]

SHAPES = {
    # name: (config class name, fields)
    "smollm2-135m": ("LlamaConfig", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                                         tie_word_embeddings=True, max_position_embeddings=8192)),
    "qwen3-0.6b": ("Qwen3Config", dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                                       tie_word_embeddings=True, max_position_embeddings=40960)),
    "qwen3-8b": ("Qwen3Config", dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                                     tie_word_embeddings=False, max_position_embeddings=40960)),
}


def char_tokenizer():
    """A character-level fast tokenizer with ChatML specials (ids 0-3) and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<|im_end|>", bos_token="<|im_start|>",
        unk_token="<unk>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _ids(tokenizer) -> dict:
    return dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.bos_token_id)


def shaped_model(shape: str, *, device: str = "cpu", dtype=None, seed: int = 0):
    """(model, tokenizer): random weights in the shape of `shape` (a key of SHAPES), built on `device`."""
    import torch
    import transformers

    class_name, fields = SHAPES[shape]
    tokenizer = char_tokenizer()
    config = getattr(transformers, class_name)(**fields, **_ids(tokenizer))
    torch.manual_seed(seed)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32)
    return model.eval(), tokenizer


def make_tiny_model_dir(path: Path, *, hidden_size: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """Write a tiny random Llama + the char tokenizer into `path` (once), loadable by path like any model."""
    if (path / "config.json").is_file():
        return path
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = char_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True, **_ids(tokenizer),
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
