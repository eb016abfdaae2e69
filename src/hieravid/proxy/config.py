"""The proxy's training hyper-parameters, apart from the training (which needs torch): the command line
reads its defaults without loading torch."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    """Hyper-parameters of ``hieravid train-proxy``."""

    steps: int = 3600
    batch: int = 8
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.01
    clip: float = 1.0
    seed: int = 0
    val_size: int = 150
    eval_every: int = 250
    checkpoint_every: int = 25
    hidden: int = 64  # model sizes, see hieravid.proxy.build.build_config
    intermediate: int = 192
    vision_dim: int = 48
    init: float = 0.08  # initial weights' standard deviation
    threads: int = 1  # torch threads; 1 keeps the speed steady when other work shares the cores
    describe: bool = False  # end each conversation with the video's caption (more supervision per video)
    aux_weight: float = 1.0  # weight of the per-token auxiliary heads' loss (hieravid.proxy.labels); 0 = none
    type_weight: float = 1.0  # weight of the question-type head's loss at each answer position; 0 = none
    summary_weight: float = 1.0  # weight of the video-summary heads' loss (<|vision_end|>, answers); 0 = none
    curriculum: int = 0  # steps between unlocking the question types in CURRICULUM order; 0 = all from the start

    def __post_init__(self) -> None:
        for name in ("batch", "val_size", "eval_every", "checkpoint_every"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"{name} must be a whole number of at least 1, got {getattr(self, name)!r}")
        for name in ("steps", "warmup", "curriculum", "threads"):  # threads 0: torch's own choice
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be a whole number of at least 0, got {getattr(self, name)!r}")
        if not (isinstance(self.seed, int) and 0 <= self.seed < 2**63):  # what torch.manual_seed takes
            raise ValueError(f"--seed must be a whole number from 0 to 2**63 - 1, got {self.seed!r}")
        most = max(64, 4 * (os.cpu_count() or 1))  # torch crashes with many thousands, and crawls well before;
        if self.threads > most:  # a few more than the CPUs still resume a run begun on a larger machine
            raise ValueError(f"--threads must be at most {most} (4 per CPU of this machine, or 64; 0: torch's own "
                             f"choice), got {self.threads}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr must be a number above 0, got {self.lr!r}")
        for name in ("aux_weight", "type_weight", "summary_weight", "weight_decay"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"--{name.replace('_', '-')} must be 0 or more (0 turns it off), got {getattr(self, name)!r}")
