"""``python -m zoo`` runs the CLI (needed under ``torchrun -m zoo``)."""

from zoo.cli import main

if __name__ == "__main__":
    main()
