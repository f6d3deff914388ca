"""The theory study's claims: the statements of docs/protocol.md §5, each judged on its instances.

§4a names no claim of the theory study (its claims are the experiments'), so each statement the
study checks is a claim ``theory.CHECK``, with one rule: reproduced when no instance is off by more
than the tolerance (0 violations), else not reproduced. The study is one seed.
"""

from minibn.claims.verdicts import NOT_REPRODUCED, REPRODUCED, record

PAPER = "holds (Section 4, Appendix C)"
QUANTITY = ("relative error of the statement on each instance (random layers and the BN layers of three trained "
            "networks)")
RULE = "reproduced when no instance is off by more than the tolerance (0 violations), else not reproduced"


def judge(doc):
    """The claims.json records of the theory study: one per check of ``doc["checks"]``."""
    seed = doc["config"].get("seed")
    records = []
    for check in doc["checks"]:
        values = {"instances": check["instances"], "violations": check["violations"],
                  "max relative error": check["max_rel_err"], "tolerance": check["tolerance"]}
        verdict = REPRODUCED if check["violations"] == 0 else NOT_REPRODUCED
        records.append(record(f"theory.{check['name']}", check["statement"], PAPER, QUANTITY, RULE,
                              {seed: (verdict, values)}, headline=["violations", "instances", "max relative error"]))
    return records
