"""Training loops (SFT, RL), checkpointing and resume."""
