"""``load_dataset()``: this learner's data, as FLOps' learners got it (a Hugging Face ``datasets.Dataset``).

FLOps fetched a learner's data from a data server on its node (Arrow Flight); here it comes from the learner's
own folder ``FLOPS_DATA_DIR`` (``round --data DIR`` gives learner i ``DIR/learner-<i>``): every ``*.parquet``
file in it, in name order, as one in-memory dataset (no Hugging Face cache, nothing downloaded).
"""

import os
from pathlib import Path


def load_dataset():
    folder = os.environ.get("FLOPS_DATA_DIR", "")
    if not folder:
        raise RuntimeError("load_dataset: FLOPS_DATA_DIR is not set (give the round a data folder: round --data DIR "
                           "serves learner i DIR/learner-<i>/)")
    files = sorted(Path(folder).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"load_dataset: no *.parquet file in FLOPS_DATA_DIR={folder}")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets
    import pyarrow
    import pyarrow.parquet

    table = pyarrow.concat_tables([pyarrow.parquet.read_table(path) for path in files])
    return datasets.Dataset(table)
