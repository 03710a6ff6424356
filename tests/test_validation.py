"""Bad input is rejected at the API boundary with a ValueError that says what was
wrong, where, and what was expected, before anything is traced."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import probseq


@pytest.fixture(scope="module")
def gru():
    model = probseq.GRU(vocab_size=5, hidden_size=4)
    return model, model.init(jax.random.key(0))


@pytest.fixture(scope="module")
def lstm_real():
    model = probseq.LSTM(obs_dim=2, hidden_size=4)
    return model, model.init(jax.random.key(0))


@pytest.fixture(scope="module")
def hmm():
    model = probseq.CategoricalHMM(3, 5)
    return model, model.init(jax.random.key(0))


# ------------------------------------------------------------------ shapes, dtypes
def test_wrong_rank_tokens(gru):
    model, params = gru
    with pytest.raises(
        ValueError, match=r"x must have shape \(T,\) or \(B, T\).*got shape \(2, 3, 4\)"
    ):
        probseq.log_prob(model, params, np.zeros((2, 3, 4), int))


def test_wrong_rank_real(lstm_real):
    model, params = lstm_real
    with pytest.raises(ValueError, match=r"x must have shape \(T, 2\).*got shape \(7,\)"):
        probseq.log_prob(model, params, np.zeros(7))


def test_wrong_event_shape_real(lstm_real):
    model, params = lstm_real
    with pytest.raises(
        ValueError, match=r"event shape \(3,\).*expects observations of shape \(2,\)"
    ):
        probseq.log_prob(model, params, np.zeros((4, 6, 3)))


def test_float_tokens_rejected(gru):
    model, params = gru
    with pytest.raises(ValueError, match=r"integer token ids in \[0, 5\); got dtype float"):
        probseq.log_prob(model, params, np.array([0.0, 1.0, 2.0]))


def test_string_real_rejected(lstm_real):
    model, params = lstm_real
    with pytest.raises(ValueError, match="real numbers.*got dtype <U1"):
        probseq.log_prob(model, params, np.array([["a", "b"]]))


# ------------------------------------------------------------------ values
@pytest.mark.parametrize("bad, idx", [(5, (1, 2)), (-1, (0, 0))])
def test_token_out_of_range(gru, hmm, bad, idx):
    x = np.array([[0, 1, 2, 3], [4, 3, 2, 1]])
    x[idx] = bad
    for model, params in (gru, hmm):
        with pytest.raises(
            ValueError, match=rf"token id {bad} at index {re.escape(str(idx))}.*outside \[0, 5\)"
        ):
            probseq.log_prob(model, params, x)


def test_out_of_range_padding_is_ignored(gru):
    """Padding positions may hold anything (e.g. -1): only valid steps are checked."""
    model, params = gru
    x = np.array([[0, 1, 2], [3, -1, -1]])
    mask = np.array([[1, 1, 1], [1, 0, 0]], bool)
    lp = probseq.log_prob(model, params, x, mask)
    alone = probseq.log_prob(model, params, np.array([3]))
    np.testing.assert_allclose(lp[1], alone, rtol=1e-6)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_real(lstm_real, value):
    model, params = lstm_real
    x = np.zeros((2, 5, 2))
    x[1, 3, 0] = value
    with pytest.raises(ValueError, match=r"non-finite value.*at index \(1, 3\)"):
        probseq.log_prob(model, params, x)


def test_tokens_out_of_range_in_sample_prefix(gru):
    model, params = gru
    with pytest.raises(ValueError, match=r"token id 9 at index \(0, 1\)"):
        probseq.sample(model, params, jax.random.key(0), 3, prefix=np.array([1, 9]))


# ------------------------------------------------------------------ empty input
def test_empty_sequence(gru):
    model, params = gru
    with pytest.raises(ValueError, match=r"x is empty: shape \(0,\)"):
        probseq.log_prob(model, params, np.zeros((0,), int))
    with pytest.raises(ValueError, match=r"x is empty: shape \(3, 0\)"):
        probseq.log_prob(model, params, np.zeros((3, 0), int))


def test_empty_sequence_in_list(gru):
    model, params = gru
    with pytest.raises(ValueError, match=r"x\[1\] is an empty sequence"):
        probseq.log_prob(model, params, [np.array([1, 2]), np.array([], int)])
    with pytest.raises(ValueError, match="x is an empty list"):
        probseq.log_prob(model, params, [])


def test_all_masked_row_is_empty(gru):
    model, params = gru
    mask = np.array([[True, True], [False, False]])
    with pytest.raises(ValueError, match=r"mask row \(1,\) has no valid step"):
        probseq.log_prob(model, params, np.zeros((2, 2), int), mask)


# ------------------------------------------------------------------ masks
def test_mask_shape_mismatch(gru):
    model, params = gru
    with pytest.raises(
        ValueError, match=r"mask has shape \(2, 3\), but x has batch and time shape \(2, 4\)"
    ):
        probseq.log_prob(model, params, np.zeros((2, 4), int), np.ones((2, 3), bool))


def test_mask_with_hole(gru):
    model, params = gru
    mask = np.array([[1, 1, 1, 1], [1, 0, 1, 0]])
    with pytest.raises(
        ValueError, match=r"mask row \(1,\) has a valid step at t=2 after a masked step"
    ):
        probseq.log_prob(model, params, np.zeros((2, 4), int), mask)


def test_mask_non_binary(gru):
    model, params = gru
    with pytest.raises(ValueError, match=r"mask must be boolean or 0/1; got 2 at index \(0, 1\)"):
        probseq.log_prob(model, params, np.zeros((1, 3), int), np.array([[1, 2, 0]]))


def test_mask_with_list_input(gru):
    model, params = gru
    with pytest.raises(ValueError, match="list of sequences.*pass mask=None"):
        probseq.log_prob(model, params, [np.array([1])], np.ones((1, 1), bool))


# ------------------------------------------------------------------ params
def test_params_of_another_model(gru, hmm):
    model, _ = gru
    _, hmm_params = hmm
    with pytest.raises(
        ValueError, match=r"params does not belong to GRU\(vocab_size=5, hidden_size=4\)"
    ):
        probseq.log_prob(model, hmm_params, np.zeros(3, int))


def test_params_wrong_shape(hmm):
    model, params = hmm
    other = probseq.CategoricalHMM(3, 6).init(jax.random.key(0))
    with pytest.raises(
        ValueError, match=r"params\.emission\['logits'\] has shape \(3, 6\).*expects \(3, 5\)"
    ):
        probseq.log_prob(model, other, np.zeros(3, int))


def test_params_missing_leaf(gru):
    model, params = gru
    broken = {k: v for k, v in params.items() if k != "embed"}
    with pytest.raises(ValueError, match=r"missing params\['embed'\]"):
        probseq.log_prob(model, broken, np.zeros(3, int))


def test_params_nan(gru):
    model, params = gru
    broken = jax.tree.map(lambda a: a, params)
    broken["head"] = dict(broken["head"], bias=broken["head"]["bias"].at[2].set(jnp.nan))
    with pytest.raises(
        ValueError, match=r"params\['head'\]\['bias'\] has a non-finite value at index \(2,\)"
    ):
        probseq.log_prob(model, broken, np.zeros(3, int))


def test_hmm_structural_zeros_allowed(hmm):
    model, _ = hmm
    a = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 1.0]])
    params = model.init(jax.random.key(0), transition_matrix=a)
    assert np.isfinite(probseq.log_prob(model, params, np.array([0, 1, 2])))


# ------------------------------------------------------------------ other arguments
def test_bad_key(gru):
    model, params = gru
    with pytest.raises(ValueError, match="key must be a single PRNG key"):
        probseq.sample(model, params, 0, 3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_timesteps=0), "num_timesteps must be a positive int"),
        (dict(num_timesteps=3, num_samples=0), "num_samples must be None or a positive int"),
        (dict(num_timesteps=3, temperature=-1.0), "temperature must be a finite number >= 0"),
    ],
)
def test_bad_sample_arguments(gru, kwargs, message):
    model, params = gru
    with pytest.raises(ValueError, match=message):
        probseq.sample(model, params, jax.random.key(0), **kwargs)


def test_inputs_required_and_forbidden(gru):
    model, params = gru
    with pytest.raises(ValueError, match="takes no conditioning inputs"):
        probseq.log_prob(model, params, np.zeros(3, int), inputs=np.zeros((3, 2)))
    cond = probseq.GRU(vocab_size=5, hidden_size=4, input_dim=2)
    cparams = cond.init(jax.random.key(0))
    with pytest.raises(ValueError, match="conditioned on inputs of size input_dim=2"):
        probseq.log_prob(cond, cparams, np.zeros(3, int))
    with pytest.raises(ValueError, match=r"inputs must have shape \(3, 2\).*got \(4, 2\)"):
        probseq.log_prob(cond, cparams, np.zeros(3, int), inputs=np.zeros((4, 2)))


def test_initial_state_shape(gru):
    model, params = gru
    state = probseq.score(model, params, np.zeros((2, 3), int)).final_state
    with pytest.raises(ValueError, match=r"initial_state.*has shape \(2, 4\), expected \(4,\)"):
        probseq.log_prob(model, params, np.zeros(3, int), initial_state=state)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: probseq.GRU(hidden_size=4), "exactly one of vocab_size="),
        (lambda: probseq.GRU(vocab_size=5, obs_dim=2), "exactly one of vocab_size="),
        (lambda: probseq.LSTM(vocab_size=1), r"vocab_size must be an int >= 2"),
        (lambda: probseq.RNN(vocab_size=5, hidden_size=0), "hidden_size must be a positive int"),
        (lambda: probseq.LRU(vocab_size=5, r_min=0.9, r_max=0.5), "need 0 <= r_min < r_max <= 1"),
        (lambda: probseq.CategoricalHMM(0, 5), "num_states must be a positive int"),
    ],
)
def test_bad_configuration(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_hmm_init_rejects_bad_probabilities(hmm):
    model, _ = hmm
    with pytest.raises(ValueError, match=r"transition_matrix row \(1,\) must sum to 1"):
        model.init(
            jax.random.key(0), transition_matrix=np.array([[1, 0, 0], [0.5, 0.6, 0], [0, 0, 1.0]])
        )
    with pytest.raises(ValueError, match=r"emission_probs must have shape \(3, 5\)"):
        model.init(jax.random.key(0), emission_probs=np.full((3, 4), 0.25))
    with pytest.raises(ValueError, match="finite probabilities >= 0"):
        model.init(jax.random.key(0), initial_probs=np.array([1.5, -0.5, 0.0]))


# ------------------------------------------------------------------ shared argument checks
from probseq import validation  # noqa: E402


def test_check_int_accepts_numpy_integers_and_rejects_bools_and_floats():
    for v in (3, np.int64(3), np.int32(3), np.uint8(3)):
        out = validation.check_int("num_states", v)
        assert out == 3 and type(out) is int
    assert validation.check_int("seed", np.int64(0), minimum=0) == 0
    assert validation.check_int("bptt_length", None, allow_none=True) is None
    cases = [
        (dict(value=True), "num_states must be a positive int, got num_states=True"),
        (dict(value=np.bool_(True)), "num_states must be a positive int"),
        (dict(value=3.0), "num_states must be a positive int, got num_states=3.0"),
        (dict(value="3"), "num_states must be a positive int, got num_states='3'"),
        (dict(value=0), "num_states must be a positive int, got num_states=0"),
        (dict(value=np.int64(-1)), r"got num_states=np.int64\(-1\)"),
        (dict(value=None), "num_states must be a positive int, got num_states=None"),
        (dict(value=-1, minimum=0), "num_states must be a non-negative int, got num_states=-1"),
        (dict(value=1, minimum=2), "num_states must be an int >= 2, got num_states=1"),
        (dict(value=0, allow_none=True), "num_states must be None or a positive int"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            validation.check_int("num_states", **kwargs)


def test_check_floats_and_choices():
    assert validation.check_positive_float("learning_rate", np.float32(0.5)) == 0.5
    assert validation.check_nonnegative_float("tol", 0) == 0.0
    for bad in (0, -1.0, float("nan"), float("inf"), True, "1", None):
        with pytest.raises(ValueError, match=r"learning_rate must be a finite number > 0, got"):
            validation.check_positive_float("learning_rate", bad)
    with pytest.raises(ValueError, match=r"tol must be a finite number >= 0, got tol=-1e-09"):
        validation.check_nonnegative_float("tol", -1e-9)
    assert validation.check_choice("scan", "auto", probseq.scan.SCAN_MODES) == "auto"
    for bad in ("Auto", None, ["auto"], np.array(["auto"])):
        with pytest.raises(ValueError, match=r"scan must be one of \('auto', 'sequential'"):
            validation.check_choice("scan", bad, probseq.scan.SCAN_MODES)


def test_check_stochastic_is_the_one_hmm_uses():
    from probseq.families import hmm as hmm_module

    assert hmm_module._check_stochastic is validation.check_stochastic
    a = validation.check_stochastic("transition_matrix", [[0.5, 0.5], [0.0, 1.0]], (2, 2))
    assert a.dtype == np.float64
    with pytest.raises(ValueError, match=r"transition_matrix row \(0,\) must sum to 1"):
        validation.check_stochastic("transition_matrix", [[0.5, 0.6], [0.0, 1.0]], (2, 2))
    with pytest.raises(ValueError, match="initial_probs must be an array of probabilities"):
        validation.check_stochastic("initial_probs", ["a", "b"], (2,))


def _np_int_calls():
    i = np.int64
    gru = probseq.GRU(vocab_size=i(5), hidden_size=i(4), num_layers=i(1), embed_size=i(3))
    params = gru.init(jax.random.key(0))
    hmm = probseq.CategoricalHMM(i(2), i(5))
    hparams = hmm.init(jax.random.key(0))
    x = np.array([[0, 1, 2, 3]])
    return {
        "model_sizes": lambda: gru,
        "lru_state_size": lambda: probseq.LRU(obs_dim=i(2), hidden_size=i(4), state_size=i(3)),
        "input_dim": lambda: probseq.RNN(vocab_size=5, hidden_size=4, input_dim=i(2)),
        "mixture_head": lambda: probseq.heads.MixtureNormalHead(i(2), i(3)),
        "sample": lambda: probseq.sample(gru, params, jax.random.key(1), i(3), num_samples=i(2)),
        "hmm_sample_states": lambda: hmm.sample_states(
            hparams, jax.random.key(1), x, num_samples=i(2)
        ),
        "forecast": lambda: probseq.forecast(
            gru, params, jax.random.key(2), x[0], horizon=i(2), num_samples=i(3)
        ),
        "fit_em": lambda: probseq.fit_em(hmm, hparams, x, num_iters=i(2), num_restarts=i(1)),
        "casino": lambda: probseq.data.casino(i(0), num_sequences=i(1), num_timesteps=i(5)),
        "text_splits": lambda: probseq.data.text_splits(
            "abcdefghij", sequence_length=i(3), fractions=(0.6, 0.2, 0.2)
        ),
    }


_NP_INT_CASES = (
    "model_sizes lru_state_size input_dim mixture_head sample hmm_sample_states forecast fit_em "
    "casino text_splits"
).split()


@pytest.mark.parametrize("what", _NP_INT_CASES)
def test_numpy_integer_sizes_are_accepted_everywhere(what):
    result = _np_int_calls()[what]()
    if what in ("model_sizes", "lru_state_size", "input_dim", "mixture_head"):
        # Stored as Python ints, so a model's repr and saved spec are the same either way.
        import dataclasses

        for f in dataclasses.fields(result):
            v = getattr(result, f.name)
            assert not isinstance(v, np.integer), (f.name, type(v))


def test_sample_and_distribution_share_the_inputs_check():
    cond = probseq.GRU(vocab_size=5, hidden_size=4, input_dim=2)
    params = cond.init(jax.random.key(0))
    key = jax.random.key(1)
    from probseq.distribution import SequenceDistribution

    with pytest.raises(ValueError, match=r"needs future inputs of shape \(3, 2\)"):
        probseq.sample(cond, params, key, 3)
    with pytest.raises(ValueError, match=r"inputs must have shape \(3, 2\) for sampling; got"):
        probseq.sample(cond, params, key, 3, inputs=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="inputs must hold real numbers; got dtype <U1"):
        probseq.sample(cond, params, key, 3, inputs=np.full((3, 2), "a"))
    plain = probseq.GRU(vocab_size=5, hidden_size=4)
    pparams = plain.init(jax.random.key(0))
    unconditional = [
        lambda: probseq.sample(plain, pparams, key, 3, inputs=np.zeros((3, 1))),
        lambda: probseq.log_prob(plain, pparams, np.zeros(3, int), inputs=np.zeros((3, 1))),
        lambda: SequenceDistribution(plain, pparams, 3, inputs=np.zeros((3, 1))),
    ]
    for call in unconditional:  # one message, whichever entry point
        with pytest.raises(ValueError, match=r"takes no conditioning inputs \(input_dim=0\); got"):
            call()


def test_no_copies_of_the_positive_int_check_remain():
    """The static checks live in validation.py only; the package reuses them."""
    import pathlib

    root = pathlib.Path(probseq.__file__).parent
    copies = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if p.name != "validation.py"
        and ("must be a positive int" in p.read_text() or "must be an int >=" in p.read_text())
    ]
    assert copies == []


def test_spec_uses_the_fitters_own_choices():
    from probseq import spec

    base = {"data": {"kind": "text"}, "model": {"family": "hmm", "num_states": 2}}
    for estep in probseq.fit.em.ESTEPS:  # "chunked" was refused
        s = spec.parse_spec({**base, "fit": {"method": "em", "estep": estep}})
        assert s.fit["estep"] == estep
    for family in ("mingru", "lru"):
        for mode in probseq.scan.SCAN_MODES:
            model = {"family": family, "hidden_size": 4, "scan": mode}
            spec.parse_spec({"data": {"kind": "text"}, "model": model, "fit": {"method": "sgd"}})
    with pytest.raises(spec.SpecError, match="estep must be one of 'auto', 'autodiff'"):
        spec.parse_spec({**base, "fit": {"method": "em", "estep": "viterbi"}})


def test_readme_names_the_estep_default():
    import inspect
    import pathlib

    default = inspect.signature(probseq.fit_em).parameters["estep"].default
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    assert f'The default, `estep="{default}"`' in readme
    assert '`estep="forward_backward"`, the default' not in readme
