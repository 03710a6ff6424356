"""Forecasting a real series with a Gaussian HMM and an LSTM.

Yearly sunspot numbers 1700-2008 (statsmodels ships them: ``pip install
'probseq[series]'``). The series is split in time (80/10/10), standardised with
the training part's mean and scale, and fitted twice: a Gaussian HMM by EM and an
LSTM with a Normal head by SGD. Both are compared on the held-out years, then
each forecasts the test years from everything before them: the mean path, the
90% band and how often the band holds the truth.

    python examples/forecast_series.py [--series sunspots] [--plot fan.png]
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

import probseq
from probseq import data


def run(args) -> dict:
    series = data.series(args.series)
    print(f"{series.name}: {series.description}")
    splits = data.series_splits(series.values, fractions=(0.8, 0.1, 0.1))
    train, valid, test = splits.train, splits.valid, splits.test
    n_hist = train.x.shape[1] + valid.x.shape[1]
    history = np.concatenate([train.x[0], valid.x[0]])  # standardised, (T, 1)
    horizon = min(args.horizon, test.x.shape[1])
    truth = splits.scaler.inverse(test.x[0, :horizon])

    hmm = probseq.GaussianHMM(num_states=args.num_states, obs_dim=1)
    hmm_fit = probseq.fit_em(hmm, hmm.init(jax.random.key(args.seed)), train.x,
                             num_iters=args.em_iters, tol=1e-6)  # fmt: skip
    lstm = probseq.LSTM(obs_dim=1, hidden_size=args.hidden_size)
    lstm_fit = probseq.fit_sgd(
        lstm, lstm.init(jax.random.key(args.seed)), train.x, key=jax.random.key(args.seed + 1),
        num_epochs=args.sgd_epochs, batch_size=1, learning_rate=1e-2,
        valid_data=valid.x, patience=max(args.sgd_epochs // 10, 1), progress=False,
    )  # fmt: skip
    models = {"gaussian_hmm": (hmm, hmm_fit.params), "lstm": (lstm, lstm_fit.params)}

    # Held-out score: continue each model from its state after the training years.
    # The models see standardised values; log|det J| per step maps their density back
    # to the series' own units.
    print(f"\nheld-out log-likelihood of the {valid.x.shape[1]} validation years "
          "(nats/year, in the series' own units)")  # fmt: skip
    for name, (model, params) in models.items():
        state = probseq.score(model, params, train.x[0]).final_state
        lp = probseq.log_prob(model, params, valid.x[0], initial_state=state)
        per_year = float(lp) / valid.x.shape[1] - splits.scaler.log_abs_det_jacobian
        print(f"  {name:>12}: {per_year:.3f}")

    results = {}
    levels = (0.05, 0.5, 0.95)
    print(f"\nforecast of {horizon} years after {n_hist} years of history (original units)")
    for i, (name, (model, params)) in enumerate(models.items()):
        fc = probseq.forecast(model, params, jax.random.key(100 + i), history, horizon,
                              args.num_samples, quantiles=levels)  # fmt: skip
        lo, mid, hi = splits.scaler.inverse(fc.quantiles)
        mean = splits.scaler.inverse(fc.mean)
        covered = float(np.mean((truth >= lo) & (truth <= hi)))
        mae = float(np.mean(np.abs(mean - truth)))
        results[name] = {"coverage_90": covered, "mae": mae}
        print(f"  {name:>12}: mean abs error {mae:.1f}, 90% band holds {covered:.0%} of years")
        for h in range(min(horizon, 5)):
            print(f"      year +{h + 1}: truth {truth[h, 0]:7.1f}  median {mid[h, 0]:7.1f}  "
                  f"90% [{lo[h, 0]:7.1f}, {hi[h, 0]:7.1f}]")  # fmt: skip
        if args.plot and name == "lstm":
            from probseq import plots

            shown = fc._replace(
                samples=splits.scaler.inverse(fc.samples), mean=mean,
                quantiles=np.stack([lo, mid, hi]),
            )  # fmt: skip
            fig = plots.plot_forecast(
                series.values[:n_hist], shown, time=series.index[: n_hist + horizon]
            )
            plots.save_figure(fig, args.plot)
            print(f"wrote {args.plot}")
    return results


# What tests/test_api.py runs: the whole script in a few seconds.
TINY_ARGS = ["--em-iters", "3", "--sgd-epochs", "2", "--hidden-size", "4", "--num-samples", "20",
             "--horizon", "5"]  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", default="sunspots", choices=data.series_names())
    parser.add_argument("--num-states", type=int, default=4)
    parser.add_argument("--hidden-size", type=int, default=32)
    parser.add_argument("--em-iters", type=int, default=300)
    parser.add_argument("--sgd-epochs", type=int, default=300)
    parser.add_argument("--horizon", type=int, default=30)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", help="write the LSTM's forecast fan to this image file")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
