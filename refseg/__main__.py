"""``python -m refseg`` (also what ``torchrun -m refseg train ...`` runs)."""
from refseg.cli import main

main()
