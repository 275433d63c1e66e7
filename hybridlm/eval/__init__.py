"""Evaluation: perplexity (perplexity.py) and, per the evaluation issue, task scoring."""
