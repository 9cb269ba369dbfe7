"""`python -m lungct ...`: what torchrun starts on every rank (`torchrun --nproc-per-node N -m lungct train ...`)."""

from lungct.cli.main import run

if __name__ == "__main__":
    run()
