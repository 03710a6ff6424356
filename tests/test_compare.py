"""probseq.compare: every number against a NumPy hand computation, ranking, table, errors."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import probseq
from probseq.compare import Comparison, ComparisonRow, compare

# Ragged token sequences over 4 symbols.
SEQS = [
    np.array([0, 0, 3, 3, 0]),
    np.array([3, 3, 3]),
    np.array([0, 1, 2, 3, 0, 0, 0]),
    np.array([2, 3, 3, 0]),
]


@pytest.fixture(scope="module")
def models():
    sticky = probseq.CategoricalHMM(2, 4)
    p_sticky = sticky.init(
        jax.random.key(0),
        initial_probs=[0.6, 0.4],
        transition_matrix=[[0.9, 0.1], [0.2, 0.8]],
        emission_probs=[[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]],
    )
    uniform = probseq.CategoricalHMM(1, 4)
    p_uniform = uniform.init(jax.random.key(0), emission_probs=[[0.25] * 4])
    gru = probseq.GRU(vocab_size=4, hidden_size=3)
    return {
        "gru": (gru, gru.init(jax.random.key(1))),
        "sticky": (sticky, p_sticky),
        "uniform": (uniform, p_uniform),
    }


def hand_table(models, seqs):
    """The expected numbers, from probseq.log_prob on each sequence alone."""
    ll = {
        name: np.array([float(probseq.log_prob(m, p, s)) for s in seqs])
        for name, (m, p) in models.items()
    }
    n_sym = sum(len(s) for s in seqs)
    best = max(ll, key=lambda n: ll[n].sum())
    out = {}
    for name, lls in ll.items():
        nats = -lls.sum() / n_sym
        d = ll[best] - lls
        # sqrt(n * var(d)) with ddof 0 is sqrt(sum((d - mean)^2)).
        dse = math.sqrt(((d - d.mean()) ** 2).sum())
        out[name] = dict(
            log_likelihood=lls.sum(),
            nats_per_symbol=nats,
            bits_per_symbol=nats / math.log(2),
            perplexity=math.exp(nats),
            elpd_diff=d.sum(),
            dse=dse,
            diff_bits_per_symbol=d.sum() / (n_sym * math.log(2)),
            se_bits_per_symbol=dse / (n_sym * math.log(2)),
        )
    return ll, out, n_sym


def test_every_number_against_hand_computation(models):
    ll, want, n_sym = hand_table(models, SEQS)
    table = compare(models, SEQS)
    assert isinstance(table, Comparison) and table.kind == "tokens"
    assert len(table) == 3
    for row in table.rows:
        assert isinstance(row, ComparisonRow)
        assert row.num_sequences == 4 and row.num_symbols == n_sym == 19
        for field, value in want[row.name].items():
            np.testing.assert_allclose(
                getattr(row, field), value, rtol=1e-5, atol=1e-9, err_msg=field
            )
        np.testing.assert_allclose(table.pointwise[row.name], ll[row.name], rtol=1e-5)
    # The uniform model: exactly log 4 nats (2 bits) per symbol, perplexity 4.
    np.testing.assert_allclose(table["uniform"].bits_per_symbol, 2.0, rtol=1e-6)
    np.testing.assert_allclose(table["uniform"].perplexity, 4.0, rtol=1e-6)


def test_ranking_best_first(models):
    table = compare(models, SEQS)
    totals = [r.log_likelihood for r in table.rows]
    assert totals == sorted(totals, reverse=True)
    assert [r.rank for r in table.rows] == [0, 1, 2]
    assert table.best is table.rows[0] and table.best.name == "sticky"
    assert table.best.elpd_diff == 0.0 and table.best.dse == 0.0
    assert all(r.elpd_diff > 0 for r in table.rows[1:])
    assert table.names[0] == "sticky"


def test_matches_arviz_compare(models):
    """elpd_diff and dse agree with arviz.compare on the same pointwise values (WAIC of a
    single draw is exactly the per-sequence log-likelihood)."""
    import arviz as az

    from probseq.inference_data import to_inference_data

    table = compare(models, SEQS)
    idatas = {n: to_inference_data(m, p, SEQS) for n, (m, p) in models.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = az.compare(idatas, ic="waic")
    for row in table.rows:
        np.testing.assert_allclose(row.elpd_diff, ref.loc[row.name, "elpd_diff"], rtol=1e-6)
        np.testing.assert_allclose(row.dse, ref.loc[row.name, "dse"], rtol=1e-6, atol=1e-9)
        assert row.rank == ref.loc[row.name, "rank"]


def test_padded_batch_with_mask_equals_ragged_list(models):
    x, mask = probseq.pad_sequences(SEQS)
    a, b = compare(models, SEQS), compare(models, x, mask)
    for ra, rb in zip(a.rows, b.rows, strict=True):
        assert ra.name == rb.name
        np.testing.assert_allclose(ra.log_likelihood, rb.log_likelihood, rtol=1e-6)
        assert ra.num_symbols == rb.num_symbols


def test_table_string(models):
    table = compare(models, SEQS)
    text = str(table)
    for row in table.rows:
        assert row.name in text
        assert f"{row.log_likelihood:.2f}" in text
        assert f"{row.bits_per_symbol:.4f}" in text
        assert f"{row.perplexity:.3f}" in text
    assert "nats/symbol" in text and "perplexity" in text
    # Aligned: numbers are right-aligned, so every line of the table has one width.
    lines = text.splitlines()[2:]
    assert len(lines) == 4 and len({len(line) for line in lines}) == 1


def test_to_dict_and_dataframe(models):
    table = compare(models, SEQS)
    d = table.to_dict()
    assert list(d) == list(ComparisonRow._fields)
    assert d["name"] == list(table.names)
    assert all(len(v) == 3 for v in d.values())
    pd = pytest.importorskip("pandas")
    df = table.to_dataframe()
    assert isinstance(df, pd.DataFrame)
    assert list(df.index) == list(table.names)
    np.testing.assert_allclose(df.loc["uniform", "bits_per_symbol"], 2.0, rtol=1e-6)


def test_to_dataframe_without_pandas(models, monkeypatch):
    import sys

    table = compare(models, SEQS)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ModuleNotFoundError, match="needs pandas"):
        table.to_dataframe()


def test_getitem_unknown_name(models):
    with pytest.raises(KeyError, match="no model named 'lstm'"):
        compare(models, SEQS)["lstm"]


def test_real_valued_data():
    ghmm = probseq.GaussianHMM(2, 2)
    lstm = probseq.LSTM(obs_dim=2, hidden_size=3)
    rng = np.random.default_rng(0)
    seqs = [rng.normal(size=(n, 2)).astype(np.float32) for n in (4, 6, 3)]
    models = {
        "ghmm": (ghmm, ghmm.init(jax.random.key(0))),
        "lstm": (lstm, lstm.init(jax.random.key(1))),
    }
    table = compare(models, seqs)
    assert table.kind == "real"
    for row in table.rows:
        m, p = models[row.name]
        ll = sum(float(probseq.log_prob(m, p, s)) for s in seqs)
        np.testing.assert_allclose(row.log_likelihood, ll, rtol=1e-5)
        assert row.num_symbols == 13 and math.isnan(row.perplexity)
    text = str(table)
    assert "nats/step" in text and "perplexity" not in text


def test_per_model_views_in_original_units():
    with jax.enable_x64(True):
        _check_views_in_original_units()


def _check_views_in_original_units():
    """The same Gaussian HMM on raw values and on standardised values (means and
    scales mapped accordingly), with the standardisation's log|det J| given: every
    per-sequence log-likelihood is the same, in the raw data's units. Likewise a
    categorical HMM on relabelled symbols (another vocabulary) with its emissions
    permuted."""
    rng = np.random.default_rng(3)
    pi, a = np.array([0.3, 0.7]), np.array([[0.8, 0.2], [0.3, 0.7]])
    means, scales = rng.normal(size=(2, 2)) * 5 + 40, rng.uniform(1, 3, size=(2, 2))
    seqs = [rng.normal(size=(n, 2)) * 4 + 40 for n in (6, 9, 4)]
    shift, scale = np.array([41.0, 38.0]), np.array([4.0, 0.5])
    hmm = probseq.GaussianHMM(2, 2)

    def init(m, s):
        return hmm.init(jax.random.key(0), initial_probs=pi, transition_matrix=a, means=m,
                        scales=s, dtype=jnp.float64)  # fmt: skip

    raw, std = init(means, scales), init((means - shift) / scale, scales / scale)
    table = compare(
        {"raw": (hmm, raw), "std": (hmm, std)},
        {"raw": seqs, "std": [(x - shift) / scale for x in seqs]},
        log_det_jacobians={"std": float(np.sum(np.log(scale)))},
    )
    np.testing.assert_allclose(table.pointwise["std"], table.pointwise["raw"], rtol=1e-12)
    assert table["std"].num_symbols == 19

    perm = np.array([2, 0, 3, 1])  # symbol s is written perm[s] in the other vocabulary
    cat = probseq.CategoricalHMM(2, 4)
    b = rng.dirichlet(np.ones(4), size=2)
    b_other = np.empty_like(b)
    b_other[:, perm] = b
    tables = compare(
        {"a": (cat, cat.init(jax.random.key(0), initial_probs=pi, transition_matrix=a,
                             emission_probs=b)),
         "b": (cat, cat.init(jax.random.key(0), initial_probs=pi, transition_matrix=a,
                             emission_probs=b_other))},
        {"a": SEQS, "b": probseq.data.Split(*probseq.data.pad_sequences([perm[x] for x in SEQS]))},
    )  # fmt: skip
    np.testing.assert_allclose(tables.pointwise["a"], tables.pointwise["b"], rtol=1e-6)


def test_per_model_views_must_be_the_same_sequences(models):
    gru = models["gru"]
    with pytest.raises(ValueError, match="not the same sequences"):
        compare({"x": gru, "y": gru}, {"x": SEQS, "y": SEQS[:3]})
    with pytest.raises(ValueError, match="not the same sequences"):
        compare({"x": gru, "y": gru}, {"x": SEQS, "y": [s[:-1] for s in SEQS]})
    with pytest.raises(ValueError, match="exactly the models' names"):
        compare({"x": gru, "y": gru}, {"x": SEQS, "z": SEQS})
    with pytest.raises(ValueError, match="not as mask="):
        compare({"x": gru}, {"x": SEQS}, mask=np.ones((4, 7), bool))
    with pytest.raises(ValueError, match="names no model"):
        compare({"x": gru}, SEQS, log_det_jacobians={"q": 1.0})


def test_one_sequence_has_nan_standard_error(models):
    table = compare(models, SEQS[2])
    assert table.best.num_sequences == 1 and table.best.dse == 0.0
    assert all(math.isnan(r.dse) and math.isnan(r.se_bits_per_symbol) for r in table.rows[1:])
    assert all(r.elpd_diff >= 0 for r in table.rows)


def test_errors(models):
    with pytest.raises(ValueError, match="empty dict"):
        compare({}, SEQS)
    with pytest.raises(ValueError, match="dict"):
        compare([models["gru"]], SEQS)
    with pytest.raises(ValueError, match=r"models\['x'\] must be a \(model, params\) pair"):
        compare({"x": models["gru"][0]}, SEQS)
    ghmm = probseq.GaussianHMM(2, 1)
    mixed = dict(models, gauss=(ghmm, ghmm.init(jax.random.key(0))))
    with pytest.raises(ValueError, match="model 'gauss'.*not comparable"):
        compare(mixed, SEQS)
    small = probseq.CategoricalHMM(2, 3)
    narrow = dict(models, small=(small, small.init(jax.random.key(0))))
    with pytest.raises(ValueError, match="model 'small'.*token id 3"):
        compare(narrow, SEQS)
    with pytest.raises(ValueError, match="model 'gru'.*integer token ids"):
        compare(models, [s.astype(float) for s in SEQS])
    with pytest.raises(ValueError, match="model 'gru'.*empty"):
        compare(models, np.zeros((2, 0), int))
    wrong_params = dict(models, uniform=(models["uniform"][0], models["sticky"][1]))
    with pytest.raises(ValueError, match="model 'uniform'.*shape"):
        compare(wrong_params, SEQS)


# --------------------------------------------------------------- probseq.inference_data
HMM_PI = np.array([0.6, 0.4])
HMM_A = np.array([[0.9, 0.1], [0.2, 0.8]])
HMM_B = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]])


def hmm_draws(num_chains, num_draws, seed=0, concentration=200.0):
    """HMM parameter draws scattered around the truth, with leading (chain, draw) axes:
    a stand-in for MCMC output (Dirichlet rows centred on the true probabilities)."""
    rng = np.random.default_rng(seed)
    lead = (num_chains, num_draws)
    pi = rng.dirichlet(concentration * HMM_PI, lead)
    a = np.stack([rng.dirichlet(concentration * row, lead) for row in HMM_A], axis=-2)
    b = np.stack([rng.dirichlet(concentration * row, lead) for row in HMM_B], axis=-2)
    params = probseq.HMMParams(
        jnp.log(pi.astype(np.float32)),
        jnp.log(a.astype(np.float32)),
        {"logits": jnp.log(b.astype(np.float32))},
    )
    return params, {"initial_probs": pi, "transition_matrix": a, "emission_probs": b}


def one_draw(params, c, d):
    return jax.tree.map(lambda a: a[c, d], params)


def test_inference_data_point_estimate_shapes_and_values(models):
    from probseq.inference_data import to_inference_data

    model, params = models["sticky"]
    idata = to_inference_data(model, params, SEQS, pointwise="both")
    ll = idata.log_likelihood
    assert ll["x"].dims == ("chain", "draw", "sequence")
    assert ll["x"].shape == (1, 1, 4)
    assert ll["x_step"].dims == ("chain", "draw", "sequence", "time")
    assert ll["x_step"].shape == (1, 1, 4, 7)
    x, mask = probseq.pad_sequences(SEQS)
    np.testing.assert_allclose(ll["x"][0, 0], probseq.log_prob(model, params, SEQS), rtol=1e-6)
    np.testing.assert_allclose(
        ll["x_step"][0, 0], probseq.step_log_probs(model, params, x, mask), rtol=1e-6
    )
    assert np.all(ll["x_step"].values[0, 0][~mask] == 0)
    np.testing.assert_array_equal(idata.observed_data["x"], x)
    np.testing.assert_array_equal(idata.observed_data["x_mask"], mask)
    assert "posterior" not in idata.groups()

    only_steps = to_inference_data(model, params, x, mask, pointwise="step", observed_data=False)
    assert list(only_steps.log_likelihood.data_vars) == ["x_step"]
    assert "observed_data" not in only_steps.groups()
    one = to_inference_data(model, params, SEQS[0])
    assert one.log_likelihood["x"].shape == (1, 1, 1)


def test_inference_data_posterior_draws_give_per_draw_values():
    from probseq.inference_data import to_inference_data

    hmm = probseq.CategoricalHMM(2, 4)
    params, posterior = hmm_draws(2, 3)
    idata = to_inference_data(hmm, params, SEQS, posterior=posterior, pointwise="both")
    assert idata.log_likelihood["x"].shape == (2, 3, 4)
    assert idata.log_likelihood["x_step"].shape == (2, 3, 4, 7)
    assert idata.posterior["transition_matrix"].shape == (2, 3, 2, 2)
    for c in range(2):
        for d in range(3):
            p = one_draw(params, c, d)
            np.testing.assert_allclose(
                idata.log_likelihood["x"][c, d], probseq.log_prob(hmm, p, SEQS), rtol=1e-5
            )
            np.testing.assert_allclose(
                idata.log_likelihood["x_step"][c, d],
                probseq.step_log_probs(hmm, p, SEQS),
                rtol=1e-5,
                atol=1e-6,
            )
    values = idata.log_likelihood["x"].values
    assert not np.allclose(values[0, 0], values[1, 2])  # draws differ
    # One chain given as a (draw,) axis.
    flat = jax.tree.map(lambda a: a[1], params)
    single = to_inference_data(hmm, flat, SEQS, sample_dims=1)
    np.testing.assert_allclose(single.log_likelihood["x"][0], values[1], rtol=1e-6)


def test_loo_and_compare_run_on_independent_sequences():
    import arviz as az

    from probseq.inference_data import to_inference_data

    hmm = probseq.CategoricalHMM(2, 4)
    truth = hmm.init(
        jax.random.key(0), initial_probs=HMM_PI, transition_matrix=HMM_A, emission_probs=HMM_B
    )
    x = probseq.sample(hmm, truth, jax.random.key(1), 15, num_samples=12)
    params, posterior = hmm_draws(2, 25)
    idata = to_inference_data(hmm, params, x, posterior=posterior)
    one_state = probseq.CategoricalHMM(1, 4)
    rng = np.random.default_rng(1)
    b = rng.dirichlet(np.full(4, 50.0), (2, 25))[:, :, None, :].astype(np.float32)
    flat_params = probseq.HMMParams(
        jnp.zeros((2, 25, 1)), jnp.zeros((2, 25, 1, 1)), {"logits": jnp.log(b)}
    )
    other = to_inference_data(one_state, flat_params, x, posterior={"emission_probs": b})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pareto-k warnings on these made-up draws
        loo = az.loo(idata)
        table = az.compare({"two states": idata, "one state": other})
    assert loo.n_data_points == 12 and np.isfinite(loo.elpd_loo)
    assert set(table.index) == {"two states", "one state"}
    assert table.loc["two states", "rank"] == 0


def test_loo_needs_posterior_draws(models):
    import arviz as az

    from probseq.inference_data import to_inference_data

    model, params = models["sticky"]
    with pytest.raises(TypeError):
        az.loo(to_inference_data(model, params, SEQS))


def test_add_log_likelihood_replaces_the_observed_sites_variable():
    import arviz as az

    from probseq.inference_data import add_log_likelihood

    hmm = probseq.CategoricalHMM(2, 4)
    params, posterior = hmm_draws(2, 3)
    base = az.from_dict(
        posterior=posterior,
        log_likelihood={"x": np.zeros((2, 3, 9)), "other": np.ones((2, 3))},
    )
    idata = add_log_likelihood(base, hmm, params, SEQS, pointwise="both")
    ll = idata.log_likelihood
    assert set(ll.data_vars) == {"x", "x_step", "other"}
    assert ll["x"].dims == ("chain", "draw", "sequence") and "x_dim_0" not in ll.dims
    np.testing.assert_allclose(
        ll["x"][1, 2], probseq.log_prob(hmm, one_draw(params, 1, 2), SEQS), rtol=1e-5
    )
    assert base.log_likelihood["x"].shape == (2, 3, 9)  # the input is not modified
    assert "posterior" in idata.groups()
    with pytest.raises(ValueError, match=r"\(chain, draw\) = \(2, 3\).*\(1, 1\)"):
        add_log_likelihood(base, hmm, one_draw(params, 0, 0), SEQS)


def test_inference_data_errors(models):
    from probseq.inference_data import to_inference_data

    hmm = probseq.CategoricalHMM(2, 4)
    params, posterior = hmm_draws(2, 3)
    mixed = params._replace(initial_logits=params.initial_logits[0])
    with pytest.raises(ValueError, match="same 0, 1 or 2 leading sample axes"):
        to_inference_data(hmm, mixed, SEQS)
    with pytest.raises(ValueError, match="same 0 leading sample axes"):
        to_inference_data(hmm, params, SEQS, sample_dims=0)
    with pytest.raises(ValueError, match="sample_dims must be"):
        to_inference_data(hmm, params, SEQS, sample_dims=3)
    with pytest.raises(ValueError, match="structure"):
        to_inference_data(hmm, {"logits": np.zeros(3)}, SEQS)
    with pytest.raises(ValueError, match="pointwise must be one of"):
        to_inference_data(hmm, params, SEQS, pointwise="time")
    with pytest.raises(ValueError, match=r"posterior\['pi'\] has shape \(3, 2\)"):
        to_inference_data(hmm, params, SEQS, posterior={"pi": np.zeros((3, 2))})
    bad = params._replace(transition_logits=params.transition_logits.at[1, 2, 0, 0].set(np.nan))
    with pytest.raises(ValueError, match="chain 1, draw 2"):
        to_inference_data(hmm, bad, SEQS)
    with pytest.raises(ValueError, match="token id"):
        to_inference_data(hmm, params, [np.array([0, 5])])
