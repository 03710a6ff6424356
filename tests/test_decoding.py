"""Decoding: greedy, ancestral sampling and beam search against their definitions.

- beam search with k=1 equals greedy; beams come sorted by their score;
- every returned log-probability equals probseq.log_prob recomputed on the returned
  sequence (up to its length, EOS included): rtol 1e-9 in float64;
- beam search equals an exhaustive search over all V**L sequences when the beam keeps
  every prefix (k = V**(L-1));
- attention weights are returned per token and are 0 after the end.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import probseq
from probseq import decoding
from probseq.conditional import Encoder, Seq2Seq

SRC = [np.array([1, 4, 2]), np.array([3, 0, 5, 5, 1])]
EOS = 1


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def make(attention="additive", vocab=5, seed=0):
    enc = Encoder(probseq.GRU(vocab_size=6, hidden_size=5), bidirectional=True)
    model = Seq2Seq(enc, probseq.GRU(vocab_size=vocab, hidden_size=6), attention=attention)
    params = model.init(jax.random.key(seed), dtype=jnp.float64)
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    leaves = [a + jnp.asarray(rng.normal(size=a.shape)) for a in leaves]  # peaky
    return model, jax.tree.unflatten(treedef, leaves)


def recomputed(model, params, seqs, lengths, source):
    """probseq.log_prob of each returned sequence cut at its length: (N,)."""
    rows = [np.asarray(s)[: int(n)] for s, n in zip(seqs, lengths, strict=True)]
    return np.asarray(probseq.log_prob(model, params, rows, source=source))


@pytest.mark.parametrize("attention", [None, "dot"])
def test_beam_width_one_equals_greedy(attention):
    model, params = make(attention)
    g = decoding.greedy(model, params, 8, source=SRC, eos=EOS)
    b = decoding.beam_search(model, params, 8, beam_width=1, source=SRC, eos=EOS)
    np.testing.assert_array_equal(b.sequences[:, 0], g.sequences)
    np.testing.assert_array_equal(b.lengths[:, 0], g.lengths)
    np.testing.assert_allclose(b.log_probs[:, 0], g.log_probs, rtol=1e-12)
    np.testing.assert_allclose(
        g.log_probs, recomputed(model, params, g.sequences, g.lengths, SRC), rtol=1e-9
    )


@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_beams_sorted_and_log_probs_equal_log_prob(alpha):
    model, params = make("additive")
    b = decoding.beam_search(model, params, 7, beam_width=4, source=SRC, eos=EOS,
                             length_normalization=alpha)  # fmt: skip
    scores = np.asarray(b.scores)
    assert np.all(np.diff(scores, axis=1) <= 0)
    np.testing.assert_allclose(scores, b.log_probs / np.asarray(b.lengths) ** alpha, rtol=1e-12)
    for row in range(len(SRC)):
        got = recomputed(model, params, b.sequences[row], b.lengths[row], [SRC[row]] * 4)
        np.testing.assert_allclose(b.log_probs[row], got, rtol=1e-9)
        ends = [int(n) for n in b.lengths[row]]
        for seq, n in zip(np.asarray(b.sequences[row]), ends, strict=True):
            assert np.all(seq[n:] == 0)
            assert n == 7 or (seq[n - 1] == EOS and EOS not in seq[: n - 1])
        # distinct hypotheses
        assert (
            len({tuple(s[:n]) for s, n in zip(np.asarray(b.sequences[row]), ends, strict=True)})
            == 4
        )


def test_exhaustive_equals_beam_when_beam_covers_everything():
    # V=3, L=2: beam_width 3 keeps all V**(L-1)=3 prefixes, so the search is exact.
    model, params = make("additive", vocab=3, seed=5)
    seqs = np.array(list(itertools.product(range(3), repeat=2)))
    lps = np.asarray(probseq.log_prob(model, params, seqs, source=[SRC[0]] * len(seqs)))
    b = decoding.beam_search(model, params, 2, beam_width=3, source=SRC[0])
    order = np.argsort(-lps)[:3]
    np.testing.assert_allclose(b.log_probs, lps[order], rtol=1e-10)
    np.testing.assert_array_equal(b.sequences, seqs[order])


def test_attention_weights_returned_and_zero_after_end():
    model, params = make("additive")
    g = decoding.greedy(model, params, 9, source=SRC, eos=EOS)
    att = np.asarray(g.attention)  # (B, L, S)
    assert att.shape == (2, 9, 5)
    for row, n in enumerate(np.asarray(g.lengths)):
        np.testing.assert_allclose(att[row, :n].sum(-1), 1.0, rtol=1e-12)
        assert np.all(att[row, n:] == 0.0)
        assert np.all(att[row, :, len(SRC[row]) :] == 0.0)
    b = decoding.beam_search(model, params, 9, beam_width=3, source=SRC, eos=EOS)
    assert b.attention.shape == (2, 3, 9, 5)
    assert decoding.greedy(make(None)[0], make(None)[1], 4, source=SRC).attention is None


def test_ancestral_log_probs_and_single_source():
    model, params = make("dot")
    out = decoding.ancestral(model, params, jax.random.key(0), 6, source=SRC[0], eos=EOS)
    assert out.sequences.shape == (6,)
    got = recomputed(model, params, [out.sequences], [out.lengths], [SRC[0]])
    np.testing.assert_allclose(out.log_probs, got[0], rtol=1e-9)


def test_unconditional_model_decodes_too():
    gru = probseq.GRU(vocab_size=4, hidden_size=5)
    params = gru.init(jax.random.key(0), dtype=jnp.float64)
    g = decoding.greedy(gru, params, 5)
    b = decoding.beam_search(gru, params, 5, beam_width=1)
    np.testing.assert_array_equal(b.sequences[0], g.sequences)
    np.testing.assert_allclose(g.log_probs, probseq.log_prob(gru, params, g.sequences), rtol=1e-9)


def test_bad_arguments_raise():
    model, params = make()
    with pytest.raises(ValueError, match="beam_width must be at most"):
        decoding.beam_search(model, params, 4, beam_width=9, source=SRC)
    with pytest.raises(ValueError, match="eos must be"):
        decoding.greedy(model, params, 4, source=SRC, eos=7)
    with pytest.raises(ValueError, match="pass source="):
        decoding.greedy(model, params, 4)
    with pytest.raises(ValueError, match="max_length"):
        decoding.greedy(model, params, 0, source=SRC)
    with pytest.raises(ValueError, match="temperature"):
        decoding.ancestral(model, params, jax.random.key(0), 3, source=SRC, temperature=0.0)
    gauss = probseq.GRU(obs_dim=2, hidden_size=3)
    with pytest.raises(ValueError, match="token model"):
        decoding.greedy(gauss, gauss.init(jax.random.key(0)), 3)
