"""chipjax.eval.store: records.jsonl read back after a crash, appended on a fresh line."""
from __future__ import annotations

import json

import chipjax.eval as E


def test_read_records_skips_a_line_cut_short(tmp_path):
    path = tmp_path / "records.jsonl"
    good = [{"i": 0, "run": "a"}, {"i": 1, "run": "a"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in good) + '{"i": 2, "ru')
    assert E.read_records(str(path)) == good
    store = E.RecordStore(str(tmp_path), {"x": 1}, resume=True, every=1)
    store.add([{"i": 2, "run": "a"}])  # appended on a fresh line after the fragment
    assert [r["i"] for r in E.read_records(str(path))] == [0, 1, 2]

