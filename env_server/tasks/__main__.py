"""``python -m env_server.tasks``: list every task family with its apps, split and counts."""

from __future__ import annotations

import sys

from env_server.tasks.registry import FAMILIES, HELDOUT_FAMILIES


def distinct_instances(name: str, split: str, seeds: int = 500) -> int:
    fam = FAMILIES[name]
    return len({fam.make(s, split).instruction for s in range(seeds)})


def main(argv: list[str]) -> int:
    seeds = int(argv[1]) if len(argv) > 1 else 500
    print(f"{'family':28} {'apps':22} {'kind':10} {'split':9} {'train':>6} {'heldout':>7}")
    totals = {"train": 0, "heldout": 0}
    for name, fam in FAMILIES.items():
        held = name in HELDOUT_FAMILIES
        counts = {"train": 0 if held else distinct_instances(name, "train", seeds),
                  "heldout": distinct_instances(name, "heldout", seeds)}
        for k in totals:
            totals[k] += counts[k]
        kind = "feasible" if fam.feasible else "infeasible"
        print(f"{name:28} {','.join(fam.apps):22} {kind:10} {'heldout' if held else 'both':9} "
              f"{counts['train']:>6} {counts['heldout']:>7}")
    n_held = len(HELDOUT_FAMILIES)
    print(f"\n{len(FAMILIES)} families ({len(FAMILIES) - n_held} train, {n_held} held-out only); "
          f"distinct instances over {seeds} seeds: train {totals['train']}, heldout {totals['heldout']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
