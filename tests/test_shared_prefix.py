"""The update's shared-prefix scoring: running the common prefix once gives the hidden states and gradients of
running every sequence in full."""

import pytest
import torch

from sdpo_core.settings import SDPOSettings


def padded_response_hidden(policy, sequences, lengths, adapter):
    """The plain way: every sequence in full, left-padded, then the positions that predict its last R tokens."""
    width = max(len(s) for s in sequences)
    ids = torch.zeros(len(sequences), width, dtype=torch.long)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq):] = torch.tensor(seq)
        mask[row, width - len(seq):] = 1
    hidden = policy.hidden_states(ids.to(policy.device), mask.to(policy.device), adapter)
    return torch.cat([hidden[row, width - n - 1: width - 1] for row, n in enumerate(lengths)])


PROMPT = list(range(5, 25))
CASES = {
    "same prompt, responses of different lengths": ([PROMPT + [40, 41, 42], PROMPT + [43], PROMPT + [44, 45]], [3, 1, 2]),
    "prompts that share only a start": ([PROMPT + [60, 61, 40, 41], PROMPT[:12] + [70, 40], PROMPT + [62, 50, 51, 52]],
                                        [2, 1, 3]),
    "nothing shared": ([[7, 8, 9, 40], [9, 8, 40, 41, 42]], [1, 3]),
    "one row is all prefix but its last token": ([PROMPT + [40], PROMPT + [40, 41, 42]], [1, 3]),
    "a single sequence": ([PROMPT + [40, 41]], [2]),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
@pytest.mark.parametrize("adapter", [None, "student"])
def test_shared_prefix_hidden_states_match_the_full_forward(tiny_policy, case, adapter):
    tiny_policy.create_adapter("student", SDPOSettings(lora_rank=4), seed=3)
    with torch.no_grad():  # a fresh adapter is the base model: make it differ
        for param in tiny_policy.parameters("student").values():
            param.add_(0.05 * torch.randn_like(param))
    sequences, lengths = CASES[case]
    shared = tiny_policy.response_hidden(sequences, lengths, adapter)
    full = padded_response_hidden(tiny_policy, sequences, lengths, adapter)
    assert shared.shape == (sum(lengths), full.shape[-1])
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-4)


def test_shared_prefix_gradients_match_the_full_forward(tiny_policy):
    """The prefix's KV cache is shared by every row: its gradient is the sum of the rows' (what LoRA must learn)."""
    tiny_policy.create_adapter("student", SDPOSettings(lora_rank=4), seed=3)
    sequences, lengths = CASES["prompts that share only a start"]
    params = tiny_policy.parameters("student")
    grads = []
    for score in (tiny_policy.response_hidden, lambda s, n, a: padded_response_hidden(tiny_policy, s, n, a)):
        hidden = score(sequences, lengths, "student")
        loss = tiny_policy.head(hidden).log_softmax(-1)[:, 3].sum()
        grads.append(torch.autograd.grad(loss, list(params.values())))
    assert any(g.abs().sum() > 0 for g in grads[0])
    for shared, full in zip(*grads, strict=True):
        torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-4)
