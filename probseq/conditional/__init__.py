"""Conditional sequence models p(y | source): encoders, encoder-decoders with attention,
and the one-to-many, many-to-one and aligned many-to-many patterns, all in probseq's
contract (their first state comes from the source; see
:meth:`probseq.core.SequenceModel.source_state`), plus scheduled sampling."""

from probseq.conditional.encoder import Encoder, EncoderOutput, reverse_valid
from probseq.conditional.patterns import (
    OneToMany,
    SequenceClassifier,
    SequenceTagger,
    TaggerState,
)
from probseq.conditional.scheduled import ScheduledSampling, scheduled_log_probs
from probseq.conditional.seq2seq import Seq2Seq, Seq2SeqState, masked_softmax

__all__ = [
    "Encoder",
    "EncoderOutput",
    "reverse_valid",
    "Seq2Seq",
    "Seq2SeqState",
    "masked_softmax",
    "OneToMany",
    "SequenceClassifier",
    "SequenceTagger",
    "TaggerState",
    "ScheduledSampling",
    "scheduled_log_probs",
]
