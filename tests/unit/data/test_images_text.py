"""Image folders, torchvision's MNIST/CIFAR-10 files, text tables, splitting, and the trainer's augmentation."""

import numpy as np
import pytest
import torch

from bigmodel_cli.config.recipe import resolve
from bigmodel_cli.data import manifest as manifests
from bigmodel_cli.data.prepare import prepare
from bigmodel_cli.data.preprocess import apply
from bigmodel_cli.data.split import split_rows
from bigmodel_cli.data.transform import augmentation, normalizer
from bigmodel_cli.errors import UsageError
from tests.unit.data.conftest import make_image_folder, write_cifar10, write_csv, write_mnist, write_recipe


def run(tmp_path, source, *sets, **data):
    recipe = write_recipe(tmp_path, source=str(source), **data)
    return prepare(resolve(str(recipe), {"data.prepared": str(tmp_path / "out")}, list(sets)))


def test_image_folder_any_size_and_mode_to_uint8(tmp_path):
    root = make_image_folder(tmp_path / "imgs")
    m = run(tmp_path, root, "data.image.size=16")
    assert (m["kind"], m["classes"], m["input_shape"], m["input_dtype"]) == ("image", ["cat", "dog"], [3, 16, 16],
                                                                            "uint8")
    x, y = (np.asarray(a) for a in manifests.load_split(tmp_path / "out", "train"))
    assert x.dtype == np.uint8 and set(y.tolist()) == {0, 1}
    # the class shows in its channel (cat: red, dog: green), after resizing and mode conversion
    assert (x[y == 0][:, 0] > 200).mean() > 0.6 and (x[y == 1][:, 1] > 200).mean() > 0.6
    grey = run(tmp_path, root, "data.image.size=8", "data.image.channels=1")
    assert grey["input_shape"] == [1, 8, 8] and grey["preprocessing"]["image"] == {"size": [8, 8], "channels": 1}


def test_stored_images_are_what_apply_gives_for_the_files(tmp_path):
    root = make_image_folder(tmp_path / "imgs", per_class=6)
    m = run(tmp_path, root, "data.image.size=12", "data.split={val: 0.0, test: 0.0}")
    x = np.load(tmp_path / "out/train/x.npy")
    files = sorted(root.rglob("*.*"))
    assert np.array_equal(apply(m, [str(f) for f in files]), x)


def test_corrupt_images_are_skipped_and_listed_or_an_error(tmp_path):
    root = make_image_folder(tmp_path / "imgs", per_class=8)
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage")
    m = run(tmp_path, root, "data.image.size=8")
    assert [b["file"] for b in m["report"]["bad_files"]] == [str(root / "cat" / "broken.png")]
    assert sum(m["splits"].values()) == 16 and m["report"]["rows_read"] == 17
    with pytest.raises(UsageError, match=r"broken.png: unreadable image"):
        run(tmp_path, root, "data.image.size=8", "data.on_bad_file=error")


def test_different_sizes_need_a_size(tmp_path):
    with pytest.raises(UsageError, match="images have different sizes; set data.image.size"):
        run(tmp_path, make_image_folder(tmp_path / "imgs"))


@pytest.mark.parametrize("gz", [False, True])
def test_torchvision_mnist_keeps_its_own_test_split(tmp_path, gz):
    root = write_mnist(tmp_path / "mnist", n_train=60, n_test=20, gz=gz)
    before = sorted(p.name for p in (root / "MNIST/raw").iterdir())
    m = run(tmp_path, f"torchvision:mnist:{root}")
    assert m["classes"] == [str(d) for d in range(10)] and m["input_shape"] == [1, 28, 28]
    assert m["splits"]["test"] == 20 and m["splits"]["train"] + m["splits"]["val"] == 60
    raw_test = np.frombuffer(_gunzip(root / "MNIST/raw", "t10k-images-idx3-ubyte"), np.uint8, offset=16)
    assert np.array_equal(np.load(tmp_path / "out/test/x.npy").reshape(-1), raw_test)
    assert sorted(p.name for p in (root / "MNIST/raw").iterdir()) == before  # source untouched


def _gunzip(folder, name):
    import gzip

    plain = folder / name
    return plain.read_bytes() if plain.exists() else gzip.decompress((folder / f"{name}.gz").read_bytes())


def test_torchvision_cifar10_without_md5_of_the_real_files(tmp_path):
    root = write_cifar10(tmp_path / "cifar", per_batch=10, n_test=20)
    m = run(tmp_path, f"torchvision:cifar10:{root}", "data.split.predefined=true")
    assert m["classes"][:3] == ["airplane", "automobile", "bird"] and m["input_shape"] == [3, 32, 32]
    assert m["splits"]["test"] == 20 and m["splits"]["train"] + m["splits"]["val"] == 50
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(UsageError, match="not readable as torchvision CIFAR10"):
        run(tmp_path, f"torchvision:cifar10:{root}")
    with pytest.raises(UsageError, match="torchvision:mnist: missing"):
        run(tmp_path, f"torchvision:mnist:{root}")


def test_text_vocabulary_is_fitted_on_train_only(tmp_path):
    rows = [{"text": f"The {'GOOD' if i % 2 else 'bad'} film {i}", "label": "pos" if i % 2 else "neg"}
            for i in range(60)]
    m = run(tmp_path, write_csv(tmp_path / "reviews.csv", rows), "data.text.max_length=8")
    assert (m["kind"], m["input_shape"], m["input_dtype"], m["classes"]) == ("text", [8], "int32", ["neg", "pos"])
    vocab = set(__import__("json").loads(m["preprocessing"]["text"]["tokenizer"])["model"]["vocab"])
    arrays = {s: np.asarray(manifests.load_split(tmp_path / "out", s)[0]) for s in manifests.SPLITS}
    train_numbers = {rows[i]["text"].split()[-1] for i in range(60)} & vocab
    assert "good" in vocab and "GOOD" not in vocab  # lowercased
    assert len(train_numbers) == m["splits"]["train"]  # only train rows' numbers are in the vocabulary
    assert (arrays["test"] == 1).sum(axis=1).tolist() == [1] * m["splits"]["test"]  # their number is [UNK]
    assert arrays["train"][:, 4:].max() == 0  # 4 tokens, then padding with 0
    assert np.array_equal(apply(m, ["The GOOD film"]), apply(m, [{"text": "the good film", "label": "x"}]))


@pytest.mark.parametrize("tokenizer", ["bpe", "wordpiece"])
def test_subword_tokenizers(tmp_path, tokenizer):
    rows = [{"text": f"wonderful movie {i}" if i % 2 else f"terrible movie {i}", "label": i % 2} for i in range(40)]
    m = run(tmp_path, write_csv(tmp_path / "r.csv", rows), f"data.text.tokenizer={tokenizer}",
            "data.text.vocab_size=60", "data.target=label")
    ids = apply(m, ["wonderful terrible"])
    assert ids.shape == (1, 128) and ids[0, 0] > 1 and m["preprocessing"]["text"]["vocab_size"] <= 60


def test_split_is_seeded_stratified_and_refuses_tiny_classes():
    y = np.repeat([0, 1, 2], [50, 30, 20])
    a = split_rows(100, y, 0.2, 0.2, seed=3, stratify=True, classes=["a", "b", "c"])
    b = split_rows(100, y, 0.2, 0.2, seed=3, stratify=True, classes=["a", "b", "c"])
    assert all(np.array_equal(a[s], b[s]) for s in a)
    assert np.array_equal(np.sort(np.concatenate(list(a.values()))), np.arange(100))
    assert np.bincount(y[a["test"]]).tolist() == [10, 6, 4]
    with pytest.raises(UsageError, match="class 'c' has only 2 row"):
        split_rows(5, np.array([0, 0, 0, 2, 2]), 0.2, 0.2, seed=0, stratify=True, classes=["a", "b", "c"])


def test_augmentation_is_declared_stored_and_built_for_the_trainer(tmp_path):
    root = make_image_folder(tmp_path / "imgs", per_class=6)
    m = run(tmp_path, root, "data.image.size=16", "data.augment={crop_padding: 2, horizontal_flip: 0.5, rotation: 10, "
            "color_jitter: {brightness: 0.2}, grayscale: 0.1}")
    assert m["preprocessing"]["augment"] == {"crop_padding": 2, "horizontal_flip": 0.5, "rotation": 10.0,
                                             "color_jitter": {"brightness": 0.2}, "grayscale": 0.1}
    batch = torch.from_numpy(np.load(tmp_path / "out/train/x.npy"))
    torch.manual_seed(0)
    out = augmentation(m)(batch)
    assert out.shape == batch.shape and out.dtype == torch.uint8 and not torch.equal(out, batch)
    assert np.array_equal(np.load(tmp_path / "out/train/x.npy"), batch.numpy())  # never baked into the arrays
    assert normalizer(m)(out).dtype == torch.float32
    with pytest.raises(UsageError, match="augmentation is for images"):
        (tmp_path / "table").mkdir()  # another source: its own output folder
        run(tmp_path / "table", write_csv(tmp_path / "t.csv", [{"a": i, "label": i % 2} for i in range(20)]),
            "data.augment.horizontal_flip=0.5")


def test_text_model_inputs_pass_the_normaliser_unchanged(tmp_path):
    rows = [{"text": f"word{i % 7} other", "label": i % 2} for i in range(30)]
    m = run(tmp_path, write_csv(tmp_path / "r.csv", rows), "data.target=label")
    ids = torch.from_numpy(np.load(tmp_path / "out/train/x.npy"))
    assert torch.equal(normalizer(m)(ids), ids) and ids.dtype == torch.int32


def test_augmentation_draws_its_own_parameters_for_every_image():
    manifest = {"input_shape": [3, 8, 8], "preprocessing": {"augment": {"horizontal_flip": 0.5}}}
    image = torch.arange(3 * 8 * 8, dtype=torch.uint8).reshape(3, 8, 8)
    torch.manual_seed(0)
    out = augmentation(manifest)(image.expand(64, 3, 8, 8))
    flipped = torch.tensor([torch.equal(o, image.flip(-1)) for o in out])
    assert 10 < int(flipped.sum()) < 54 and all(torch.equal(o, image) for o in out[~flipped])
    assert augmentation({"input_shape": [3, 8, 8], "preprocessing": {"augment": None}}) is None


def test_image_folder_with_train_and_test_folders_is_a_predefined_split(tmp_path):
    make_image_folder(tmp_path / "imgs" / "train", per_class=10, seed=1)
    make_image_folder(tmp_path / "imgs" / "test", classes=("cat", "dog", "owl"), per_class=3, seed=2)
    m = run(tmp_path, tmp_path / "imgs", "data.image.size=8")
    assert m["classes"] == ["cat", "dog", "owl"] and m["splits"]["test"] == 9
    assert m["splits"]["train"] + m["splits"]["val"] == 20 and m["report"]["class_counts"]["train"]["owl"] == 0
    assert m["report"]["split_method"] == "the folder's own train/test; val cut from train (seed 0)"
    test_files = sorted((tmp_path / "imgs" / "test").rglob("*.*"))
    assert np.array_equal(np.load(tmp_path / "out/test/x.npy"), apply(m, [str(f) for f in test_files]))
    pooled = run(tmp_path, tmp_path / "imgs", "data.image.size=8", "data.split.predefined=false")
    assert pooled["report"]["split_method"] == "stratified, seed 0" and sum(pooled["splits"].values()) == 29
