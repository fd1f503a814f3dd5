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
