"""The Grain input pipeline for One-to-All training (masked-outpainting samples).

Public API:

- `train_iterator(data_config, *, process_index=0, process_count=1)`: per-process training batches
  (dicts per `data_pipeline.batch`) with `get_state()` / `set_state()` and `metrics()`.
- `checkpoint_save_args(it)` / `checkpoint_restore_args(it)`: the Orbax `args` items that store the
  iterator state in a composite checkpoint (see `data_pipeline.pipeline`).
- `get_data_config(stage)`: the `config.data` section.
- `synthetic.write_dataset(folder, ...)`: a tiny random dataset for tests.
- Storage format: `data_pipeline.records`; building from the official layout or video folders:
  `data_pipeline.build` (`o2a data build`).
"""

from data_pipeline.config import get_data_config
from data_pipeline.pipeline import (
  TrainIterator,
  checkpoint_restore_args,
  checkpoint_save_args,
  train_iterator,
)

__all__ = [
  "TrainIterator",
  "checkpoint_restore_args",
  "checkpoint_save_args",
  "get_data_config",
  "train_iterator",
]
