"""The FL side of FLOps on Flower: any ML repository in FLOps' contract, trained by learners on their own data,
tracked by an aggregator that alone logs to MLflow.

Modules: ``ml_repo`` (a repository: folder or git URL, its dependency file, loading its ModelManager),
``contract`` (the pre-flight check and the checks of every call), ``flavors`` (sklearn, pytorch, keras: inference
and logging), ``environments`` (a cached virtualenv per dependency set), ``settings`` (FLOPS_* environment
variables and flags), ``round_tracker`` (the tracking policy, independent of Flower), ``best_model`` (the one best
global model on disk), ``aggregator`` / ``learner`` (entry points ``python -m flops_mlops.fl.aggregator`` and
``python -m flops_mlops.fl.learner``), ``legacy`` and ``engine`` (the two Flower adapters), ``supervision``,
``runner`` and ``deployment`` (a whole project on this machine), ``command`` (the ``round`` command), ``compat``
(FLOps' ``flops_utils`` for repositories), ``faults`` (test-only fault injection).

Entry-point settings: see ``settings`` (FLOPS_TRACKING_URI, FLOPS_PROJECT, FLOPS_ML_REPO, FLOPS_FLAVOR,
FLOPS_ROUNDS, FLOPS_LEARNERS, FLOPS_MIN_LEARNERS, FLOPS_SEED, FLOPS_AGGREGATOR_ADDRESS, FLOPS_LEARNER_INDEX,
FLOPS_DATA_DIR, FLOPS_BETTER, FLOPS_ALIAS, FLOPS_MODEL_DIR, FLOPS_TIMEOUT, FLOPS_ROUND_TIMEOUT, ...).
"""
