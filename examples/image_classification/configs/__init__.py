"""Configs: one per paper experiment, plus small Fashion-MNIST configs that run on a CPU."""
