"""Model families: one short file each, all meeting the contract in probseq.core.

Each family file ends with its ``SPEC`` (a :class:`probseq.families.registry.FamilySpec`:
its model-spec keys, their checks and its constructor); :data:`FAMILY_SPECS` lists them
in the order messages show them.
"""

from probseq.families import ar, gru, hmm, lds, lru, lstm, mamba, mingru, minlstm, rnn, s5
from probseq.families.ar import AR, ARState
from probseq.families.gru import GRU
from probseq.families.hmm import HMM, CategoricalHMM, GaussianHMM, HMMParams
from probseq.families.hmm_zoo import BernoulliHMM, GaussianMixtureHMM, PoissonHMM
from probseq.families.lds import LDS, LDSState
from probseq.families.lru import LRU
from probseq.families.lstm import LSTM
from probseq.families.mamba import Mamba, MambaCarry
from probseq.families.mingru import MinGRU
from probseq.families.minlstm import MinLSTM
from probseq.families.recurrent import RecurrentNetwork, RecurrentState
from probseq.families.registry import FamilySpec, register, registered
from probseq.families.rnn import RNN
from probseq.families.s5 import S5

for _family in (rnn, lstm, gru, mingru, minlstm, lru, s5, mamba, hmm, ar, lds):
    register(_family.SPEC)

#: Every family a model spec can name, by name (families registered later appear too).
FAMILY_SPECS = registered()

__all__ = [
    "RNN",
    "LSTM",
    "GRU",
    "MinGRU",
    "MinLSTM",
    "LRU",
    "S5",
    "Mamba",
    "MambaCarry",
    "HMM",
    "CategoricalHMM",
    "GaussianHMM",
    "PoissonHMM",
    "BernoulliHMM",
    "GaussianMixtureHMM",
    "HMMParams",
    "AR",
    "ARState",
    "LDS",
    "LDSState",
    "RecurrentNetwork",
    "RecurrentState",
    "FamilySpec",
    "FAMILY_SPECS",
    "register",
]
