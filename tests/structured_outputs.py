"""Small CNNs that return their outputs in every structure a model may use: the tests build
them by import path (``structured_outputs:heads``) as users build their own models."""

import dataclasses
from collections import namedtuple
from typing import Optional

import torch
import torch.nn as nn

KINDS = ("tuple", "list", "dict", "namedtuple", "dataclass", "nested")
Pair = namedtuple("Pair", ["logits", "features"])


@dataclasses.dataclass
class Output:
    """A ``ModelOutput``-like dataclass: fields left ``None`` are not outputs."""

    logits: torch.Tensor
    hidden: Optional[torch.Tensor] = None
    features: Optional[torch.Tensor] = None


class Heads(nn.Module):
    """A conv trunk with a classifier and a feature head, returned as ``kind``."""

    def __init__(self, kind: str = "dict", num_classes: int = 5):
        super().__init__()
        self.kind = kind
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Conv2d(32, 8, 1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        f = self.body(self.stem(x))
        logits, feat = self.fc(f.mean((2, 3))), self.head(f)
        return {
            "tuple": lambda: (logits, feat),
            "list": lambda: [logits, feat],
            "dict": lambda: {"out": feat, "aux": logits},
            "namedtuple": lambda: Pair(logits, feat),
            "dataclass": lambda: Output(logits=logits, features=feat),
            "nested": lambda: (logits, {"maps": [feat, self.stem(x)], "none": None}),
            "count": lambda: {"out": feat, "count": 3},  # an int among the outputs: no export writes it
            "batch1": lambda: feat.reshape(int(x.shape[0]), -1),  # a trace keeps the example's batch here
        }[self.kind]()


def heads(kind: str = "dict", num_classes: int = 5) -> Heads:
    return Heads(kind, num_classes)
