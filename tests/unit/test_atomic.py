import pytest

from bigmodel_cli import atomic


def test_write_replaces_only_on_success(tmp_path):
    dest = tmp_path / "a.json"
    atomic.write_json(dest, {"v": 1})
    with pytest.raises(RuntimeError), atomic.atomic_path(dest) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert dest.read_text().strip().startswith("{") and '"v": 1' in dest.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary left


def test_atomic_dir_swaps_in_and_keeps_old_on_failure(tmp_path):
    dest = tmp_path / "out"
    with atomic.atomic_dir(dest) as tmp:
        (tmp / "x").write_text("1")
    assert (dest / "x").read_text() == "1"
    with pytest.raises(ValueError), atomic.atomic_dir(dest) as tmp:
        (tmp / "x").write_text("2")
        raise ValueError
    assert (dest / "x").read_text() == "1"
    with atomic.atomic_dir(dest) as tmp:
        (tmp / "y").write_text("3")
    assert sorted(p.name for p in dest.iterdir()) == ["y"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        atomic.write_json(tmp_path / "n.json", {"v": float("nan")})
    assert not (tmp_path / "n.json").exists()


def test_a_linked_name_keeps_its_content_when_the_other_is_written_again(tmp_path, monkeypatch):
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    atomic.write_bytes(best, b"old best")
    atomic.write_bytes(last, b"epoch 3")
    atomic.link(last, best)  # an improving epoch: one file, two names
    assert best.read_bytes() == b"epoch 3" and best.stat().st_ino == last.stat().st_ino
    atomic.write_bytes(last, b"epoch 4")  # the next epoch rewrites last only
    assert best.read_bytes() == b"epoch 3" and last.read_bytes() == b"epoch 4"

    def no_links(src, dst):
        raise OSError("Operation not permitted")

    monkeypatch.setattr(atomic.os, "link", no_links)  # a filesystem without hard links gets a copy
    atomic.link(last, best)
    assert best.read_bytes() == b"epoch 4" and best.stat().st_ino != last.stat().st_ino
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]
