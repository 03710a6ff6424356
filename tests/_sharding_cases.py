"""Run by tests/test_sharding.py in a process with 8 CPU devices (XLA_FLAGS set before
JAX starts): every call on 1, 2, 4 and 8 devices vs one device. Prints one JSON line."""

import json
import sys

import jax
import numpy as np

import probseq
from probseq.sharding import mesh_of


def main():
    assert jax.device_count() == 8, jax.device_count()
    rng = np.random.default_rng(0)
    out = {}
    cat = probseq.CategoricalHMM(3, 5)
    cat_p = cat.init(jax.random.key(0))
    gauss = probseq.GaussianHMM(2, 2)
    gauss_p = gauss.init(jax.random.key(1))
    lstm = probseq.LSTM(vocab_size=5, hidden_size=8)
    lstm_p = lstm.init(jax.random.key(2))
    tokens = [rng.integers(0, 5, size=n) for n in (40, 13, 7, 40, 1, 22, 31)]  # B = 7
    reals = [rng.normal(size=(n, 2)).astype(np.float32) for n in (30, 11, 30, 5, 17)]  # B = 5
    for n in (1, 2, 4, 8):
        mesh = mesh_of(n)
        row = {}
        for name, (model, params, x) in {
            "cat": (cat, cat_p, tokens),
            "gauss": (gauss, gauss_p, reals),
            "lstm": (lstm, lstm_p, tokens),
        }.items():
            res = probseq.score(model, params, x, mesh=mesh)
            row[f"{name}_log_prob"] = np.asarray(res.log_prob).tolist()
            row[f"{name}_steps"] = np.asarray(res.step_log_probs).tolist()
        fit = probseq.fit_em(cat, cat_p, tokens, num_iters=10, tol=0.0, mesh=mesh)
        row["em_params"] = [np.asarray(a).tolist() for a in jax.tree.leaves(fit.params)]
        row["em_history"] = np.asarray(fit.history["log_likelihood"]).tolist()
        fit = probseq.fit_em(gauss, gauss_p, reals, num_iters=10, tol=0.0, mesh=mesh)
        row["gauss_em_params"] = [np.asarray(a).tolist() for a in jax.tree.leaves(fit.params)]
        fit = probseq.fit_sgd(
            lstm,
            lstm_p,
            tokens,
            key=jax.random.key(3),
            num_epochs=3,
            batch_size=5,
            bptt_length=16,
            valid_data=tokens[:3],
            progress=False,
            mesh=mesh,
        )
        row["sgd_params"] = [np.asarray(a).tolist() for a in jax.tree.leaves(fit.params)]
        row["sgd_valid"] = np.asarray(fit.history["valid_log_likelihood_per_token"]).tolist()
        table = probseq.compare({"cat": (cat, cat_p), "lstm": (lstm, lstm_p)}, tokens, mesh=mesh)
        row["compare"] = [float(r.log_likelihood) for r in table.rows]
        out[n] = row
    baseline = {
        "cat_log_prob": np.asarray(probseq.log_prob(cat, cat_p, tokens)).tolist(),
        "em_params": [
            np.asarray(a).tolist()
            for a in jax.tree.leaves(
                probseq.fit_em(cat, cat_p, tokens, num_iters=10, tol=0.0).params
            )
        ],
    }
    json.dump({"meshes": out, "baseline": baseline}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
