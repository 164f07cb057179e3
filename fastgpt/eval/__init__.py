"""Evaluation: bits per byte, verifiable-task accuracy (greedy, pass@k), multiple choice by
log-likelihood, and the report card of a pipeline's runs.

``fastgpt eval`` is :mod:`fastgpt.eval.cli`; ``fastgpt report`` is :mod:`fastgpt.eval.report`.
"""
