"""The execution spread of a study: the same runs executed twice in ways that should change only
the last bits of the arithmetic (another BLAS kernel or thread count), and how far every value a
claim's rule reads, and every verdict, moves between the two.

    python -m minibn.studies.spread A B --out DIR [--label-a TEXT] [--label-b TEXT]

A and B are two folders of the same study with the same settings (their ``config.json`` must
agree but for the machine record and the command). For every claim of their ``claims.json``, every
seed and every value the rule recorded, the relative spread |a - b| / max(|a|, |b|); for every
run, the first logged step whose training loss differs and the relative spread of the final loss.
A rule whose threshold lies within a statistic's spread cannot be trusted to give the same verdict
on a rerun. Writes DIR/spread.json and DIR/report.md. Nothing here runs or judges anything: it
reads the two folders' results.json and claims.json.
"""

import argparse
import math
import os
import sys

from minibn import io, report, results

#: Settings that may differ between two executions of the same runs.
EXECUTION = ("environment", "command", "wall_s")


def relative_spread(a, b):
    """|a - b| / max(|a|, |b|) of two recorded values (0 when both are 0 or equal; NaN when one is
    missing or not finite)."""
    if a == b:
        return 0.0
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (a, b)):
        return math.nan
    return abs(a - b) / max(abs(a), abs(b))


def claim_spread(claims_a, claims_b):
    """``[{"id", "value", "seeds": {seed: (a, b, spread)}, "max"}]`` for every value of every claim,
    and ``[{"id", "seed", "a", "b"}]`` for every seed whose verdict differs."""
    by_id = {r["id"]: r for r in claims_b}
    values, verdicts = [], []
    for rec in claims_a:
        other = by_id.get(rec["id"])
        if other is None:
            continue
        seeds_b = {s["seed"]: s for s in other["seeds"]}
        rows = {}
        for s in rec["seeds"]:
            t = seeds_b.get(s["seed"])
            if t is None:
                continue
            if s["verdict"] != t["verdict"]:
                verdicts.append({"id": rec["id"], "seed": s["seed"], "a": s["verdict"], "b": t["verdict"]})
            for name, a in s["values"].items():
                b = t["values"].get(name)
                rows.setdefault(name, {})[s["seed"]] = (a, b, relative_spread(a, b))
        for name, seeds in rows.items():
            spreads = [v[2] for v in seeds.values() if not math.isnan(v[2])]
            values.append({"id": rec["id"], "value": name, "seeds": seeds, "max": max(spreads) if spreads else math.nan})
    return values, verdicts


def run_spread(doc_a, doc_b):
    """Per run of both documents: the first logged step whose training loss differs, and the relative
    spread of the final loss."""
    rows = []
    for name, a in doc_a["runs"].items():
        b = doc_b["runs"].get(name)
        if b is None:
            continue
        first = next((step for step, x, y in zip(a["steps"], a["loss"], b["loss"]) if x != y), None)
        rows.append({"run": name, "first_differing_step": first,
                     "final_loss_spread": relative_spread(results.final_loss(a), results.final_loss(b))})
    return rows


def compare(folder_a, folder_b):
    """The spread record of two folders of the same study and settings (ValueError when they differ)."""
    (doc_a, _), (doc_b, _) = results.read(folder_a), results.read(folder_b)
    settings = [{k: v for k, v in doc["config"].items() if k not in EXECUTION} for doc in (doc_a, doc_b)]
    if doc_a.get("study") != doc_b.get("study") or settings[0] != settings[1]:
        differ = sorted(k for k in set(settings[0]) | set(settings[1]) if settings[0].get(k) != settings[1].get(k))
        raise ValueError(f"{folder_a} and {folder_b} are not the same study with the same settings ({differ})")
    values, verdicts = claim_spread(*(io.read_json(os.path.join(f, "claims.json")) for f in (folder_a, folder_b)))
    return {"study": doc_a["study"], "a": folder_a, "b": folder_b,
            "commands": [doc_a["config"].get("command"), doc_b["config"].get("command")],
            "values": values, "verdicts": verdicts, "runs": run_spread(doc_a, doc_b)}


def markdown(spread, labels):
    """report.md of a spread record."""
    f = report.fmt
    values = sorted(spread["values"], key=lambda v: (v["id"], -(v["max"] if math.isfinite(v["max"]) else math.inf)))
    seeds = sorted({s for v in values for s in v["seeds"]})
    lines = [f"# Execution spread of the {spread['study']} study", "",
             f"The same runs executed twice: A ({labels[0]}) and B ({labels[1]}). Commands:", "",
             f"- A: `{spread['commands'][0]}`", f"- B: `{spread['commands'][1]}`", "",
             "Relative spread: |a - b| / max(|a|, |b|) of a value as recorded in each folder's claims.json.", "",
             "## Verdicts that differ between the executions", ""]
    if spread["verdicts"]:
        lines += [report.table(["claim", "seed", "A", "B"], [[f"`{v['id']}`", v["seed"], v["a"], v["b"]]
                                                              for v in spread["verdicts"]]), ""]
    else:
        lines += ["None: every claim gets the same verdict on every seed.", ""]
    lines += ["## Runs", "", "The first logged step whose training loss differs, and the relative spread of the "
              "final loss:", "",
              report.table(["run", "first differing step", "final loss spread"],
                           [[r["run"], "-" if r["first_differing_step"] is None else r["first_differing_step"],
                             f(r["final_loss_spread"])] for r in spread["runs"]]), "",
              "## Every value a rule reads", "",
              "Per claim, value and seed: A, B and their relative spread; the values of a claim ordered by their "
              "largest spread.", ""]
    rows = []
    for v in values:
        cells = []
        for s in seeds:
            a, b, d = v["seeds"].get(s, (None, None, math.nan))
            cells.append(f"{f(a) if not isinstance(a, int) else a} / {f(b) if not isinstance(b, int) else b} "
                         f"({f(d, 2)})")
        rows.append([f"`{v['id']}`", v["value"], f(v["max"], 2), *cells])
    lines += [report.table(["claim", "value", "largest spread", *[f"seed {s}: A / B (spread)" for s in seeds]], rows), ""]
    return "\n".join(lines)


def main(argv=None):
    """``python -m minibn.studies.spread A B --out DIR``: the exit status."""
    p = argparse.ArgumentParser(prog="python -m minibn.studies.spread", description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="a study's folder")
    p.add_argument("b", help="the same study executed again, with the same settings")
    p.add_argument("--out", required=True, help="folder for spread.json and report.md")
    p.add_argument("--label-a", default="A", help="how A was executed, for the report")
    p.add_argument("--label-b", default="B", help="how B was executed, for the report")
    args = p.parse_args(argv)
    for folder in (args.a, args.b):
        if not os.path.isfile(os.path.join(folder, "claims.json")):
            p.error(f"{folder} has no claims.json: give two folders a study wrote with its report")
    try:
        spread = compare(args.a, args.b)
    except ValueError as err:
        p.error(str(err))
    os.makedirs(args.out, exist_ok=True)
    io.write_json(os.path.join(args.out, "spread.json"), {**spread, "labels": [args.label_a, args.label_b]})
    report.write_markdown(args.out, markdown(spread, (args.label_a, args.label_b)))
    print(os.path.join(args.out, "report.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
