"""Named studies: each runs one Hydra sweep and then the analysis into ``experiments/results/``."""
