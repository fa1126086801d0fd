"""The verifier's test corpus: programs the kernel accepts and mutants that each break one rule, with the
running kernel's verdict on every one of them.

    programs   seeded generators of valid programs of several shapes (`SHAPES`), written as tagged
               assembly so mutators can find the instruction a rule is about (`CorpusProgram`)
    mutants    one mutator per rule (`MUTATORS`), each applied to programs of the shapes it fits, and the
               rule table: the 6.18 complaint each rule should draw, or that the kernel accepts it (`RULES`)
    corpus     build_corpus(seed, count): programs and mutants labelled with the kernel's verdict,
               complaint and instruction (deterministic for a seed)

Used by tests/test_verifier_corpus.py; the next session's verifier is compared with it case by case.
"""
