"""Transitional: the mexcuda-equivalent compiler (being split into one module per concern)."""

from kilosort_docker.mex import _all

globals().update({k: v for k, v in vars(_all).items() if not k.startswith("__")})
