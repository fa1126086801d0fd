"""The optimizer: rule-based passes, proven rewrites, stochastic search and the SMT prover that vouches for
them (see DESIGN.md). `smt` is the z3 instantiation of `isa.semantics` the prover is built on."""
