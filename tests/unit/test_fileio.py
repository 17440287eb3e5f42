"""fileio's one temp-file-then-rename: a failed write leaves the old file and no temporary behind."""

from __future__ import annotations

import pytest

from tuneforge.fileio import atomic_file, write_bytes, write_text


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = write_text(tmp_path / "sub" / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]


def test_a_finished_write_replaces_the_file(tmp_path):
    target = write_bytes(tmp_path / "a.bin", b"old")
    assert write_bytes(target, b"\x00new") == target and target.read_bytes() == b"\x00new"
    assert write_text(target, "é\n").read_text(encoding="utf-8") == "é\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
