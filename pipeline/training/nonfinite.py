"""What a training stage does on a NaN/inf loss (``on_nonfinite``), and the key only one of
those choices reads. It sits here, below the configuration and the stage registry, because
both need it: TrainConfig refuses ``max_nonfinite_skips`` beside ``stop``, and the baseline,
which merges its keys over the KD phase's, drops the KD phase's when its own decider leaves
it unread."""
from __future__ import annotations

ON_NONFINITE = ("stop", "skip")
# key -> (the key that decides whether it is read, the values of that key that read it)
READ_ONLY_WITH = {"max_nonfinite_skips": ("on_nonfinite", ("skip",))}
