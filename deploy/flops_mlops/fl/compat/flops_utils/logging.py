"""``flops_utils.logging.logger``: a standard library logger, as FLOps' repositories use it."""

import logging as _logging

logger = _logging.getLogger("flops_utils")
if not logger.handlers:
    _handler = _logging.StreamHandler()
    _handler.setFormatter(_logging.Formatter("%(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(_logging.INFO)
