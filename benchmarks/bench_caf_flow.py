"""Benchmark of the CAF → Département flow: records per second and peak memory, 2,000 vs 200,000 households.

Run: ``make bench`` (or ``python benchmarks/bench_caf_flow.py [--foyers 2000 200000]``). Every figure printed is
measured in this run, on the same generated file: a bare lxml streaming parse (the reference), then the hub end to
end (validation, mapping, pseudonymisation, consent, writing, audit) in a fresh process whose peak RSS is read from
the kernel. Ratios compare the two; nothing is timed in the test suite.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

REFERENCE_BARE_RATE = 12_000  # people/s, the bare parse measured by the project on its reference machine
GOAL_RATIO = 0.60
MEMORY_BUDGET_MB = 50


def bare_parse(path: Path) -> tuple[int, float]:
    from lxml import etree

    started, people = time.perf_counter(), 0
    for _, foyer in etree.iterparse(str(path), events=("end",), tag="InfosFoyerRSA"):
        people += len(foyer.findall("Personne"))
        foyer.clear()
        while foyer.getprevious() is not None:
            del foyer.getparent()[0]
    return people, time.perf_counter() - started


def child_run(flux: Path, home: Path) -> None:
    """Runs the flow alone in a fresh process, so that its peak RSS belongs to this file size only."""
    from spie_hub.core.home import HubHome
    from spie_hub.run.lifecycle import run_flow

    hub = HubHome(home)
    started = time.perf_counter()
    summary = run_flow("caf-vers-departement", flux, hub)
    elapsed = time.perf_counter() - started
    print(json.dumps({
        "people": summary.lus, "seconds": elapsed, "status": summary.statut, "accounted": summary.accounted(),
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }))


def measure(households: int, workdir: Path) -> dict[str, float]:
    from spie_hub.demo.data import generate

    flux, consents = workdir / f"flux_{households}.xml", workdir / f"consents_{households}.json"
    generate(flux, consents, households, seed=households, max_consents=5_000)
    people, bare_seconds = bare_parse(flux)
    home = workdir / f"home_{households}"
    env = {**os.environ, "SPIE_HUB_HOME": str(home), "SPIE_HUB_DATABASE_URL": "",
           "SPIE_HUB_PSEUDO_KEY": "bench:" + base64.b64encode(os.urandom(32)).decode(),
           "SPIE_HUB_SIGNING_KEY": "benchsig:" + base64.b64encode(os.urandom(32)).decode()}
    subprocess.run([sys.executable, "-m", "spie_hub.cli", "consent", "import", str(consents)],
                   check=True, capture_output=True, cwd=REPO, env=env)
    out = subprocess.run([sys.executable, __file__, "--child", str(flux), str(home)],
                         check=True, capture_output=True, text=True, cwd=REPO, env=env)
    run = json.loads(out.stdout.strip().splitlines()[-1])
    assert run["people"] == people and run["accounted"] and run["status"] == "termine", run
    flux.unlink()
    return {
        "households": households, "people": people,
        "bare_rate": people / bare_seconds, "hub_rate": people / run["seconds"], "hub_seconds": run["seconds"],
        "peak_mb": run["peak_rss_kb"] / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--foyers", type=int, nargs="+", default=[2_000, 200_000])
    parser.add_argument("--child", nargs=2, metavar=("FLUX", "HOME"))
    args = parser.parse_args()
    if args.child:
        child_run(*(Path(p) for p in args.child))
        return 0
    with tempfile.TemporaryDirectory(prefix="spie-bench-") as tmp:
        rows = [measure(n, Path(tmp)) for n in args.foyers]
    print(f"{'foyers':>8} {'personnes':>10} {'parse nue p/s':>14} {'hub p/s':>9} {'ratio':>6} {'pic RSS Mo':>11}")
    for r in rows:
        print(f"{r['households']:>8} {r['people']:>10} {r['bare_rate']:>14.0f} {r['hub_rate']:>9.0f} "
              f"{r['hub_rate'] / r['bare_rate']:>6.2f} {r['peak_mb']:>11.1f}")
    small, large = rows[0], rows[-1]
    extra = large["peak_mb"] - small["peak_mb"]
    print(f"\nDébit du hub / parse nue du même fichier : {large['hub_rate'] / large['bare_rate']:.2f} (objectif {GOAL_RATIO:.2f})")
    print(f"Débit du hub / référence documentée ({REFERENCE_BARE_RATE} p/s) : {large['hub_rate'] / REFERENCE_BARE_RATE:.2f} "
          f"(objectif {GOAL_RATIO:.2f})")
    print(f"Mémoire de pointe supplémentaire, {large['households']} vs {small['households']} foyers : {extra:+.1f} Mo "
          f"(budget {MEMORY_BUDGET_MB} Mo) → {'OK' if extra <= MEMORY_BUDGET_MB else 'DÉPASSÉ'}")
    return 0 if extra <= MEMORY_BUDGET_MB else 1


if __name__ == "__main__":
    sys.exit(main())
