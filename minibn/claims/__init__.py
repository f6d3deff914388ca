"""The paper's claims, each judged by a rule written in code: one engine, one rulebook per study.

- :mod:`minibn.claims.verdicts`: the verdict scale, ratios and differences against thresholds,
  parts combined into a seed's verdict and seeds into the claim's, the ``claims.json`` record and
  the tables a report opens with, and the controls (a rule's verdict with another normalizer,
  or the standard net itself, in BN's place).
- :mod:`minibn.claims.dln`, :mod:`minibn.claims.vgg`, :mod:`minibn.claims.theory`,
  :mod:`minibn.claims.sharpness`: each study's statements and rules (``RULES``), then one pure
  judge per claim, and ``judge(doc, ...)``: the records of every claim the study's results test.

Rulebooks read a results document (:mod:`minibn.results`), never a study module, and import no
plotting library.
"""
