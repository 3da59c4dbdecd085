"""label_map.pbtxt (the TF Object Detection API's StringIntLabelMap text): parse and write."""

from __future__ import annotations

import pytest

from rfcn_tf.data import label_map as lm
from rfcn_tf.data.errors import DataError

# The OD API's own layout: comments, display_name, a background item, a nested block and the
# `item: {` / `;` variants protobuf text format accepts.
OD_API_TEXT = """
# mscoco-style label map
item {
  name: "background"
  id: 0
}
item {
  name: "/m/01g317"
  id: 1
  display_name: "person"
}
item: {
  id: 3;
  name: 'car'
  keypoints { id: 0 label: "nose" }
  frequency: FREQUENT
}
item { id: 2 name: "bi\\"cycle" }
"""


def test_parse_od_api_text_sorted_by_id_without_background():
    items = lm.parse_label_map(OD_API_TEXT, source="coco.pbtxt")
    assert items == [
        lm.LabelMapItem(1, "/m/01g317", "person"),
        lm.LabelMapItem(2, 'bi"cycle'),
        lm.LabelMapItem(3, "car"),
    ]
    # display_name wins where present; labels follow ascending ids.
    assert lm.class_names_of(items) == ["person", 'bi"cycle', "car"]


def test_write_then_read_round_trip(tmp_path):
    items = [
        lm.LabelMapItem(7, "Platelets"),
        lm.LabelMapItem(2, "RBC", "red cell"),
        lm.LabelMapItem(90, 'quote" back\\slash'),
    ]
    path = tmp_path / "sub" / "label_map.pbtxt"
    lm.write_label_map(path, items)
    text = path.read_text()
    assert text.startswith('item {\n  id: 2\n  name: "RBC"\n  display_name: "red cell"\n}\n')
    assert lm.read_label_map(path) == sorted(items, key=lambda i: i.id)


def test_items_from_class_names():
    assert lm.items_from_class_names(["a", "b"]) == [
        lm.LabelMapItem(1, "a"),
        lm.LabelMapItem(2, "b"),
    ]
    assert [i.id for i in lm.items_from_class_names(["a", "b"], [1, 5])] == [1, 5]


@pytest.mark.parametrize(
    "text, message",
    [
        ("item { id: 1 name: 'a' }\nitem { id: 1 name: 'b' }", "map.pbtxt:2: id 1 appears twice"),
        (
            "item { id: 0 name: 'cat' }",
            "map.pbtxt:1: label map id 0 is reserved for the background",
        ),
        ("item { id: -2 name: 'cat' }", "map.pbtxt:1: label map ids must be >= 0, got -2"),
        ("item { name: 'cat' }", "map.pbtxt:1: item has no 'id'"),
        ("item { id: one name: 'cat' }", "item id must be an integer, got 'one'"),
        ("item { id: 1 }", "item 1 has neither 'name' nor 'display_name'"),
        ("item { id: 1 name: 'a' }\nitem { id: 2 name: 'a' }", "class name 'a' appears twice"),
        ("\n\nitem { id: 1 name: 'a' ", "ends inside a block"),
        ("label { id: 1 }", "map.pbtxt:1: expected 'item {', got 'label'"),
        ('item { id: 1 name: "a }', "map.pbtxt:1: cannot parse label map text"),
        ("# only a comment\n", "has no class items"),
    ],
)
def test_bad_label_maps_name_file_and_line(text, message):
    with pytest.raises(DataError, match=None) as info:
        lm.parse_label_map(text, source="map.pbtxt")
    assert message in str(info.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="cannot read label map .*nope.pbtxt"):
        lm.read_label_map(tmp_path / "nope.pbtxt")
