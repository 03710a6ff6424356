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
