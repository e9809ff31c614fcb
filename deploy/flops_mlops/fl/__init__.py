"""The FL side of FLOps on Flower: an aggregator that alone logs to MLflow, and learners that never do.

Modules: ``data`` (synthetic, non-IID split), ``model`` (logistic regression as numpy arrays), ``settings``
(FLOPS_* environment variables and flags), ``round_tracker`` (the tracking policy, independent of Flower),
``best_model`` (the one best global model on disk),
``aggregator`` / ``learner`` (entry points ``python -m flops_mlops.fl.aggregator`` and
``python -m flops_mlops.fl.learner``), ``legacy`` and ``engine`` (the two Flower adapters), ``runner``
(runs a whole project on this machine; the ``round`` command), ``events`` and ``summary`` (what the aggregator
reports: text for a person, or FLOPS_EVENT lines for the runner), ``faults`` (test-only fault injection).

Entry-point settings (see ``settings`` and the README): FLOPS_TRACKING_URI, FLOPS_PROJECT, FLOPS_ROUNDS,
FLOPS_LEARNERS, FLOPS_SEED, FLOPS_AGGREGATOR_ADDRESS, FLOPS_LEARNER_INDEX, FLOPS_BETTER, FLOPS_ALIAS,
FLOPS_MODEL_DIR, FLOPS_TIMEOUT, FLOPS_LOCAL_EPOCHS, FLOPS_LEARNING_RATE.
"""
