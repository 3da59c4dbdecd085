"""Dataset sources, registered by their `data.source` name.

Every source yields the same example dict (docs/INTERFACES.md, "Examples"; `base.EXAMPLE_KEYS`)
and a `DatasetInfo`. Each module has a keyword-only builder that never reads the config
(`shapes_source`, `voc_source`, `coco_source`, `tfds_source`, `tfrecord_source`) and a
`from_config(data_cfg, *, split, shuffle=False, seed=0, shard=None)` that maps a `DataConfig`
onto it; `SOURCES` maps `data.source` to that `from_config`. A source whose `DatasetInfo` is
known without building its pipeline also has `info_from_config(data_cfg, *, split)`, listed in
`SOURCE_INFOS` (the callers that only need class names or the image count take that path:
`rfcn_tf.data.pipeline.source_info`).
"""

from __future__ import annotations

from collections.abc import Callable

from rfcn_tf.data.errors import DataError
from rfcn_tf.data.sources import coco_json, shapes, tfds, tfrecord, voc_xml
from rfcn_tf.data.sources.base import EXAMPLE_KEYS, DatasetInfo

__all__ = ["EXAMPLE_KEYS", "SOURCES", "SOURCE_INFOS", "DatasetInfo", "get_source"]

SOURCES: dict[str, Callable] = {
    "shapes": shapes.from_config,
    "voc": voc_xml.from_config,
    "coco_json": coco_json.from_config,
    "tfds": tfds.from_config,
    "tfrecord": tfrecord.from_config,
}

# The folder, COCO, TFDS and TFRecord sources learn their facts while building (parsing the
# annotations, reading the label map): they have no cheaper path than `from_config`.
SOURCE_INFOS: dict[str, Callable] = {"shapes": shapes.info_from_config}


def get_source(name: str) -> Callable:
    """The `from_config` builder registered as `name` (a `data.source` value)."""
    try:
        return SOURCES[name]
    except KeyError:
        raise DataError(f"unknown data.source {name!r}; sources: {', '.join(SOURCES)}") from None
