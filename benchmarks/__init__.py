"""Benchmarks: torchgate side by side with the raw model, Flask, the seed's app, TorchServe and LitServe."""
