"""Experiments built on the gan2flow library: the loss comparison, the digits pipeline and the demos.

- :mod:`gan2flow.experiments.compare`: which GAN losses give score-difference estimators
  (``gan2flow compare``, docs/losses.md).
- :mod:`gan2flow.experiments.digits`: scikit-learn's 8×8 digits end to end, from an ordinary conv GAN
  to refined samples, measured and pictured (``gan2flow demo --dataset digits``, docs/digits.md).
- :mod:`gan2flow.experiments.demo`: the embedded grid25 demos (``gan2flow demo [--kernel]``) and
  ``train_plain_gan``, the "GAN someone else trained" that conversion starts from.
- :mod:`gan2flow.experiments.zoo`: the zoo of foreign GANs — GANs trained by plain keras-io style loops,
  never by gan2flow, that conversion's defaults are judged on (``python benchmarks/zoo.py``, docs/zoo.md).
- :mod:`gan2flow.experiments.refiners`: every refiner of :mod:`gan2flow.refiners` (DRS, MH-GAN, DOT, DDLS,
  DGflow, gan2flow's own) on every zoo GAN (``gan2flow compare --refiners``, docs/refiners.md).
- :mod:`gan2flow.experiments.measures`: the zoo's sample metrics, shared by those two.

They sit above the library: they import it, the command line (:mod:`gan2flow.cli`) imports them, and
the library never does (``import gan2flow`` does not load this package). The old names
``gan2flow.compare``, ``gan2flow.digits`` and ``gan2flow.demo`` still work, with a DeprecationWarning.
"""
