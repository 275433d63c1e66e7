"""Evaluation: sliding-window perplexity (perplexity.py), log-likelihood scoring with shared contexts
(loglikelihood.py) for multiple choice (multiple_choice.py), generation and code tasks
(generation_tasks.py, run in sandbox.py), long-context needle probes (needle.py), contamination
against a training corpus (contamination.py), the lm-eval adapter (harness.py), task files
(tasks.py) and the runner behind `hybridlm eval` (runner.py)."""
