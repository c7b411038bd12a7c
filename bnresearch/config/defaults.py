"""Every config field with its default: the one schema that config files start from.

Config files call `base_config()` and change what their experiment needs. The config is locked
before overrides apply, so `--config.FIELD=VALUE` can change any field listed here and a
misspelt field is an error naming the fields that exist.

The option blocks of the model (``norm_kwargs``, ``activation_kwargs``, ``options``) hold every
option of every registered variant as a typed placeholder: None means "the variant's own
default", and ``--config.model.norm_kwargs.num_groups=8`` works on the locked config. An option
set for a variant that does not have it is refused when the model is built. The options are
declared on their modules; ``options.py`` is generated from the registries (see
``bnresearch/registered_options.py``), as is the dataset block.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from bnresearch.config import options


def _option_block(option_types: dict) -> ml_collections.ConfigDict:
    """Every option unset (None: the variant's default), typed so that overrides parse."""
    return ml_collections.ConfigDict(
        {option: placeholder(option_type) for option, option_type in option_types.items()}
    )


# The blocks that lay a run out over the devices (its mesh, its state's sharding), not what it
# computes: a run resumed under other values is the same experiment.
LAYOUT_FIELDS = ("mesh", "sharding")


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    # name: digits, mnist, ..., imagefolder:PATH (docs/data.md); the fields are those of
    # bnresearch/data/catalog.py's DatasetSettings, documented there.
    config.dataset = ml_collections.ConfigDict(options.DATASET_DEFAULTS)

    config.model = ml_collections.ConfigDict()
    # mlp | cnn | resnet20 ... resnet110 (CIFAR) | preact_resnet20, 56, 110 (basic), 164, 1001
    # (bottleneck) | wrn | resnet18, 34, 50, 101, 152 (ImageNet) | vgg11, 13, 16, 19 | inception |
    # bnn_mlp | bnn_vgg  (docs/models.md)
    config.model.name = "cnn"
    # batch | ghost_batch | batch_renorm | batch_kalman | batch_layer | layer | group | instance |
    # frn | weight | batchless | none (docs/normalizations.md)
    config.model.norm = "batch"
    config.model.norm_kwargs = _option_block(options.NORMALIZATION_OPTIONS)
    # relu | leaky_relu | prelu | elu | selu | gelu_exact | gelu_tanh | swish | silu | tanh |
    # sigmoid | hard_tanh
    config.model.activation = "relu"
    config.model.activation_kwargs = _option_block(options.ACTIVATION_OPTIONS)
    config.model.options = _option_block(options.MODEL_OPTIONS)  # the model's own options
    # Kernel init of every weight layer: he_normal | lecun_normal | glorot_uniform; None: He-normal
    # (LeCun-normal for a dense logits layer), or lecun_normal when self_normalizing.
    config.model.weight_init = placeholder(str)
    # default (the layers' own init, weight_init) | gradinit (then learn a scale per parameter
    # tensor before training, Zhu et al. 2021, settings in `gradinit`; bnresearch/train/gradinit.py)
    config.model.init_method = "default"
    # Self-normalizing network (Klambauer et al. 2017): needs activation=selu; LeCun-normal init
    # for every weight layer and alpha-dropout in place of every dropout.
    config.model.self_normalizing = False
    config.model.dropout = ml_collections.ConfigDict(
        {
            "input": 0.0,  # drop rate on the input images (pixels), before the first layer
            "hidden": 0.0,  # drop rate inside the network (each model documents where)
            "head": 0.0,  # drop rate right before the classifier
        }
    )
    # Stochastic depth (Huang et al. 2016), residual models: 1 - p_L, the drop probability of the
    # last block, with block l of L surviving with p_l = 1 - (l / L) * stochastic_depth; 0: off.
    config.model.stochastic_depth = 0.0
    config.model.quantization = ml_collections.ConfigDict(
        {
            "method": "none",  # none | binaryconnect | bnn | xnor | qnn | dorefa
            # Bits of weights, activations (inputs of quantized layers) and gradients, 1-32
            # (32: full precision); None: the method's default (W, A, G): binaryconnect (1, 32, 32),
            # bnn and xnor (1, 1, 32), qnn (2, 2, 32), dorefa (1, 2, 32).
            "weight_bits": placeholder(int),
            "activation_bits": placeholder(int),
            "gradient_bits": placeholder(int),  # dorefa only
            "stochastic": False,  # binaryconnect: stochastic binarization; qnn: stochastic rounding
            "input_scale": False,  # xnor: scale by K, the local mean |input| (XNOR-Net)
            "quantize_first": False,  # quantize the layer that sees the images too
            "quantize_last": False,  # quantize the logits layer too
        }
    )

    config.batch_size = 128  # distinct examples per train-step call
    config.eval_batch_size = 512
    # Smith et al. 2018: from each of `epochs` on, the batch size is the matching entry of
    # `batch_sizes` (batch_size before the first), e.g. epochs=(60, 120), batch_sizes=(640, 3200).
    # Durations in epochs resolve phase by phase (bnresearch/optim/batch_size_schedule.py); each
    # batch size compiles once.
    config.batch_size_schedule = ml_collections.ConfigDict()
    config.batch_size_schedule.epochs = ()
    config.batch_size_schedule.batch_sizes = ()
    # fixed: all phases keep the first phase's lr (Smith et al.: the growing batch replaces the
    # decay); rescaled: each phase's peak lr follows lr_scaling for its own batch size.
    config.batch_size_schedule.lr = "fixed"
    # Hoffer et al. 2019: each example appears M times per batch, independently augmented (M * B
    # images); steps per epoch and the lr stay those of B.
    config.batch_augmentation = ml_collections.ConfigDict()
    config.batch_augmentation.multiplicity = 1
    # The peak learning rate is base_lr at base_batch_size, rescaled for the examples per update
    # (batch_size x optimizer.accumulation_steps) by the rule (bnresearch/optim/learning_rate.py):
    # overriding batch_size rescales the lr.
    config.base_lr = 0.1
    config.base_batch_size = 128
    config.lr_scaling = "linear"  # none | linear | sqrt

    config.schedule = ml_collections.ConfigDict()
    config.schedule.warmup = "0 steps"  # linear warmup, in steps or epochs ("0 steps": none)
    config.schedule.warmup_rule = "linear"  # linear | legw (warmup epochs x B/B0; lr_scaling=sqrt)
    config.schedule.decay = "cosine"  # constant | step | cosine | polynomial | exponential
    config.schedule.boundaries = ()  # step decay: durations, e.g. ("30 epochs", "60 epochs")
    config.schedule.decay_factor = 0.1  # step decay: multiplier at each boundary
    config.schedule.power = 2.0  # polynomial: (1 - progress) ** power
    config.schedule.decay_rate = 0.97  # exponential: multiplier per epoch (continuous)

    config.optimizer = ml_collections.ConfigDict()
    # sgd | momentum | nesterov | adagrad | rmsprop | adam | adamw | lars | lamb
    config.optimizer.name = "momentum"
    config.optimizer.momentum = 0.9  # momentum, nesterov, lars
    config.optimizer.b1 = 0.9  # adam, adamw, lamb
    config.optimizer.b2 = 0.999  # adam, adamw, lamb
    config.optimizer.eps = 1e-8  # adagrad, rmsprop, adam, adamw, lamb
    config.optimizer.rho = 0.9  # rmsprop: weight of the OLD mean square
    config.optimizer.initial_accumulator = 0.0  # adagrad's and rmsprop's initial sum of squares
    config.optimizer.trust_coefficient = 0.001  # lars
    config.optimizer.weight_decay = 5e-4
    # auto (the optimizer's own: decoupled for adamw, lamb; coupled L2 for the rest) | coupled |
    # decoupled; see bnresearch/optim/optimizers.py.
    config.optimizer.weight_decay_style = "auto"
    config.optimizer.weight_decay_on = "all"  # all | kernels (exempts norm parameters, biases)
    config.optimizer.trust_ratio_on = "all"  # lars, lamb: all | kernels (the same exemption)
    # Per parameter group (kernel | scale | bias, see bnresearch/optim/groups.py): the group's lr
    # is the scheduled lr times its multiplier, e.g. scale=0.01 for gamma at lr/100.
    config.optimizer.lr_multipliers = ml_collections.ConfigDict(
        {"kernel": 1.0, "scale": 1.0, "bias": 1.0}
    )
    config.optimizer.grad_clip_norm = 0.0  # global-norm clipping; 0 turns it off
    # k micro-batches per update (optax.MultiSteps): an update sees batch_size x k examples.
    config.optimizer.accumulation_steps = 1

    # McCandlish et al. 2018: B_simple = tr(Sigma) / |G|^2 from the gradient norms of the batch
    # and of its sub-batches, logged as train/noise_scale; a separate computation, none when off.
    config.noise_scale = ml_collections.ConfigDict()
    config.noise_scale.enabled = False
    config.noise_scale.every = "50 steps"
    config.noise_scale.sub_batches = 8  # B_small = batch / 8: per device on 8 devices
    config.noise_scale.ema_decay = 0.9  # of |G|^2 and tr(Sigma), each measurement

    # Santurkar et al. 2018's "why does batch norm work" probes (bnresearch/train/probes.py),
    # each a separate computation on the due step's batch, none when off; logged as landscape/,
    # ics/ and activations/ metrics.
    # Loss range, gradient predictiveness and beta-smoothness along -g over the step sizes.
    config.landscape = ml_collections.ConfigDict()
    config.landscape.enabled = False
    config.landscape.every = "50 steps"
    config.landscape.step_sizes = (0.05, 0.1, 0.2, 0.4)  # etas of theta - eta g, each > 0
    # Internal covariate shift per layer: ||G_i - G'_i|| and cos(G_i, G'_i).
    config.covariate_shift = ml_collections.ConfigDict()
    config.covariate_shift.enabled = False
    config.covariate_shift.every = "50 steps"
    # Mean and std of each normalization's input and output.
    config.activation_stats = ml_collections.ConfigDict()
    config.activation_stats.enabled = False
    config.activation_stats.every = "50 steps"
    # > 0: also a histogram of each site's input and output with this many buckets, to
    # TensorBoard only (metrics.jsonl keeps scalars); 0: none.
    config.activation_stats.histogram_buckets = 0

    # GradInit (model.init_method=gradinit): Adam on the scales for `iterations` steps, each on
    # two batches, to lower the loss after one SGD step of inner_lr with ||g||_p <= gamma.
    config.gradinit = ml_collections.ConfigDict()
    config.gradinit.iterations = 100
    config.gradinit.lr = 0.01  # tau, Adam's lr on the scales
    config.gradinit.inner_lr = 0.1  # eta, the SGD step whose outcome is optimized
    config.gradinit.gamma = 1.0  # the gradient-norm bound
    config.gradinit.norm_order = 2  # p: 1 or 2
    config.gradinit.min_scale = 0.01  # the scales' floor

    config.label_smoothing = 0.0  # eps of (1 - eps) onehot + eps / K; 0 turns it off
    config.train_duration = "30 epochs"  # durations: "N steps" or "N epochs"
    config.compute_dtype = "float32"  # float32 | bfloat16 (for accelerators)
    # K updates per compiled call (a scan over K batches), which hides the per-call overhead of
    # small models; metrics stay per step, and a call never passes a step where logging,
    # evaluation, a checkpoint or a measurement is due (docs/runs.md#several-steps-per-call).
    config.steps_per_call = 1
    config.log_every = "50 steps"
    config.eval_every = "10 epochs"  # "0 steps": only at the end
    # How the run is laid out over the devices (docs/runs.md#several-devices-and-hosts; the
    # LAYOUT_FIELDS): neither block changes the numbers beyond float reassociation, so a run may
    # resume under another mesh, strategy or device count.
    config.mesh = ml_collections.ConfigDict()
    # Devices per mesh axis (bnresearch/parallel/mesh.py); -1: the devices the others leave.
    # `members` spreads a population's runs over the devices (1 for a single run); a batch is
    # split over `data` and `fsdp`; the state over `fsdp` when the strategy says so.
    config.mesh.shape = ml_collections.ConfigDict({"members": 1, "data": -1, "fsdp": 1})
    config.sharding = ml_collections.ConfigDict()
    config.sharding.strategy = "replicated"  # replicated | fsdp (bnresearch/parallel/sharding.py)
    config.sharding.min_size = 2**14  # fsdp: tensors of fewer elements stay replicated
    # (regex, spec) pairs tried first on each state tensor's path, e.g.
    # (("params/.*/kernel$", (None, None, None, "fsdp")),): the first match gives its spec.
    config.sharding.rules = ()
    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every = "5 epochs"  # "0 steps": only at the end
    config.checkpoint.keep = 3

    # Transfer learning (bnresearch/train/transfer.py, docs/runs.md#transfer-learning): start
    # from another run's checkpoint, loading the parameters and normalization state that match
    # by path and shape; a layer whose shape differs is re-initialised, a layer the checkpoint
    # lacks is refused unless `reinit` names it. The source run's files are only read.
    config.init_from = ml_collections.ConfigDict()
    config.init_from.workdir = ""  # the earlier run's workdir; "": start from scratch
    config.init_from.step = placeholder(int)  # its checkpoint to load; None: the latest
    # Path patterns (fnmatch of a path prefix, e.g. "head", "stage3_*") of layers re-initialised
    # even where the checkpoint fits: a classifier for other classes of the same count.
    config.init_from.reinit = ()
    # What trains, and how (bnresearch/optim/freezing.py): frozen parameters get exactly zero
    # updates and no optimizer state.
    config.fine_tune = ml_collections.ConfigDict()
    config.fine_tune.freeze = ()  # path patterns of frozen parameters, e.g. ("stem_*", "stage1_*")
    # N > 0: freeze all but the model's last N stages (models.stages; the last is the classifier,
    # so 1 is a linear probe); 0: none frozen by stage.
    config.fine_tune.train_last_stages = 0
    # lr multipliers of the loaded (body) and the re-initialised (head) parameters.
    config.fine_tune.body_lr = 1.0
    config.fine_tune.head_lr = 1.0
    # Batch statistics in training: adapt (batch statistics, running ones updated, as in any
    # training) | frozen (the running statistics, unchanged, as in evaluation) | reestimate
    # (recomputed by one pass over the training data before the first step, then frozen).
    config.fine_tune.norm = "adapt"
    return config
