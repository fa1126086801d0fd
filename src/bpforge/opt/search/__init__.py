"""Stochastic search for a cheaper window equivalent to a given one (K2's Metropolis-Hastings synthesis).

`search(task, budget=..., seed=..., prove=...)` runs one chain over one window; the pipeline
(`opt.searching`) picks the windows, runs chains with different `SearchParams` and seeds, and applies only
what the prover proved. Modules: `cells` (candidates with NOP holes, compacted into real windows),
`evaluate` (cells compiled once from the one semantics, run on concrete tests, outcomes compared as the
prover compares them), `inputs` (test states, counterexamples as tests), `moves` (K2's proposals),
`chain` (the chain itself).
"""

from .chain import SearchParams, SearchResult, SearchTask, search, slots
from .moves import MoveWeights

__all__ = ["MoveWeights", "SearchParams", "SearchResult", "SearchTask", "search", "slots"]
