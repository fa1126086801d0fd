"""`python -m bpforge`: the bpforge command."""

from .cli import main

main()
