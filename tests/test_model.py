"""The model: teacher-forced pass == step-by-step decoding, packing ignores padding, config validation."""

import pytest
import torch

from core.model import LanguageModel, ModelConfig, Seq2Seq, build_model, count_parameters

torch.set_num_threads(1)


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=50, emb_dim=16, hidden=16, enc_layers=2, dec_layers=2, dropout=0.0)
    return ModelConfig(**{**base, **kw})


def batch(B=3, S=7, T=6, V=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V, (B, S), generator=g)
    lens = torch.tensor([S, S - 2, 3][:B])
    for i, n in enumerate(lens):
        src[i, n:] = 0
    tgt = torch.randint(4, V, (B, T), generator=g)
    tgt[:, 0] = 1
    return src, lens, tgt


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("attention", ["dot", "general", "concat"])
@pytest.mark.parametrize("merge", ["sum", "concat"])
def test_full_pass_equals_single_steps(cell, attention, merge):
    torch.manual_seed(0)
    model = Seq2Seq(tiny(cell=cell, attention=attention, encoder_merge=merge)).eval()
    src, lens, tgt = batch()
    full = torch.log_softmax(model(src, lens, tgt), -1)  # (B, T, V)
    mem = model.encode(src, lens)
    state, steps = mem.state, []
    for t in range(tgt.size(1)):
        logp, state, attn = model.decode_step(tgt[:, t], state, mem)
        steps.append(logp)
        assert torch.allclose(attn.sum(-1), torch.ones(3), atol=1e-5)
        assert (attn[2, 3:] == 0).all(), "attention must not look at padding"
    assert torch.allclose(full, torch.stack(steps, 1), atol=1e-5)


def test_language_model_full_pass_equals_single_steps():
    torch.manual_seed(0)
    lm = LanguageModel(tiny(kind="lm")).eval()
    _, _, tgt = batch()
    full = torch.log_softmax(lm(tgt), -1)
    state, steps = lm.init_state(3), []
    for t in range(tgt.size(1)):
        logp, state = lm.decode_step(tgt[:, t], state)
        steps.append(logp)
    assert torch.allclose(full, torch.stack(steps, 1), atol=1e-5)


@pytest.mark.parametrize("merge", ["sum", "concat"])
def test_padding_does_not_change_a_sequence(merge):
    torch.manual_seed(0)
    model = Seq2Seq(tiny(encoder_merge=merge)).eval()
    src, lens, tgt = batch()
    together = model(src, lens, tgt)[2]
    alone = model(src[2:3, :3], lens[2:3], tgt[2:3])[0]
    assert torch.allclose(together, alone, atol=1e-5)


def test_encoder_memory_shapes_and_decoder_state():
    model = Seq2Seq(tiny(enc_layers=3, dec_layers=1))
    src, lens, _ = batch()
    mem = model.encode(src, lens)
    assert mem.outputs.shape == (3, 7, 16)
    assert mem.mask.tolist()[2] == [True] * 3 + [False] * 4
    assert mem.state.shape == (1, 3, 16)  # (L_dec, B, H)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_concat_encoder_gives_each_direction_half_of_hidden(cell):
    torch.manual_seed(0)
    model = Seq2Seq(tiny(cell=cell, encoder_merge="concat")).eval()
    assert model.encoder.rnn.hidden_size == 8
    src, lens, _ = batch()
    mem = model.encode(src, lens)
    assert mem.outputs.shape == (3, 7, 16)
    h = mem.state[0] if cell == "lstm" else mem.state
    assert h.shape == (2, 3, 16)  # (L_dec, B, H)
    # sequence 2 (3 real tokens) alone, through the bare bidirectional RNN: forward half, then backward half
    out, _ = model.encoder.rnn(model.encoder.embedding(src[2:3, :3]))  # (1, 3, 2 * 8)
    assert torch.allclose(mem.outputs[2, :3], out[0], atol=1e-6)
    assert (mem.outputs[2, 3:] == 0).all()
    summed = Seq2Seq(tiny(cell=cell))
    assert count_parameters(summed.encoder.rnn) > 2.5 * count_parameters(model.encoder.rnn)


def test_configs_saved_before_encoder_merge_load_as_sum():
    saved = tiny().to_dict()
    del saved["encoder_merge"]
    assert ModelConfig.from_dict(saved).encoder_merge == "sum"
    with pytest.raises(ValueError, match="must be even"):
        tiny(hidden=15, encoder_merge="concat")
    with pytest.raises(ValueError, match="encoder_merge"):
        tiny(encoder_merge="mean")


def test_tied_output_shares_the_embedding_and_counts_once():
    tied = Seq2Seq(tiny(tie_output=True, share_embeddings=True))
    untied = Seq2Seq(tiny(share_embeddings=True))
    separate = Seq2Seq(tiny())  # the default: own encoder and decoder embeddings, own output projection
    assert tied.decoder.out.weight is tied.decoder.embedding.weight is tied.encoder.embedding.weight
    assert count_parameters(untied) - count_parameters(tied) == 50 * 16
    assert count_parameters(separate) - count_parameters(untied) == 50 * 16


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="attention"):
        tiny(attention="bahdanau")
    with pytest.raises(ValueError, match="emb_dim == hidden"):
        tiny(emb_dim=8, tie_output=True)
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({"vocab_size": 5, "heads": 4})
    assert isinstance(build_model(tiny(kind="lm")), LanguageModel)
    assert isinstance(build_model(tiny(kind="backward")), Seq2Seq)
