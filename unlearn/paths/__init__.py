"""Path dependence of unlearning (Yu, He, Goyal, Arora 2025, "On the Impossibility of Retrain Equivalence in
Machine Unlearning", arXiv 2510.16629): models that learned the same data in different orders, one unlearning
procedure run along each, and the statistics that say how much the order changes the outcome.

* `unlearn.paths.build`: staged training on the embedded TinyFacts corpus (``unlearn paths build``), cached per
  stage prefix so that paths sharing their first stages train them once;
* `unlearn.paths.evaluate`: ``unlearn paths eval``, one `unlearn run` per path and seed through the one loop and
  method registry, with a trajectory probe logged every ``--log-every`` steps;
* `unlearn.paths.toy`: the paper's two-stage linear model, where the divergence identity holds exactly;
* the statistics themselves live in `unlearn.metrics.path` (evaluators know nothing of how paths were made).
"""
