"""The theory study's claims: the statements of docs/protocol.md §5, each judged on its instances.

§4a names no claim of the theory study (its claims are the experiments'), so each statement the
study checks is a claim ``theory.CHECK`` (four of them are not the paper's: :data:`NOT_THE_PAPERS`
says whose), with one rule: reproduced when no instance is off by more
than the tolerance (0 violations), else not reproduced. The study is one seed.
"""

from minibn.claims.verdicts import NOT_REPRODUCED, REPRODUCED, record

PAPER = "holds (Section 4, Appendix C)"
#: The checks that are not the paper's statements: what the paper column says of them instead.
NOT_THE_PAPERS = {
    "normalizer_scale_invariance": "not in the paper: the other normalizers' invariances (minibn's check)",
    "layernorm_projection": "not in the paper: LayerNorm's Jacobian, the analogue of the BN Jacobian (minibn's check)",
    "weight_grad_orthogonal": "not in the paper: Arora, Li & Lyu 2019",
    "gd_norm_growth": "not in the paper: Arora, Li & Lyu 2019",
}
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
        paper = NOT_THE_PAPERS.get(check["name"], PAPER)
        records.append(record(f"theory.{check['name']}", check["statement"], paper, QUANTITY, RULE,
                              {seed: (verdict, values)}, headline=["violations", "instances", "max relative error"]))
    return records
