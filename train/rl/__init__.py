"""On-policy RL in the frozen imagined env: one algorithm per file behind ``base.Algorithm``."""
