"""Encoders and Seq2Seq against independent references.

1. A bidirectional encoder's states equal two separate runs of the family (forward on
   x_1..x_n, forward on x_n..x_1 reversed back), per row of a ragged batch.
2. Seq2Seq log_prob equals a hand-written float64 NumPy recursion (bidirectional RNN
   encoder, bridge, RNN decoder with input feeding, attention none / additive / dot)
   on ragged sources and targets: rtol 1e-10 (float64 arithmetic in another order).
3. Attention weights sum to 1 over the valid source steps and are exactly 0 on
   padding; gradients are finite (also through padding rows) and match finite
   differences.
4. The overriding fast path equals the generic path; fit_sgd / sgd_update / compare /
   sample take source= through the generic code.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import probseq
from probseq.conditional import Encoder, Seq2Seq, masked_softmax
from probseq.core import SequenceModel


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def jitter(params, seed=0):
    """float64 params, every leaf moved so that no bias is exactly 0."""
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    leaves = [jnp.asarray(np.asarray(a) + 0.3 * rng.normal(size=a.shape)) for a in leaves]
    return jax.tree.unflatten(treedef, leaves)


SRC = [np.array([1, 4, 2]), np.array([3, 0, 5, 5, 1]), np.array([2])]
TGT = [np.array([0, 3, 2, 1]), np.array([1]), np.array([3, 3, 0])]


# ------------------------------------------------------------- NumPy reference
def _np_rnn(layer, inputs):
    h = np.zeros(layer["w_hh"].shape[0])
    out = []
    for x in inputs:
        h = np.tanh(x @ layer["w_ih"] + layer["b"] + h @ layer["w_hh"])
        out.append(h)
    return np.array(out)


def _np(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def np_encode(p, src):
    """Bidirectional one-layer RNN encoder: states (n, 2H), summary (2H,)."""
    fwd_p, bwd_p = p["layers"][0]["forward"], p["layers"][0]["backward"]
    fwd = _np_rnn(fwd_p["layers"][0], fwd_p["embed"][src])
    bwd = _np_rnn(bwd_p["layers"][0], bwd_p["embed"][src[::-1]])[::-1]
    states = np.concatenate([fwd, bwd], axis=1)
    return states, np.concatenate([fwd[-1], bwd[0]])


def np_log_prob(params, attention, src, tgt):
    p = _np(params)
    mem, summary = np_encode(p["encoder"], src)
    b = p["bridge"]
    carry = np.tanh(summary @ b[0]["kernel"] + b[0]["bias"])
    out = np.tanh(summary @ b[1]["kernel"] + b[1]["bias"])
    dec = p["decoder"]

    def attend(o):
        if attention is None:
            return np.zeros(0)
        a = p["attention"]
        if attention == "dot":
            scores = (mem @ a["w_key"]) @ o
        else:
            scores = np.tanh(mem @ a["w_key"] + a["bias"] + o @ a["w_query"]) @ a["v"]
        w = np.exp(scores - scores.max())
        return (w / w.sum()) @ mem

    ctx = attend(out)
    total = 0.0
    for y in tgt:
        logits = np.concatenate([out, ctx]) @ dec["head"]["kernel"] + dec["head"]["bias"]
        total += logits[y] - np.log(np.sum(np.exp(logits - logits.max()))) - logits.max()
        layer = dec["layers"][0]
        inp = np.concatenate([dec["embed"][y], ctx])
        carry = np.tanh(inp @ layer["w_ih"] + layer["b"] + carry @ layer["w_hh"])
        out = carry
        ctx = attend(out)
    return total


def tiny(attention, decoder=None):
    enc = Encoder(probseq.RNN(vocab_size=6, hidden_size=3, embed_size=2), bidirectional=True)
    dec = decoder or probseq.RNN(vocab_size=4, hidden_size=4, embed_size=3)
    return Seq2Seq(enc, dec, attention=attention, attention_size=5)


# ------------------------------------------------------------------ encoders
@pytest.mark.parametrize("family", [probseq.GRU, probseq.LSTM, probseq.LRU])
def test_bidirectional_states_equal_two_separate_runs(family):
    cell = family(vocab_size=6, hidden_size=4)
    enc = Encoder(cell, bidirectional=True)
    params = jitter(enc.init(jax.random.key(1)))
    x, mask = probseq.pad_sequences(SRC)
    out = jax.vmap(enc.apply, (None, 0, 0))(params, jnp.asarray(x), jnp.asarray(mask))
    head = cell.init(jax.random.key(0), dtype=jnp.float64)["head"]
    for row, seq in enumerate(SRC):
        n = len(seq)
        runs = []
        for name, xs in (("forward", seq), ("backward", seq[::-1])):
            p = {**params["layers"][0][name], "head": head}
            feats = cell.trajectory(p, cell.initial_state(p), jnp.asarray(xs)).features
            runs.append(np.asarray(feats) if name == "forward" else np.asarray(feats)[::-1])
        want = np.concatenate(runs, axis=1)
        np.testing.assert_allclose(out.states[row, :n], want, rtol=1e-12, atol=1e-14)
        assert np.all(np.asarray(out.states[row, n:]) == 0.0)
        np.testing.assert_allclose(
            out.summary[row], np.concatenate([want[-1, :4], want[0, 4:]]), rtol=1e-12
        )


def test_stacked_encoder_second_layer_reads_first_layer_states():
    cell = probseq.GRU(vocab_size=6, hidden_size=3)
    deep = Encoder(cell, bidirectional=True, num_layers=2)
    params = jitter(deep.init(jax.random.key(2)))
    x, m = jnp.asarray(SRC[1]), jnp.ones(len(SRC[1]), bool)
    first = Encoder(cell, bidirectional=True).apply({"layers": params["layers"][:1]}, x, m)
    upper = Encoder(probseq.GRU(obs_dim=6, hidden_size=3), bidirectional=True)
    want = upper.apply({"layers": params["layers"][1:]}, first.states, m)
    got = deep.apply(params, x, m)
    np.testing.assert_allclose(got.states, want.states, rtol=1e-12)
    np.testing.assert_allclose(got.summary, want.summary, rtol=1e-12)


def test_encoder_rejects_bad_configuration():
    with pytest.raises(ValueError, match="recurrent family"):
        Encoder(probseq.CategoricalHMM(num_states=2, vocab_size=3))
    with pytest.raises(ValueError, match="num_layers"):
        Encoder(probseq.GRU(vocab_size=3, hidden_size=2), num_layers=0)
    with pytest.raises(ValueError, match="input_dim"):
        Encoder(probseq.GRU(vocab_size=3, hidden_size=2, input_dim=2))


# ------------------------------------------------------------------- seq2seq
@pytest.mark.parametrize("attention", [None, "additive", "dot"])
def test_log_prob_equals_numpy_reference(attention):
    model = tiny(attention)
    params = jitter(model.init(jax.random.key(3), dtype=jnp.float64))
    got = np.asarray(probseq.log_prob(model, params, TGT, source=SRC))
    want = [np_log_prob(params, attention, s, t) for s, t in zip(SRC, TGT, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-10)
    steps = probseq.step_log_probs(model, params, TGT, source=SRC)
    assert np.all(np.asarray(steps)[1, 1:] == 0.0)
    one = probseq.log_prob(model, params, TGT[0], source=SRC[0])
    np.testing.assert_allclose(one, want[0], rtol=1e-10)


@pytest.mark.parametrize("attention", [None, "additive", "dot"])
@pytest.mark.parametrize(
    "decoder, num_layers",
    [(probseq.LSTM, 2), (probseq.GRU, 1), (probseq.MinGRU, 1)],
)
def test_fast_path_equals_generic_path(attention, decoder, num_layers):
    model = tiny(attention, decoder(vocab_size=4, hidden_size=4, num_layers=num_layers))
    params = jitter(model.init(jax.random.key(4), dtype=jnp.float64))
    x, m = (jnp.asarray(a) for a in probseq.pad_sequences(SRC))
    y, ym = (jnp.asarray(a) for a in probseq.pad_sequences(TGT))

    def paths(s, sm, t):
        h = model.source_state(params, s, sm)
        fast = model.sequence_log_probs(params, h, t)
        slow = SequenceModel.sequence_log_probs(model, params, h, t)
        return fast, slow

    (fast, after_f), (slow, after_s) = jax.vmap(paths)(x, m, y)
    np.testing.assert_allclose(jnp.where(ym, fast, 0), jnp.where(ym, slow, 0), rtol=1e-11)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-11), after_f, after_s)


@pytest.mark.parametrize("attention", ["additive", "dot"])
def test_attention_weights_sum_to_one_and_are_zero_on_padding(attention):
    model = tiny(attention)
    params = jitter(model.init(jax.random.key(5), dtype=jnp.float64))
    x, m = (jnp.asarray(a) for a in probseq.pad_sequences(SRC))
    y, _ = (jnp.asarray(a) for a in probseq.pad_sequences(TGT))

    def weights(s, sm, t):
        h = model.source_state(params, s, sm)
        _, after = model.sequence_log_probs(params, h, t)
        return jnp.concatenate([h.weights[None], after.weights], axis=0)

    w = np.asarray(jax.vmap(weights)(x, m, y))  # (B, T + 1, S)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-12)
    pad = ~np.asarray(m)[:, None, :].repeat(w.shape[1], axis=1)
    assert np.all(w[pad] == 0.0)
    assert np.all(w[~pad] > 0.0)


def test_masked_softmax_all_masked_row_is_zero_with_finite_gradient():
    scores = jnp.array([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]])
    mask = jnp.array([[True, True, False], [False, False, False]])
    w = masked_softmax(scores, mask)
    np.testing.assert_allclose(w[0], jax.nn.softmax(scores[0, :2]).tolist() + [0.0])
    assert np.all(np.asarray(w[1]) == 0.0)
    g = jax.grad(lambda s: jnp.sum(masked_softmax(s, mask) * jnp.arange(3.0)))(scores)
    assert np.all(np.isfinite(g))


@pytest.mark.parametrize("attention", [None, "additive"])
def test_gradients_finite_and_match_finite_differences(attention):
    model = tiny(attention)
    params = jitter(model.init(jax.random.key(6), dtype=jnp.float64))
    x, m = probseq.pad_sequences(SRC)
    y, ym = probseq.pad_sequences(TGT)

    def loss(p):
        return jnp.sum(probseq.log_prob(model, p, y, ym, source=x, source_mask=m))

    g = jax.grad(loss)(params)
    assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(g))
    # The encoder is reached (through the bridge, and the attention).
    assert np.abs(np.asarray(g["encoder"]["layers"][0]["backward"]["embed"])).max() > 0
    rng = np.random.default_rng(0)
    direction = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), params)
    eps = 1e-6
    shifted = [jax.tree.map(lambda a, d, s=s: a + s * eps * d, params, direction) for s in (1, -1)]
    fd = (loss(shifted[0]) - loss(shifted[1])) / (2 * eps)
    dot = sum(
        jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(direction), strict=True)
    )
    np.testing.assert_allclose(dot, fd, rtol=1e-6)


def test_real_valued_source_and_targets():
    enc = Encoder(probseq.GRU(obs_dim=2, hidden_size=3))
    model = Seq2Seq(enc, probseq.GRU(obs_dim=3, hidden_size=4), attention="dot")
    params = model.init(jax.random.key(7))
    rng = np.random.default_rng(0)
    src = [rng.normal(size=(4, 2)), rng.normal(size=(2, 2))]
    tgt = [rng.normal(size=(3, 3)), rng.normal(size=(5, 3))]
    lp = probseq.log_prob(model, params, tgt, source=src)
    assert lp.shape == (2,) and np.all(np.isfinite(lp))
    draws = probseq.sample(model, params, jax.random.key(1), 6, source=src, num_samples=2)
    assert draws.shape == (2, 2, 6, 3)


def test_source_is_validated_at_the_boundary():
    model = tiny("dot")
    params = model.init(jax.random.key(0))
    with pytest.raises(ValueError, match="pass source="):
        probseq.log_prob(model, params, TGT)
    with pytest.raises(ValueError, match="source has token id 9"):
        probseq.log_prob(model, params, TGT, source=[np.array([9, 1])] + SRC[1:])
    with pytest.raises(ValueError, match="pair up"):
        probseq.log_prob(model, params, TGT, source=SRC[:2])
    with pytest.raises(ValueError, match="not conditioned on a source"):
        gru = probseq.GRU(vocab_size=4, hidden_size=2)
        probseq.log_prob(gru, gru.init(jax.random.key(0)), TGT, source=SRC)
    with pytest.raises(ValueError, match="not initial_state"):
        probseq.score(model, params, TGT, source=SRC, initial_state=0)
    with pytest.raises(ValueError, match="attention must be"):
        Seq2Seq(probseq.GRU(vocab_size=3, hidden_size=2), probseq.GRU(vocab_size=3, hidden_size=2),
                attention="luong")  # fmt: skip
    with pytest.raises(ValueError, match="input_dim=0"):
        Seq2Seq(probseq.GRU(vocab_size=3, hidden_size=2),
                probseq.GRU(vocab_size=3, hidden_size=2, input_dim=1))  # fmt: skip


# ------------------------------------------------ the generic machinery, with source
def copy_task(rng, n, vocab=5):
    lengths = rng.integers(2, 6, size=n)
    src = [rng.integers(0, vocab, size=k) for k in lengths]
    return src, [s.copy() for s in src]


def test_fit_sgd_sgd_update_and_compare_take_source():
    rng = np.random.default_rng(0)
    src, tgt = copy_task(rng, 48)
    model = Seq2Seq(probseq.GRU(vocab_size=5, hidden_size=8),
                    probseq.GRU(vocab_size=5, hidden_size=8), attention="dot")  # fmt: skip
    params = model.init(jax.random.key(0))
    before = probseq.log_prob(model, params, tgt[:8], source=src[:8])
    # 20 validation rows in batches of 16: the last chunk has padding rows
    res = probseq.fit_sgd(model, params, tgt, source=src, key=jax.random.key(1), num_epochs=2,
                          batch_size=16, learning_rate=0.05, valid_data=tgt[:20],
                          valid_source=src[:20], progress=False)  # fmt: skip
    after = probseq.log_prob(model, res.params, tgt[:8], source=src[:8])
    assert float(jnp.sum(after)) > float(jnp.sum(before)) + 1.0
    assert res.info["best_valid_log_lik"] > res.info["initial_valid_log_lik"]

    x, m = probseq.pad_sequences(src[:8])
    y, ym = probseq.pad_sequences(tgt[:8])
    state = probseq.sgd_init(model, params, optax.adam(1e-2))
    state, metrics = jax.jit(probseq.sgd_update)(state, (y, ym, None, x, m))
    np.testing.assert_allclose(metrics["log_likelihood"], jnp.sum(before), rtol=1e-9)

    table = probseq.compare({"fit": (model, res.params), "init": (model, params)}, tgt[:8],
                            source=src[:8])  # fmt: skip
    assert table.best.name == "fit"
    with pytest.raises(ValueError, match="pass source="):
        probseq.fit_sgd(model, params, tgt, key=jax.random.key(1), num_epochs=1, batch_size=4)
    with pytest.raises(ValueError, match="without valid_data"):
        probseq.fit_sgd(model, params, tgt, source=src, key=jax.random.key(1), num_epochs=1,
                        batch_size=4, valid_source=src)  # fmt: skip


def test_sample_with_source_and_prefix():
    model = tiny("additive")
    params = model.init(jax.random.key(0))
    draws = probseq.sample(model, params, jax.random.key(1), 5, source=SRC)
    assert draws.shape == (3, 5)
    one = probseq.sample(model, params, jax.random.key(1), 5, source=SRC[0], num_samples=4)
    assert one.shape == (4, 5)
    greedy = probseq.sample(model, params, jax.random.key(2), 3, source=SRC, prefix=TGT,
                            temperature=0.0)  # fmt: skip
    assert greedy.shape == (3, 3)


# ------------------------------------------- one-to-many, many-to-one, many-to-many
def np_uni_encode(p, src):
    """One-way one-layer RNN encoder states (n, H) from the Encoder's parameters."""
    fwd = p["layers"][0]["forward"]
    return _np_rnn(fwd["layers"][0], fwd["embed"][src])


def np_log_softmax(z):
    return z - z.max() - np.log(np.sum(np.exp(z - z.max())))


def test_one_to_many_equals_decoder_started_from_bridged_feature():
    dec = probseq.LSTM(vocab_size=4, hidden_size=3)
    model = probseq.OneToMany(dec, feature_dim=2)
    params = jitter(model.init(jax.random.key(0), dtype=jnp.float64))
    feats = np.array([[0.5, -1.0], [2.0, 0.3], [-0.7, 0.1]])
    p = _np(params)
    got = probseq.log_prob(model, params, TGT, source=feats)
    for row, (f, y) in enumerate(zip(feats, TGT, strict=True)):
        leaves = [np.tanh(f @ b["kernel"] + b["bias"]) for b in p["bridge"]]
        template = dec.initial_state(params["decoder"])
        h0 = jax.tree.unflatten(jax.tree.structure(template), [jnp.asarray(a) for a in leaves])
        want = probseq.log_prob(dec, params["decoder"], y, initial_state=h0)
        np.testing.assert_allclose(got[row], want, rtol=1e-12)
    draws = probseq.sample(model, params, jax.random.key(1), 5, source=feats[0])
    assert draws.shape == (5,)
    with pytest.raises(ValueError, match="feature vectors of shape"):
        probseq.log_prob(model, params, TGT, source=np.zeros((3, 5)))


@pytest.mark.parametrize("pooling", ["final", "mean"])
def test_classifier_categorical_equals_numpy_reference(pooling):
    enc = Encoder(probseq.RNN(vocab_size=6, hidden_size=3, embed_size=2))
    model = probseq.SequenceClassifier(enc, num_classes=4, pooling=pooling)
    params = jitter(model.init(jax.random.key(1), dtype=jnp.float64))
    labels = np.array([2, 0, 3])
    got = probseq.log_prob(model, params, labels[:, None], source=SRC)
    p = _np(params)
    for row, (src, lab) in enumerate(zip(SRC, labels, strict=True)):
        states = np_uni_encode(p["encoder"], src)
        pooled = states[-1] if pooling == "final" else states.mean(0)
        logits = pooled @ p["head"]["kernel"] + p["head"]["bias"]
        np.testing.assert_allclose(got[row], np_log_softmax(logits)[lab], rtol=1e-12)
    best = probseq.decoding.greedy(model, params, 1, source=SRC).sequences[:, 0]
    assert best.shape == (3,)


def test_classifier_normal_equals_numpy_reference():
    enc = Encoder(probseq.RNN(vocab_size=6, hidden_size=3, embed_size=2), bidirectional=True)
    model = probseq.SequenceClassifier(enc, obs_dim=2)
    params = jitter(model.init(jax.random.key(2), dtype=jnp.float64))
    y = np.array([[0.3, -1.2], [1.0, 0.0], [-0.4, 2.2]])
    got = probseq.log_prob(model, params, y[:, None, :], source=SRC)
    p = _np(params)
    for row, src in enumerate(SRC):
        _, summary = np_encode(p["encoder"], src)
        raw = summary @ p["head"]["kernel"] + p["head"]["bias"]
        loc, log_scale = raw[:2], raw[2:]
        z = (y[row] - loc) / np.exp(log_scale)
        want = np.sum(-0.5 * z**2 - log_scale - 0.5 * np.log(2 * np.pi))
        np.testing.assert_allclose(got[row], want, rtol=1e-12)


def test_tagger_causal_equals_numpy_reference_and_bidirectional_sees_the_future():
    tags = [np.array([0, 2, 1]), np.array([1, 1, 0, 2, 2]), np.array([3])]
    causal = probseq.SequenceTagger(probseq.RNN(vocab_size=6, hidden_size=3), num_classes=4)
    params = jitter(causal.init(jax.random.key(3), dtype=jnp.float64))
    got = probseq.step_log_probs(causal, params, tags, source=SRC)
    p = _np(params)
    for row, (src, y) in enumerate(zip(SRC, tags, strict=True)):
        states = np_uni_encode(p["encoder"], src)
        logits = states @ p["head"]["kernel"] + p["head"]["bias"]
        want = [np_log_softmax(z)[t] for z, t in zip(logits, y, strict=True)]
        np.testing.assert_allclose(got[row, : len(y)], want, rtol=1e-12)
    # the fast path equals the generic scan
    x, m = (jnp.asarray(a) for a in probseq.pad_sequences(SRC))
    y, _ = (jnp.asarray(a) for a in probseq.pad_sequences(tags))
    h = causal.source_state(params, x[1], m[1])
    np.testing.assert_allclose(
        causal.sequence_log_probs(params, h, y[1])[0],
        SequenceModel.sequence_log_probs(causal, params, h, y[1])[0],
        rtol=1e-12,
    )
    # causal: a later source token changes no earlier step; bidirectional: it does
    changed = [SRC[0], np.array([3, 0, 5, 5, 4]), SRC[2]]
    again = probseq.step_log_probs(causal, params, tags, source=changed)
    np.testing.assert_array_equal(again[1, :4], got[1, :4])
    bi = probseq.SequenceTagger(
        Encoder(probseq.RNN(vocab_size=6, hidden_size=3), bidirectional=True), num_classes=4
    )
    pb = jitter(bi.init(jax.random.key(4), dtype=jnp.float64))
    a = probseq.step_log_probs(bi, pb, tags, source=SRC)
    b = probseq.step_log_probs(bi, pb, tags, source=changed)
    assert np.all(np.asarray(a[1, :4]) != np.asarray(b[1, :4]))
    with pytest.raises(ValueError, match="one target per source step"):
        probseq.log_prob(causal, params, TGT, source=SRC)


# ------------------------------------------------------------- scheduled sampling
def test_scheduled_sampling_probability_zero_is_teacher_forcing_exactly():
    rng = np.random.default_rng(1)
    src, tgt = copy_task(rng, 16)
    model = Seq2Seq(probseq.GRU(vocab_size=5, hidden_size=6),
                    probseq.GRU(vocab_size=5, hidden_size=6), attention="additive")  # fmt: skip
    params = model.init(jax.random.key(0))
    kw = dict(source=src, key=jax.random.key(1), num_epochs=1, batch_size=8, progress=False)
    a = probseq.fit_sgd(model, params, tgt, **kw)
    b = probseq.fit_sgd(probseq.ScheduledSampling(model, 0.0), params, tgt, **kw)
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    # the sampling scan itself with p = 0 is teacher forcing (another code path)
    from probseq.conditional import scheduled_log_probs

    h = model.source_state(params, jnp.asarray(src[0]), jnp.ones(len(src[0]), bool))
    lp0, _ = scheduled_log_probs(model, params, jax.random.key(5), h, jnp.asarray(tgt[0]))
    np.testing.assert_allclose(lp0, model.sequence_log_probs(params, h, jnp.asarray(tgt[0]))[0],
                               rtol=1e-12)  # fmt: skip


def test_scheduled_sampling_feeds_draws():
    model = tiny("dot")
    params = jitter(model.init(jax.random.key(0), dtype=jnp.float64))
    teacher = probseq.log_prob(model, params, TGT, source=SRC)
    free = probseq.log_prob(probseq.ScheduledSampling(model, 1.0), params, TGT, source=SRC)
    # the first step sees no fed token: equal; later steps differ
    t1 = probseq.step_log_probs(model, params, TGT, source=SRC)[:, 0]
    f1 = probseq.step_log_probs(probseq.ScheduledSampling(model, 1.0), params, TGT, source=SRC)
    np.testing.assert_allclose(f1[:, 0], t1, rtol=1e-12)
    assert not np.allclose(teacher[0], free[0])
    g = jax.grad(
        lambda p: jnp.sum(
            probseq.log_prob(probseq.ScheduledSampling(model, 0.5), p, TGT, source=SRC)
        )
    )(params)
    assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(g))
    with pytest.raises(ValueError, match="probability"):
        probseq.ScheduledSampling(model, 1.5)


def test_truncated_windows_with_source_carry_the_state():
    """TBPTT with a source: window 1 starts from source_state, window 2 from the state
    window 1 ended in (attention memory included); values equal the whole sequence."""
    from probseq.fit.sgd import window_log_probs

    model = tiny("additive")
    params = jitter(model.init(jax.random.key(8), dtype=jnp.float64))
    x, m = (jnp.asarray(a) for a in probseq.pad_sequences(SRC))
    y, ym = (jnp.asarray(a) for a in probseq.pad_sequences(TGT))
    whole = probseq.step_log_probs(model, params, y, ym, source=x, source_mask=m)
    carried = jax.vmap(model.source_state, (None, 0, 0))(params, x, m)
    first, state = window_log_probs(model, params, carried, True, y[:, :2], ym[:, :2],
                                    source=(x, m))  # fmt: skip
    second, _ = window_log_probs(model, params, state, False, y[:, 2:], ym[:, 2:],
                                 source=(x, m))  # fmt: skip
    np.testing.assert_allclose(jnp.concatenate([first, second], axis=1), whole, rtol=1e-12)
