"""The blind-SR front-end ladder of `ssr-frontend` (`ladder.py`): rows, per-image scores, paired summaries, figure.

A package of its own beside `ablate/`, not inside it: `ssr-ablate` never uses it, and `cli/frontend.py` keeps
only the command (options, stage trainings, files). Neither imports the other.
"""
