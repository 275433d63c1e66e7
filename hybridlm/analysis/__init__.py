"""Cost models predicted from a config and held against measurements by tests.

memory.py: parameters (total, active per token), weight and cache bytes. flops.py: FLOPs of a
forward, prefill and decode, term by term. chinchilla.py: compute-optimal training. summary.py:
all of it for one model at one context (`hybridlm analyze`). compare.py and plots.py: models
measured side by side beside those predictions (`hybridlm compare`); they build real models, so
they import models/ and nn/ inside their functions.
"""
