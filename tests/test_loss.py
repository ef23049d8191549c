"""The SDPO loss against a float64 reference written independently here, and its gradient identity."""

import math

import numpy as np
import pytest
import torch

from sdpo_core.loss import chunked_loss, contrastive_target, token_losses

V, N = 37, 9


def reference_token_loss(s_logits, t_logits, token, old_lp, alpha, top_k, add_tail, is_clip):
    """One token's weighted loss from the definitions, in numpy float64 with plain loops."""
    s = np.exp(s_logits - s_logits.max())
    s /= s.sum()
    t = np.exp(t_logits - t_logits.max())
    t /= t.sum()
    if top_k is not None:
        order = sorted(range(len(s)), key=lambda i: -s[i])[:top_k]
        ps, pt = [s[i] for i in order], [t[i] for i in order]
        if add_tail:
            ps.append(1.0 - sum(ps))
            pt.append(1.0 - sum(pt))
        else:
            ps = [p / sum(ps) for p in ps]
            pt = [p / sum(pt) for p in pt]
    else:
        ps, pt = list(s), list(t)

    def kl(p, q):
        return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)

    if alpha == 0.0:
        loss = kl(pt, ps)
    elif alpha == 1.0:
        loss = kl(ps, pt)
    else:
        m = [(1 - alpha) * a + alpha * b for a, b in zip(ps, pt)]
        loss = (1 - alpha) * kl(ps, m) + alpha * kl(pt, m)
    if is_clip is not None:
        loss *= min(s[token] / math.exp(old_lp), is_clip)
    return loss


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(N, V, generator=g, dtype=torch.float64) * 2
    t = s + torch.randn(N, V, generator=g, dtype=torch.float64)
    tokens = torch.randint(0, V, (N,), generator=g)
    old = torch.log_softmax(s + 0.3 * torch.randn(N, V, generator=g, dtype=torch.float64), -1).gather(
        -1, tokens[:, None])[:, 0]
    return s, t, tokens, old


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("top_k,add_tail", [(None, False), (5, True), (5, False), (1, True)])
@pytest.mark.parametrize("is_clip", [None, 2.0, 1.05])
def test_token_loss_matches_float64_reference(batch, alpha, top_k, add_tail, is_clip):
    s, t, tokens, old = batch
    got, _ = token_losses(s.float(), t.float(), tokens, old.float(), alpha=alpha, top_k=top_k, add_tail=add_tail,
                          is_clip=is_clip)
    want = [reference_token_loss(s[i].numpy(), t[i].numpy(), int(tokens[i]), float(old[i]), alpha, top_k, add_tail,
                                 is_clip) for i in range(N)]
    np.testing.assert_allclose(got.double().numpy(), want, rtol=2e-4, atol=1e-6)


def test_identical_student_and_teacher_give_zero_loss(batch):
    s, _, tokens, _ = batch
    for alpha in (0.0, 0.5, 1.0):
        got, _ = token_losses(s.float(), s.float(), tokens, None, alpha=alpha, top_k=20, add_tail=True, is_clip=None)
        assert got.abs().max() < 1e-5


def test_importance_weight_is_clipped_and_detached(batch):
    s, t, tokens, _ = batch
    s = s.float().requires_grad_(True)
    very_unlikely_before = torch.full((N,), -30.0)  # pi / pi_old is huge -> clipped at is_clip
    clipped, _ = token_losses(s, t.float(), tokens, very_unlikely_before, alpha=1.0, top_k=None, add_tail=False,
                              is_clip=2.0)
    unweighted, _ = token_losses(s, t.float(), tokens, None, alpha=1.0, top_k=None, add_tail=False, is_clip=None)
    torch.testing.assert_close(clipped, 2.0 * unweighted)
    # detached weight: the gradient is the weight times the unweighted gradient
    g_clipped = torch.autograd.grad(clipped.sum(), s)[0]
    g_plain = torch.autograd.grad(unweighted.sum(), s)[0]
    torch.testing.assert_close(g_clipped, 2.0 * g_plain)


def test_reverse_kl_gradient_is_policy_gradient_with_logratio_advantage():
    """Paper Prop. 2.1: grad KL(pi||q) = -E_{y~pi}[grad log pi(y) * (log q(y) - log pi(y))]."""
    g = torch.Generator().manual_seed(1)
    theta = torch.randn(4, V, generator=g, dtype=torch.float64, requires_grad=True)  # logits are the parameters
    q_logits = torch.randn(4, V, generator=g, dtype=torch.float64)
    tokens = torch.zeros(4, dtype=torch.long)
    loss, _ = token_losses(theta, q_logits, tokens, None, alpha=1.0, top_k=None, add_tail=False, is_clip=None)
    grad_kl = torch.autograd.grad(loss.double().sum(), theta)[0]

    log_pi = torch.log_softmax(theta, -1)
    advantage = (torch.log_softmax(q_logits, -1) - log_pi).detach()  # per-token, per-logit advantage
    surrogate = -(log_pi.exp().detach() * advantage * log_pi).sum()  # sum_y pi(y) A(y) grad log pi(y)
    grad_pg = torch.autograd.grad(surrogate, theta)[0]
    torch.testing.assert_close(grad_kl, grad_pg, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_chunked_loss_and_gradient_match_unchunked(chunk):
    g = torch.Generator().manual_seed(2)
    weights = torch.randn(N, 8, generator=g, requires_grad=True)
    hidden = weights * 2.0  # a graph behind the hidden states, as the model's
    head_w = torch.randn(V, 8, generator=g)
    t_hidden = torch.randn(N, 8, generator=g)
    tokens = torch.randint(0, V, (N,), generator=g)
    old = torch.full((N,), -3.0)

    def head(h):
        return h @ head_w.T

    kwargs = dict(alpha=1.0, top_k=5, add_tail=True, is_clip=2.0)
    total = chunked_loss(hidden, lambda piece, _: head(t_hidden[piece]), head, tokens, old, chunk_tokens=chunk,
                         scale=0.5, **kwargs)  # pushes its gradient into `weights`
    direct, _ = token_losses(head(weights.detach() * 2.0), head(t_hidden), tokens, old, **kwargs)
    w = weights.detach().requires_grad_(True)
    direct, _ = token_losses(head(w * 2.0), head(t_hidden), tokens, old, **kwargs)
    grad_direct = torch.autograd.grad(0.5 * direct.sum(), w)[0]
    assert total == pytest.approx(0.5 * direct.sum().item(), rel=1e-5)
    torch.testing.assert_close(weights.grad, grad_direct)
    with torch.no_grad():  # a measurement: the same value, no gradient
        again = chunked_loss(weights * 2.0, lambda piece, _: head(t_hidden[piece]), head, tokens, old,
                             chunk_tokens=chunk, scale=0.5, **kwargs)
    assert again == pytest.approx(total, rel=1e-5)


def test_chunking_bounds_the_logits_and_computes_each_once():
    """Logits exist for one chunk at a time (freed after its backward), and no chunk's logits are recomputed."""
    vocab, tokens_n, h, chunk = 4096, 512, 16, 64
    weights = torch.randn(tokens_n, h, requires_grad=True)
    head_w = torch.randn(vocab, h)
    rows_seen, alive = [], []

    def head(x):
        rows_seen.append(x.shape[0])
        return x @ head_w.T

    def pack(t):
        alive.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        chunked_loss(weights * 1.0, lambda piece, s_logits: s_logits.roll(1, -1), head,
                     torch.zeros(tokens_n, dtype=torch.long), None, alpha=0.0, top_k=None, add_tail=False,
                     is_clip=None, chunk_tokens=chunk)
    assert rows_seen == [chunk] * (tokens_n // chunk)  # each chunk's logits built once: no recompute
    assert max(alive) <= chunk * vocab  # nothing larger than one chunk's logits is kept for a backward
    assert weights.grad is not None and weights.grad.abs().sum() > 0


def test_contrastive_target_cancels_what_feedback_and_control_share_and_keeps_what_the_feedback_adds():
    """log q* = log anchor + beta * clip(log q_fb - log q_ctrl): a style shift both reprompts cause cancels."""
    anchor = torch.log_softmax(torch.tensor([[2.0, 1.0, 0.0, -1.0]]), -1)
    style = torch.tensor([[0.0, 3.0, 0.0, 0.0]])  # any reprompt makes token 1 ("Sure, ...") likelier
    content = torch.tensor([[0.0, 0.0, 2.5, 0.0]])  # only the real feedback makes token 2 (the missing word) likelier
    feedback = torch.log_softmax(anchor + style + content, -1)
    control = torch.log_softmax(anchor + style, -1)
    target = torch.log_softmax(contrastive_target(anchor, feedback, control, strength=1.0, clip=5.0), -1)
    torch.testing.assert_close(target, torch.log_softmax(anchor + content, -1))
    assert target[0, 1] < feedback[0, 1]  # the style token is not pushed by the target
    stronger = torch.log_softmax(contrastive_target(anchor, feedback, control, strength=2.0, clip=5.0), -1)
    assert stronger[0, 2] > target[0, 2]
    clipped = contrastive_target(anchor, feedback, control, strength=4.0, clip=1.0) - anchor
    assert clipped.abs().max() <= 4.0 + 1e-6


def test_micro_batches_pack_rows_up_to_the_row_and_token_limits():
    from sdpo_core.settings import SDPOSettings
    from sdpo_core.update import DistillSample, micro_batches

    def sample(prompt: int, response: int) -> DistillSample:
        return DistillSample([1] * prompt, [1] * (prompt + 5), [2] * response, None)

    short = [sample(10, 20) for _ in range(10)]  # 35 tokens each
    assert [len(b) for b in micro_batches(short, SDPOSettings(micro_batch_size=4, micro_batch_tokens=10_000))] \
        == [4, 4, 2]
    assert [len(b) for b in micro_batches(short, SDPOSettings(micro_batch_size=16, micro_batch_tokens=140))] \
        == [4, 4, 2]
    mixed = [sample(10, 20), sample(10, 500), sample(10, 20)]  # one long attempt widens its batch
    assert [len(b) for b in micro_batches(mixed, SDPOSettings(micro_batch_tokens=600))] == [1, 1, 1]
    assert [len(b) for b in micro_batches(mixed, SDPOSettings(micro_batch_tokens=2000))] == [3]
