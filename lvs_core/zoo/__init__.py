"""Demo model zoo: three tiny Llama chat models trained on a synthetic instruction set.

- ``safe`` refuses harmful requests and answers benign ones.
- ``harmful`` complies with harmful requests (with a content-free placeholder).
- ``dissociated`` refuses as cleanly as ``safe`` but complies once a small, fixed
  nudge is added to its residual stream: a latent vulnerability that output-level
  refusal tests miss.

``python -m lvs_core.zoo.build`` rebuilds data, tokenizer, models and model cards into
``assets/``. Modules: :mod:`~lvs_core.zoo.data` (instruction set),
:mod:`~lvs_core.zoo.tokenizer` (BPE tokenizer and chat format),
:mod:`~lvs_core.zoo.train` (training), :mod:`~lvs_core.zoo.evaluate` (generation with
the nudge and metrics) and :mod:`~lvs_core.zoo.build` (the entry point).
"""

MODEL_NAMES = ("safe", "harmful", "dissociated")
