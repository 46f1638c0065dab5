"""Raff & Holt (2023)-style standard-MIL "poison" test for every registered MIL model.

Prints a markdown table (model, claims standard MIL, train AUROC, clean-test AUROC, passed) for
docs/mil.md. Usage: python scripts/mil_poison_table.py [--seeds 0 1] [--epochs 30]
"""

from __future__ import annotations

import argparse

from pathstrat.mil import MODELS
from pathstrat.testing import run_poison_test

SMALL = {"transmil": {"dim": 32, "num_landmarks": 8, "n_heads": 4}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args()
    print("| model | claims standard MIL | seed | train AUROC | test AUROC | passed |")
    print("|---|---|---|---|---|---|")
    for name in MODELS.names():
        for seed in args.seeds:
            r = run_poison_test(name, seed=seed, epochs=args.epochs, **SMALL.get(name, {"dim": 32}))
            print(f"| {name} | {MODELS.get(name).standard_mil} | {seed} | {r['train_auroc']:.3f} | "
                  f"{r['test_auroc']:.3f} | {'yes' if r['passed'] else 'no'} |", flush=True)


if __name__ == "__main__":
    main()
