"""Sampled softmax (Jean et al. 2015): with the sample covering the vocabulary it is the full-softmax loss; the
logQ-corrected partition function is unbiased; a tiny model trains with it; exact softmax at evaluation."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.batching import collate
from core.model import LanguageModel, ModelConfig, SampledSoftmax, Seq2Seq
from core.scoring import perplexity
from core.training.train import TrainConfig, prepare_data, sequence_nll, train

torch.set_num_threads(1)
V, H, M = 50, 12, 40


@pytest.fixture()
def layer():
    torch.manual_seed(0)
    out = nn.Linear(H, V)
    states = torch.randn(M, H) * 2  # (M, H)
    targets = torch.randint(0, 20, (M,))  # (M,) some classes are never a target
    return out, states, targets


@pytest.mark.parametrize("proposal", [None, "unigram"])
def test_a_sample_covering_the_vocabulary_gives_the_full_softmax_loss(layer, proposal):
    out, states, targets = layer
    q = torch.linspace(1, 5, V) if proposal else None
    full = F.cross_entropy(out(states), targets, reduction="sum")
    sampled = SampledSoftmax(V, q, torch.Generator().manual_seed(0)).nll(states, out, targets)
    assert float(sampled.detach()) == pytest.approx(float(full.detach()), rel=1e-6)
    # the gradients are the full softmax's too
    g_full = torch.autograd.grad(full, out.weight)[0]
    g_sampled = torch.autograd.grad(SampledSoftmax(V, q).nll(states, out, targets), out.weight)[0]
    assert torch.allclose(g_full, g_sampled, atol=1e-5)


def test_candidates_hold_every_target_and_n_distinct_negatives(layer):
    _, _, targets = layer
    cand, log_pi = SampledSoftmax(10, generator=torch.Generator().manual_seed(1)).candidates(targets, V)
    n_t = targets.unique().numel()
    assert cand[:n_t].tolist() == targets.unique().tolist() and log_pi[:n_t].tolist() == [0.0] * n_t
    neg = cand[n_t:]
    assert neg.numel() == 10 and neg.unique().numel() == 10 and not set(neg.tolist()) & set(targets.tolist())
    assert log_pi[n_t:].tolist() == pytest.approx([math.log(10 / (V - n_t))] * 10)  # uniform: pi = n / #others


@pytest.mark.parametrize("proposal", [None, "unigram"])
def test_the_corrected_partition_function_is_unbiased(layer, proposal):
    out, states, targets = layer
    q = torch.linspace(1, 5, V) if proposal else None
    with torch.no_grad():
        logits = out(states[:1])[0]  # (V,)
        full_z = float(logits.exp().sum())
        sampler = SampledSoftmax(8, q, torch.Generator().manual_seed(2))
        draws = []
        for _ in range(3000):
            cand, log_pi = sampler.candidates(targets, V)
            draws.append(float((logits[cand] - log_pi).exp().sum()))
    assert sum(draws) / len(draws) == pytest.approx(full_z, rel=0.03)


def test_sequence_nll_with_full_coverage_equals_the_exact_loss():
    torch.manual_seed(0)
    cfg = dict(vocab_size=V, emb_dim=H, hidden=H, enc_layers=1, dec_layers=1, dropout=0.0)
    batch = collate([([5, 6, 7], [8, 9]), ([10, 11], [12, 13, 14, 15]), ([4], [30])])
    for model in (Seq2Seq(ModelConfig(**cfg)), LanguageModel(ModelConfig(kind="lm", **cfg))):
        exact, n = sequence_nll(model, batch)
        sampled, n_s = sequence_nll(model, batch, sampled=SampledSoftmax(V))
        assert n == n_s and float(sampled.detach()) == pytest.approx(float(exact.detach()), rel=1e-6)
        partial = sequence_nll(model, batch, sampled=SampledSoftmax(5))[0].detach()
        assert math.isfinite(float(partial)) and float(partial) != float(exact.detach())


def test_a_tiny_model_trains_with_sampled_softmax_and_is_evaluated_exactly(tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "s"), task="reverse", model=ModelConfig(emb_dim=32, hidden=32, enc_layers=1,
                      dec_layers=1, dropout=0.0), batch_size=32, lr=3e-3, warmup_steps=10, max_steps=150,
                      eval_every=150, valid_max_batches=2, threads=1, progress=False, sampled_softmax=6,
                      sampled_proposal="uniform")
    data = prepare_data(cfg)
    start = perplexity(Seq2Seq(cfg.model_config(data.tokenizer.vocab_size)), data.valid, max_batches=2)
    summary = train(cfg)
    # exact perplexity over all classes (about 25), far below the untrained model's
    assert summary["best_valid_ppl"] < 0.6 * start, (start, summary["best_valid_ppl"])
    unigram = train(TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "u"), "sampled_proposal": "unigram"}))
    assert unigram["best_valid_ppl"] < 0.6 * start


def test_bad_sampled_softmax_settings_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="at least 1 negative"):
        SampledSoftmax(0)
    base = dict(task="sort", model=ModelConfig(emb_dim=8, hidden=8, enc_layers=1, dec_layers=1), max_steps=1,
                threads=1, progress=False)
    with pytest.raises(ValueError, match="needs one process and teacher_forcing 1.0"):
        train(TrainConfig(out=str(tmp_path / "a"), sampled_softmax=4, teacher_forcing=0.5, **base))
    with pytest.raises(ValueError, match="sampled_proposal='zipf'"):
        train(TrainConfig(out=str(tmp_path / "b"), sampled_softmax=4, sampled_proposal="zipf", **base))
