"""The blind-SR front-end ladder of `ssr-frontend`: rows and per-image scores (`ladder.py`), seed-pooled paired
summaries, Markdown and figure (`summary.py`).

A package of its own beside `ablate/`, not inside it: `ssr-ablate` never uses it, and `cli/frontend.py` keeps
only the command (options, stage trainings, files). Neither imports the other.
"""
