"""The experiments that draw docs/: run them with `python -m experiments` (see __main__.py).

Layers, top to bottom: __main__ (the table of experiments) → frontier, goodhart, lecture (what
each experiment runs and draws) → loop (the one run loop), points (formulas on evaluation
points) → the six scripts → common → lib. Nothing imports upward.
"""
