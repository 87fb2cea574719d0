"""``python -m cim.cli``: how the benchmark starts ``cim route`` and ``cim server``."""

from cim.cli import main

main()
