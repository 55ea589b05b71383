"""A speech-style recurrent model: bidirectional 2-layer LSTM, a GRU, a per-frame Linear."""

from __future__ import annotations

import torch
from torch import nn

from .spec import InputSpec, ZooEntry, pick


class LstmGru(nn.Module):
    def __init__(self, feats: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(feats, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.gru = nn.GRU(2 * hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(x)
        y, _ = self.gru(y)
        return self.out(y)


RNN = {"small": dict(feats=8, hidden=16, classes=6, seq=10),
       "full": dict(feats=80, hidden=256, classes=32, seq=100)}


def lstm_gru(size: str) -> LstmGru:
    c = pick(RNN, size)
    return LstmGru(c["feats"], c["hidden"], c["classes"])


def rnn_inputs(size: str) -> tuple[InputSpec, ...]:
    c = pick(RNN, size)
    return (InputSpec("features", (1, c["seq"], c["feats"]), axes=((0, "batch"), (1, "sequence"))),)


ENTRIES = [
    ZooEntry("lstm_gru", "rnn", "Bidirectional 2-layer LSTM -> GRU -> Linear over frames",
             lstm_gru, rnn_inputs),
]
