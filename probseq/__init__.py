"""probseq: probabilistic sequence models on JAX, one autoregressive likelihood API.

RNNs, LSTMs, GRUs, MinGRUs, LRUs and hidden Markov models are all distributions
p(x_{1:T}) = prod_t p(x_t | h_t) with a fixed-size state h_t; the same functions
score, filter and sample every one of them.

Importing probseq changes no global JAX setting and builds nothing.
"""

from probseq import (
    auto,
    conditional,
    data,
    decoding,
    diagnostics,
    heads,
    hmm_inference,
    plots,
    scan,
    sharding,
    spec,
)
from probseq.compare import Comparison, compare
from probseq.conditional import (
    Encoder,
    OneToMany,
    ScheduledSampling,
    Seq2Seq,
    SequenceClassifier,
    SequenceTagger,
)
from probseq.core import (
    ScoreResult,
    SequenceModel,
    log_prob,
    sample,
    score,
    step_log_probs,
)
from probseq.distribution import SequenceDistribution
from probseq.families import (
    AR,
    GRU,
    HMM,
    LDS,
    LRU,
    LSTM,
    RNN,
    S5,
    BernoulliHMM,
    CategoricalHMM,
    GaussianHMM,
    GaussianMixtureHMM,
    HMMParams,
    Mamba,
    MinGRU,
    MinLSTM,
    PoissonHMM,
    RecurrentState,
)
from probseq.fit import (
    DirichletPrior,
    FitHistory,
    FitResult,
    NonFiniteLossError,
    SGDState,
    em_step,
    fit_em,
    fit_lds_em,
    fit_ls,
    fit_sgd,
    sgd_init,
    sgd_update,
)
from probseq.forecast import Forecast, forecast
from probseq.inference_data import to_inference_data
from probseq.io import Run, load, save_run
from probseq.padding import pad_sequences

__version__ = "0.1.0"

__all__ = [
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
    "AR",
    "LDS",
    "RecurrentState",
    "fit_sgd",
    "NonFiniteLossError",
    "fit_em",
    "fit_ls",
    "fit_lds_em",
    "em_step",
    "sgd_init",
    "sgd_update",
    "SGDState",
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
    "data",
    "diagnostics",
    "heads",
    "hmm_inference",
    "plots",
    "scan",
    "sharding",
    "auto",
    "spec",
    "Seq2Seq",
    "Encoder",
    "OneToMany",
    "SequenceClassifier",
    "SequenceTagger",
    "ScheduledSampling",
    "conditional",
    "decoding",
]
