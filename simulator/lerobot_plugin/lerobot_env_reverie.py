"""lerobot's plugin hook for Reverie: lerobot-eval imports this module (the distribution
``lerobot_env_reverie``), and importing ``simulator.lerobot_env`` registers ``--env.type=reverie``."""

import simulator.lerobot_env  # noqa: F401  (registers the "reverie" EnvConfig)
