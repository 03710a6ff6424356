"""Model families: one short file each, all meeting the contract in probseq.core."""

from probseq.families.gru import GRU
from probseq.families.hmm import HMM, CategoricalHMM, GaussianHMM, HMMParams
from probseq.families.lru import LRU
from probseq.families.lstm import LSTM
from probseq.families.mingru import MinGRU
from probseq.families.recurrent import RecurrentNetwork, RecurrentState
from probseq.families.rnn import RNN

__all__ = [
    "RNN",
    "LSTM",
    "GRU",
    "MinGRU",
    "LRU",
    "HMM",
    "CategoricalHMM",
    "GaussianHMM",
    "HMMParams",
    "RecurrentNetwork",
    "RecurrentState",
]
