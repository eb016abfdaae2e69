"""Output files: replaced whole by any number of writers, nothing left behind by a failed one, and a
regular file anywhere (``/dev/shm`` included) replaced rather than appended to."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hieravid.eval.records import write_json, write_jsonl
from hieravid.files import is_stream, replaced_whole


def test_two_writers_of_one_path_each_replace_it_whole(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    with replaced_whole(path) as first:
        first.write(json.dumps({"run": "A", "pad": "x" * 200}))
        first.flush()
        with replaced_whole(path) as second:  # another run writing the same file meanwhile
            second.write(json.dumps({"run": "B"}))
        assert json.loads(path.read_text()) == {"run": "B"}
    assert json.loads(path.read_text())["run"] == "A"  # the last to finish, whole
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_a_writer_that_fails_leaves_the_file_as_it_was_and_nothing_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "preds.jsonl"
    write_jsonl(path, [{"ok": 1}])
    with pytest.raises(TypeError):
        write_jsonl(path, [{"ok": 2}, {"bad": object()}])
    assert path.read_text() == '{"ok": 1}\n'
    with pytest.raises(KeyboardInterrupt), replaced_whole(tmp_path / "checkpoint.pt", binary=True) as f:
        f.write(b"partial")
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds.jsonl"]


def test_a_file_that_cannot_be_written_is_named_not_its_temporary_file(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    from hieravid.files import save_figure

    path = tmp_path / "missing" / "plot.png"
    for write in (lambda: save_figure(Figure(), path), lambda: write_json(path, {"a": 1})):
        with pytest.raises(FileNotFoundError) as raised:
            write()
        assert raised.value.filename == str(path) and ".tmp" not in str(raised.value)


def test_a_new_file_gets_the_usual_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        write_json(tmp_path / "shared.json", {"a": 1})
    finally:
        os.umask(umask)
    assert (tmp_path / "shared.json").stat().st_mode & 0o777 == 0o644


@pytest.mark.skipif(not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK), reason="no /dev/shm")
def test_a_regular_file_under_dev_is_replaced_not_appended_to() -> None:
    path = Path("/dev/shm") / f"hieravid-test-{os.getpid()}.json"
    try:
        assert not is_stream(path)
        write_json(path, {"round": 1})
        write_json(path, {"round": 2})
        assert json.loads(path.read_text()) == {"round": 2}
        assert not is_stream(path)
    finally:
        path.unlink(missing_ok=True)


def test_streams_are_this_process_s_own_outputs_and_what_is_not_a_regular_file(tmp_path: Path) -> None:
    assert is_stream("/dev/stdout") and is_stream("/dev/fd/2") and is_stream("/proc/self/fd/1")
    assert is_stream("/dev/null")
    os.mkfifo(tmp_path / "pipe")
    assert is_stream(tmp_path / "pipe")
    assert not is_stream(tmp_path / "new.json") and not is_stream(tmp_path / "pipe.json")
