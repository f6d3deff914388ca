"""The verdict engine on hand-made verdicts: thresholds, parts that disagree, verdicts over seeds."""

import math

from minibn.claims import verdicts


def test_ratio_verdict_thresholds():
    assert verdicts.ratio_verdict(40, paper_ratio=100) == "reproduced"  # within half an order of 100
    assert verdicts.ratio_verdict(30, paper_ratio=100) == "partly"
    assert verdicts.ratio_verdict(1.1) == "not reproduced"
    assert verdicts.ratio_verdict(0.5) == "opposite"
    assert verdicts.ratio_verdict(math.nan).startswith("not judged")


def test_parts_that_disagree_give_at_most_partly_and_say_which():
    both = verdicts.combine({"early": "reproduced", "whole run": "reproduced"})
    assert both == "reproduced"
    mixed = verdicts.combine({"early": "reproduced", "whole run": "not reproduced"})
    assert mixed == "partly: parts disagree (reproduced: early; not reproduced: whole run)"
    assert verdicts.combine({"early": "opposite", "whole run": "not reproduced"}).startswith("not reproduced: parts")
    assert verdicts.combine({"a": "reproduced", "b": "not judged: x diverged at step 3"}) == "not judged: x diverged at step 3"


def test_over_seeds_counts_and_majority():
    verdict, holds = verdicts.over_seeds({0: "reproduced", 1: "reproduced", 2: "not reproduced"})
    assert verdict == "reproduced: reproduced on 2, not reproduced on 1 of 3 seeds" and holds == "2 of 3 seeds"
    verdict, holds = verdicts.over_seeds({0: "reproduced", 1: "partly", 2: "not reproduced", 3: "opposite"})
    assert verdict.startswith("partly: ") and holds == "1 of 4 seeds (partly on 1)"
    verdict, _ = verdicts.over_seeds({0: "not judged: standard diverged at step 2"})
    assert verdict == "not judged: standard diverged at step 2"
    verdict, holds = verdicts.over_seeds({0: "reproduced", 1: "not judged: BN diverged at step 5"})
    assert verdict == "partly: reproduced on 1, not judged on 1 of 2 seeds" and holds == "1 of 2 seeds"
