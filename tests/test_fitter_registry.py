"""A fitter registered from this file alone (no edit to spec.py, result.py or the CLI)
fits from Python, from a spec and from the command line (issue 19): full-batch gradient
ascent on the exact log-likelihood, written as an (update, done) pair on the driver.
Also: the built-in fitters are registered with the keys and defaults specs had before."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import probseq
from probseq import cli, io, spec, workflow
from probseq.families.registry import POSITIVE_INT, POSITIVE_NUMBER
from probseq.fit import driver
from probseq.fit import registry as fitters
from probseq.fit.result import FitHistory, FitResult


def fit_toy_gd(model, params, x, *, mask=None, num_steps=20, step_size=0.05):
    """Gradient ascent on the mean log-likelihood per step, every sequence at once."""
    batch = probseq.validation.prepare_batch(model, x, mask, None)
    count = jnp.sum(batch.mask)

    def update(p, data):
        x, m = data
        value, grad = jax.value_and_grad(
            lambda q: jnp.sum(probseq.log_prob(model, q, x, mask=m)) / count
        )(p)
        new = jax.tree.map(lambda a, g: a + step_size * g, p, grad)
        return new, {"log_likelihood": value * count}

    out = driver.run(update, lambda p: jnp.array(False), params, (batch.x, batch.mask),
                     num_steps=num_steps, steps_per_call=8, name="_toy_gd_steps")  # fmt: skip
    lls = out.metrics["log_likelihood"]
    history = FitHistory.from_totals("fit_toy_gd", log_likelihood=lls, num_tokens=int(count))
    return FitResult(out.state, history, {"method": "toy_gd"})


def _from_spec(s, model, params, train, valid, *, progress, checkpoint_dir, mesh):
    settings = {k: v for k, v in s.fit.items() if k != "method"}
    return fit_toy_gd(model, params, train.x, mask=train.mask, **settings)


TOY = fitters.FitterSpec(
    name="toy_gd",
    function="fit_toy_gd",
    keys={"num_steps": POSITIVE_INT, "step_size": POSITIVE_NUMBER},
    defaults={"num_steps": 20},
    fit=_from_spec,
    families=("hmm",),
)
SPEC = {
    "seed": 1,
    "data": {"kind": "text", "sequence_length": 30},
    "model": {"family": "hmm", "num_states": 3},
    "fit": {"method": "toy_gd", "num_steps": 24, "step_size": 0.5},
}
TEXT = "the cat sat on the mat and the dog sat on the log. " * 12


@pytest.fixture
def toy():
    fitters.register(TOY)
    yield TOY
    fitters.unregister("toy_gd")  # other tests in this process see the built-ins only


def test_built_in_fitters_are_registered_with_their_keys_and_defaults():
    reg = fitters.registered()
    assert list(reg)[:3] == ["sgd", "em", "ls"]
    assert [reg[n].function for n in ("sgd", "em", "ls")] == ["fit_sgd", "fit_em", "fit_ls"]
    assert dict(reg["sgd"].defaults) == {"num_epochs": 1, "batch_size": 32}
    assert dict(reg["em"].defaults) == {"num_iters": 100}
    assert set(reg["em"].keys) == {"num_iters", "tol", "num_restarts", "prior", "estep"}
    with pytest.raises(ValueError, match="not a registered fitter that can be removed"):
        fitters.unregister("sgd")


def test_a_toy_fitter_fits_from_python(toy):
    hmm = probseq.CategoricalHMM(3, 5)
    x = np.random.default_rng(0).integers(0, 5, size=(8, 20))
    fit = fit_toy_gd(hmm, hmm.init(jax.random.key(0)), x, num_steps=20, step_size=0.5)
    ll = fit.history.log_likelihood
    assert fit.history.fitter == "fit_toy_gd" and len(ll) == 20  # two calls of 8, then 4
    assert ll[-1] > ll[0]
    np.testing.assert_allclose(  # the last row is the likelihood before the last step
        float(jnp.sum(probseq.log_prob(hmm, fit.params, x))), ll[-1], rtol=1e-2
    )


def test_a_toy_fitter_fits_from_a_spec_and_the_cli(toy, tmp_path):
    s = spec.parse_spec(SPEC)
    assert s.fit == {"num_steps": 24, "method": "toy_gd", "step_size": 0.5}
    run = workflow.fit_spec(s, workflow.Source("text", text=TEXT, origin="cats"), progress=False)
    assert run.history.fitter == "fit_toy_gd" and len(run.history.log_likelihood) == 24
    assert run.history.log_likelihood[-1] > run.history.log_likelihood[0]
    io.save_run(run, tmp_path / "py")
    assert io.load(tmp_path / "py").history.fitter == "fit_toy_gd"
    (tmp_path / "toy.toml").write_text(
        '[data]\nkind = "text"\nsequence_length = 30\n[model]\nfamily = "hmm"\n'
        'num_states = 3\n[fit]\nmethod = "toy_gd"\nnum_steps = 10\n'
    )
    (tmp_path / "cats.txt").write_text(TEXT)
    argv = ["fit", str(tmp_path / "toy.toml"), "--data", str(tmp_path / "cats.txt"),
            "--out", str(tmp_path / "cli"), "--quiet"]  # fmt: skip
    assert cli.main(argv) == 0
    assert len(io.load(tmp_path / "cli").history.log_likelihood) == 10


def test_a_toy_fitter_is_checked_like_the_built_ins(toy):
    with pytest.raises(spec.SpecError, match="unknown key 'epochs'"):
        spec.parse_spec({**SPEC, "fit": {"method": "toy_gd", "epochs": 3}})
    lstm = {**SPEC, "model": {"family": "lstm"}}
    with pytest.raises(spec.SpecError, match="method = 'toy_gd' fits family = 'hmm' only"):
        spec.parse_spec(lstm)
    with pytest.raises(ValueError, match="clashes"):
        fitters.register(TOY._replace(function="fit_sgd", name="other"))
    with pytest.raises(ValueError, match="defaults"):
        fitters.register(TOY._replace(name="bad", function="fit_bad", defaults={"x": 1}))


def test_after_unregistering_the_method_is_unknown():
    with pytest.raises(spec.SpecError, match="method must be 'sgd', 'em' or 'ls'"):
        spec.parse_spec(SPEC)
