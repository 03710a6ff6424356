"""The public surface: names, import hygiene, example scripts."""

import pathlib
import runpy
import subprocess
import sys

import pytest
from jax_logs import compiled_messages

import probseq

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_public_names_are_pinned():
    assert sorted(probseq.__all__) == sorted(
        [
            "SequenceModel",
            "ScoreResult",
            "score",
            "log_prob",
            "step_log_probs",
            "sample",
            "pad_sequences",
            "RNN",
            "LSTM",
            "GRU",
            "MinGRU",
            "MinLSTM",
            "AR",
            "fit_ls",
            "LDS",
            "fit_lds_em",
            "LRU",
            "S5",
            "Mamba",
            "HMM",
            "CategoricalHMM",
            "GaussianHMM",
            "PoissonHMM",
            "BernoulliHMM",
            "GaussianMixtureHMM",
            "HMMParams",
            "RecurrentState",
            "heads",
            "hmm_inference",
            "scan",
            "fit_sgd",
            "NonFiniteLossError",
            "data",
            "fit_em",
            "FitResult",
            "FitHistory",
            "DirichletPrior",
            "forecast",
            "Forecast",
            "compare",
            "Comparison",
            "SequenceDistribution",
            "to_inference_data",
            "load",
            "save_run",
            "Run",
            "plots",
            "diagnostics",
            "spec",
            "auto",
            "sharding",
            "em_step",
            "sgd_init",
            "sgd_update",
            "SGDState",
            "Seq2Seq",
            "Encoder",
            "OneToMany",
            "SequenceClassifier",
            "SequenceTagger",
            "ScheduledSampling",
            "conditional",
            "decoding",
        ]
    )
    for name in probseq.__all__:
        assert hasattr(probseq, name), name


def test_import_changes_no_global_jax_setting():
    code = (
        "import jax\n"
        "before = {k: getattr(jax.config, k) for k in ('jax_enable_x64', 'jax_platforms', "
        "'jax_default_matmul_precision', 'jax_debug_nans')}\n"
        "import probseq\n"
        "after = {k: getattr(jax.config, k) for k in before}\n"
        "assert before == after, (before, after)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_models_are_hashable_static_configuration():
    a = probseq.LSTM(vocab_size=5, hidden_size=8)
    b = probseq.LSTM(vocab_size=5, hidden_size=8)
    assert a == b and hash(a) == hash(b)
    assert probseq.CategoricalHMM(2, 3) == probseq.CategoricalHMM(2, 3)
    assert repr(probseq.LRU(obs_dim=2, hidden_size=4)) == "LRU(obs_dim=2, hidden_size=4)"


def test_second_call_does_not_recompile():
    import jax
    import numpy as np

    model = probseq.GRU(vocab_size=5, hidden_size=4)
    params = model.init(jax.random.key(0))
    x = np.zeros((2, 6), int)
    probseq.log_prob(model, params, x)
    other = model.init(jax.random.key(1))
    with compiled_messages() as compiled:
        probseq.log_prob(model, other, x + 1)
    assert not compiled


@pytest.mark.parametrize("script", sorted((ROOT / "examples").glob("*.py")), ids=lambda p: p.name)
def test_example_runs_with_tiny_arguments(script, capsys):
    """Every example defines ``TINY_ARGS`` (a few seconds' worth) and ``main(argv)``."""
    module = runpy.run_path(str(script), run_name="example")
    assert "TINY_ARGS" in module, f"examples/{script.name} must define TINY_ARGS"
    module["main"](list(module["TINY_ARGS"]))
    assert capsys.readouterr().out.strip()


def test_usable_inside_user_jit_and_grad():
    """Traced x / params skip the value checks but keep the shape checks."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    model = probseq.LSTM(vocab_size=5, hidden_size=4)
    params = model.init(jax.random.key(0))
    x = jnp.array([[0, 1, 2], [3, 4, 0]])
    mask = jnp.array([[True, True, True], [True, True, False]])
    eager = probseq.log_prob(model, params, x, mask)
    jitted = jax.jit(lambda p, x, m: probseq.log_prob(model, p, x, m))(params, x, mask)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)
    grads = jax.grad(lambda p: probseq.log_prob(model, p, x, mask).sum())(params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    with pytest.raises(ValueError, match="x must have shape"):
        jax.jit(lambda x: probseq.log_prob(model, params, x))(jnp.zeros((2, 3, 4), int))


def test_one_state_broadcasts_to_a_batch():
    import jax
    import numpy as np

    model = probseq.GRU(vocab_size=5, hidden_size=4)
    params = model.init(jax.random.key(0))
    state = probseq.score(model, params, np.array([1, 2, 3])).final_state
    x = np.array([[0, 1], [4, 4]])
    batch = probseq.step_log_probs(model, params, x, initial_state=state)
    for i in range(2):
        alone = probseq.step_log_probs(model, params, x[i], initial_state=state)
        np.testing.assert_allclose(batch[i], alone, rtol=1e-6)
