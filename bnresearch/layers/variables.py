"""The variable collections and the random stream a layer may use, beyond its parameters, and
the parameter names that code outside the layers looks up.

- ``batch_stats``: state that persists across steps (running statistics, step counters of
  normalizations). Part of the TrainState and of every checkpoint.
- ``aux_loss``: scalars a layer adds to the training objective with
  ``self.sow(AUX_LOSS, name, value)`` (e.g. the Gaussian negative log-likelihood of
  "batchless" normalization). The train step adds their sum to the loss and logs it as
  ``train/aux_loss``.
- ``analysis``: scalars a layer reports without changing training, with
  ``self.sow(ANALYSIS, name, value)``; the train step logs the mean of each name over the layers
  as ``train/<name>``.

- ``moments``: the batch statistics a normalization's running statistics are updated with,
  sown only by a forward that asks for them (``mutable`` includes it): re-estimating the
  population statistics (``bnresearch/train/reestimate.py``) averages them over a pass.

- ``activations``: each normalization's input and output, summarized by
  ``bnresearch/measure/activations.py``,, sown only by a training forward that asks for them
  (``mutable`` includes it): the activation-statistics measurement, never the train step.

The sown collections are rebuilt from scratch at every step and exist only in training mode.
Randomness at train time (dropout, stochastic depth, stochastic quantizers) comes from one
stream, ``self.make_rng(RNG_STREAM)``, which flax splits per call site; the train step seeds it
from (seed, step), so a resumed run draws exactly what an uninterrupted one draws.

``LATENT_KERNEL`` names the real-valued latent weights of quantized layers that the optimizer
clips to [-1, 1] after each update (``bnresearch/layers/quantization.py`` gives the name,
``bnresearch/optim/constraints.py`` clips the leaves that carry it).
"""

STATE = "batch_stats"
AUX_LOSS = "aux_loss"
ANALYSIS = "analysis"
MOMENTS = "moments"
ACTIVATIONS = "activations"
RNG_STREAM = "dropout"

TRAIN_MUTABLE = (STATE, AUX_LOSS, ANALYSIS)

LATENT_KERNEL = "latent_kernel"
