"""Benchmark of the drift check: `make bench` (after the retrain benchmark of the same size).

Reference: the 1M-row training set the retrain benchmark built (Feast features joined).
Current: 1M rows drawn with replacement from it, with a holiday-style shift applied to
`amount` (x1.5) and `channel` (a fifth of the rows moved online) — so the right verdict is
known. Measures driftline's check (uniform samples of `drift.sample_rows` per side) against
Evidently on the full data, and compares the per-column verdicts.

Prints a table and writes bench/results/drift-<size>.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.rss import PeakRSS, stage  # noqa: E402

MODEL = "fraud_detection"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="1m")
    parser.add_argument("--skip-full", action="store_true", help="skip the full-data Evidently run")
    args = parser.parse_args()
    home = Path(os.environ.get("DRIFTLINE_HOME", REPO / ".local")).resolve() / "bench" / args.size
    os.environ["DRIFTLINE_HOME"] = str(home)
    sets = sorted(glob.glob(str(home / "runs" / MODEL / "*" / "training_set.parquet")))
    if not sets:
        raise SystemExit(
            f"no training set under {home}; run the retrain benchmark first (make bench)"
        )

    import numpy as np
    import pandas as pd

    from driftline.drift import column_drift
    from driftline.specs import load_spec

    spec = load_spec(MODEL)
    reference = pd.read_parquet(sets[-1])
    rng = np.random.default_rng(0)
    current = reference.iloc[rng.integers(0, len(reference), len(reference))].reset_index(drop=True)
    current["amount"] = current["amount"] * 1.5
    moved = rng.random(len(current)) < 0.2
    current.loc[moved, "channel"] = "online"
    results: dict = {
        "reference_rows": len(reference),
        "current_rows": len(current),
        "features": len(spec.feature_names),
    }

    column_drift(spec, reference.head(5000), current.head(5000))  # imports and warm-up, not timed
    with PeakRSS(os.getpid()) as sampler:
        with stage(results, "sampled", sampler):
            sampled, _, _ = column_drift(spec, reference, current)
        if not args.skip_full:
            with stage(results, "full", sampler):
                full, _, _ = column_drift(spec, reference, current, sample_rows=10**9)
    results["sample_rows"] = spec.drift.sample_rows
    results["sampled_drifted"] = sorted(c for c, v in sampled.items() if v["drifted"])
    if not args.skip_full:
        results["full_drifted"] = sorted(c for c, v in full.items() if v["drifted"])
        results["verdicts_match"] = results["sampled_drifted"] == results["full_drifted"]
        results["max_score_gap"] = round(
            max(abs(sampled[c]["score"] - full[c]["score"]) for c in full), 4
        )
    out = REPO / "bench" / "results" / f"drift-{args.size}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))

    print(
        f"\n## drift check, {results['current_rows']} current vs {results['reference_rows']} reference rows x {results['features']} features\n"
    )
    print("| run | seconds | peak RSS GB | drifted |\n|---|---|---|---|")
    print(
        f"| driftline (uniform samples of {spec.drift.sample_rows}) | {results['sampled']['seconds']} | {results['sampled']['peak_rss_gb']} | {', '.join(results['sampled_drifted'])} |"
    )
    if not args.skip_full:
        print(
            f"| Evidently on the full data | {results['full']['seconds']} | {results['full']['peak_rss_gb']} | {', '.join(results['full_drifted'])} |"
        )
        print(
            f"\n- verdicts match: {results['verdicts_match']}; largest score gap {results['max_score_gap']}"
        )
    print(
        "- target: <= 15 s on 2 cores for the check (imports excluded: Evidently's import alone is ~14 s)"
    )


if __name__ == "__main__":
    main()
