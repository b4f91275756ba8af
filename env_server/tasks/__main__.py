"""``python -m env_server.tasks [SEEDS]``: list every task family with its apps, split and counts, then
the number of families per app. ``novel`` = the train families on invented parameter values."""

from __future__ import annotations

import sys

from env_server.tasks.registry import FAMILIES, HELDOUT_FAMILIES


def distinct_instances(name: str, split: str, seeds: int = 500) -> int:
    fam = FAMILIES[name]
    return len({fam.make(s, split).instruction for s in range(seeds)})


def main(argv: list[str]) -> int:
    seeds = int(argv[1]) if len(argv) > 1 else 500
    print(f"{'family':28} {'apps':22} {'kind':10} {'split':9} {'train':>6} {'heldout':>7} {'novel':>6}")
    totals = {"train": 0, "heldout": 0, "novel": 0}
    for name, fam in FAMILIES.items():
        held = name in HELDOUT_FAMILIES
        counts = {"train": 0 if held else distinct_instances(name, "train", seeds),
                  "heldout": distinct_instances(name, "heldout", seeds),
                  "novel": 0 if held else distinct_instances(name, "novel", seeds)}
        for k in totals:
            totals[k] += counts[k]
        kind = "feasible" if fam.feasible else "infeasible"
        print(f"{name:28} {','.join(fam.apps):22} {kind:10} {'heldout' if held else 'both':9} "
              f"{counts['train']:>6} {counts['heldout']:>7} {counts['novel']:>6}")
    n_held = len(HELDOUT_FAMILIES)
    print(f"\n{len(FAMILIES)} families ({len(FAMILIES) - n_held} train, {n_held} held-out only); "
          f"distinct instances over {seeds} seeds: train {totals['train']}, heldout {totals['heldout']}, "
          f"novel {totals['novel']} (train families on invented values, for RL)")
    print_per_app()
    return 0


def print_per_app() -> None:
    """Families per app (a multi-app family counts for each of its apps)."""
    print(f"\n{'app':10} {'families':>8} {'train':>6} {'heldout':>8} {'multi-app':>9} {'infeasible':>10}")
    for app in sorted({a for f in FAMILIES.values() for a in f.apps}):
        mine = {n: f for n, f in FAMILIES.items() if app in f.apps}
        held = sum(n in HELDOUT_FAMILIES for n in mine)
        print(f"{app:10} {len(mine):>8} {len(mine) - held:>6} {held:>8} "
              f"{sum(len(f.apps) > 1 for f in mine.values()):>9} {sum(not f.feasible for f in mine.values()):>10}")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
