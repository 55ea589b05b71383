"""edgeopt.search: search spaces, objectives, the Optuna driver and Pareto reports.

The search layer sits above targets (it asks the cost model) and below the CLI.
Its driver is built by the search issue; the pass options' declared search
spaces (``edgeopt.passes.options``) are what it will explore.
"""
