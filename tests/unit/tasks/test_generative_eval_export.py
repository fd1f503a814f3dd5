"""Scoring generators offline (classifier-feature FID/KID, IS, class shares, precision/recall, each with its
floor), VAE and restoration scores, the ONNX generator contract and `bigmodel generate`, and the bad inputs
each refuses with one line (exit 2)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch

from bigmodel_cli.errors import UsageError
from bigmodel_cli.evaluation.evaluate import Options, evaluate
from bigmodel_cli.evaluation.generative import class_scores, fid_kid, precision_recall
from bigmodel_cli.export.generator import GeneratorSpec, check_inputs, generate, latents
from bigmodel_cli.export.onnx_export import export_run
from bigmodel_cli.tasks.generation import psnr
from bigmodel_cli.tasks.restoration import corrupt, ssim


def main(*args: str) -> int:
    from bigmodel_cli.cli.app import main as cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main(list(args))
    return exit_info.value.code


# ---------------------------------------------------------------- the contract and the metrics


def test_seed_rule_is_numpy_only_and_prefix_stable():
    z = latents(7, 10, 3)
    assert z.dtype == np.float32 and z.shape == (10, 3)
    assert np.array_equal(z, np.random.default_rng(7).standard_normal((10, 3), dtype=np.float32))
    assert np.array_equal(latents(7, 4, 3), z[:4])  # image i is the same whatever n


def test_bad_generator_inputs_are_named():
    spec = GeneratorSpec("generation", [1, 8, 8], latent_dim=8, conditional=True, class_names=list("0123456789"))
    with pytest.raises(UsageError, match=r"z FP32 \[B, 8\]"):
        check_inputs(spec, np.zeros((2, 5), np.float32), [0, 1])
    with pytest.raises(UsageError, match="label INT64 \\[B\\] is required"):
        check_inputs(spec, np.zeros((2, 8), np.float32))
    with pytest.raises(UsageError, match="label 10 is out of range: classes are 0..9"):
        check_inputs(spec, np.zeros((2, 8), np.float32), [1, 10])
    plain = GeneratorSpec("generation", [1, 8, 8], latent_dim=8)
    with pytest.raises(UsageError, match="not conditional"):
        check_inputs(plain, np.zeros((2, 8), np.float32), [1, 2])
    with pytest.raises(UsageError, match=r"B >= 1"):
        check_inputs(plain, np.zeros((0, 8), np.float32))
    with pytest.raises(UsageError, match="finite numbers in float32"):  # finite in float64, not once cast
        check_inputs(plain, np.full((1, 8), 1e300))
    with pytest.raises(UsageError, match="floating-point"):
        check_inputs(plain, np.zeros((1, 8), np.int64))


def test_metrics_tell_the_same_distribution_from_another():
    from bigmodel_cli.evaluation.generative import RandomFeatures

    rng = np.random.default_rng(0)
    real = rng.integers(0, 255, (300, 1, 8, 8)).astype(np.float32)
    same = rng.integers(0, 255, (300, 1, 8, 8)).astype(np.float32)
    dark = same * 0.2
    extractor = RandomFeatures([1, 8, 8], features=16)
    real, same, dark = (extractor(torch.from_numpy(x)) for x in (real, same, dark))
    close, far = fid_kid(real, same, 10, 0), fid_kid(real, dark, 10, 0)
    assert close["fid"] < 0.1 * far["fid"] and close["kid"] < far["kid"]
    a = torch.randn(400, 4, generator=torch.Generator().manual_seed(0))
    assert precision_recall(a[:200], a[200:], 3)["precision"] > 0.8
    assert precision_recall(a[:200], a[200:] + 10, 3) == {"precision": 0.0, "recall": 0.0}
    uniform = np.eye(4)[np.arange(100) % 4]
    scores = class_scores(uniform, list("abcd"))
    assert scores["inception_score"] == pytest.approx(4) and scores["class_entropy"] == pytest.approx(1)
    assert class_scores(uniform, None) == {"inception_score": pytest.approx(4)}  # Inception's logits: no classes
    collapsed = class_scores(np.eye(4)[np.zeros(100, int)], list("abcd"))
    assert collapsed["class_coverage"] == 0.25 and collapsed["min_class_share"] == 0 and collapsed["class_entropy"] == 0


def test_psnr_ssim_and_the_corruption():
    from bigmodel_cli.config.schema import CorruptSection

    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ssim(x, x), torch.ones(16)) and (psnr(x, x) == 100).all()
    assert float(psnr(x, x + 0.1).mean()) == pytest.approx(20, abs=1e-3)
    noisy = corrupt(x, CorruptSection(gaussian_noise=0.5), torch.Generator().manual_seed(0))
    assert noisy.min() >= 0 and noisy.max() <= 1 and torch.equal(noisy, torch.round(noisy * 255) / 255)
    holed = corrupt(torch.ones(4, 1, 8, 8), CorruptSection(mask=0.25), torch.Generator().manual_seed(0))
    assert ((holed == 0).flatten(1).sum(1) == 16).all()  # a 4x4 hole in each 8x8 image
    # clip false: additive white Gaussian noise exactly as drawn, beyond [0, 1] and between 8-bit levels
    awgn = corrupt(x, CorruptSection(gaussian_noise=0.5, clip=False), torch.Generator().manual_seed(0))
    assert torch.equal(awgn, x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))
    assert awgn.min() < 0 and awgn.max() > 1 and float(psnr(awgn, x).mean()) == pytest.approx(6.02, abs=0.5)


# ---------------------------------------------------------------- eval


def test_gan_eval_reports_scores_beside_their_floor(gan_run, digits_run, capsys):
    report = evaluate(gan_run, Options(features=digits_run, samples=200, fail_over={"fid": 1e-6}, inception_layer=64))
    assert "--inception-layer: " in capsys.readouterr().err  # a classifier's layer is its penultimate one
    metrics, floor = report["metrics"], report["floor"]
    for name in ("fid", "kid", "inception_score", "class_entropy", "class_coverage", "precision", "recall"):
        assert metrics[name] is not None and name in floor
    assert floor["fid"] < metrics["fid"]  # real train vs real test beats 8 steps of a tiny GAN
    assert report["extractor"]["run"] == str(digits_run.resolve()) and len(report["extractor"]["sha256"]) == 64
    assert report["samples"]["n"] == report["n"] == 200 and report["reference"]["split"] == "test"
    assert sum(report["class_shares"].values()) == pytest.approx(1)
    assert report["gates"][0]["passed"] is False  # a gate that cannot hold fails (the CLI exits 3)
    saved = json.loads((gan_run / "eval/test.json").read_text())
    assert saved["metrics"]["fid"] == metrics["fid"] and (gan_run / "eval/test_samples.png").is_file()


def test_features_run_of_other_data_is_refused(gan_run, digits_run, tmp_path):
    for key, value, message in (("input_shape", [1, 16, 16], "images of shape"), ("classes", list("abcdefghij"),
                                                                                    "classes")):
        other = tmp_path / key
        shutil.copytree(digits_run, other)
        manifest = json.loads((other / "preprocessing.json").read_text())
        manifest[key] = value
        (other / "preprocessing.json").write_text(json.dumps(manifest))
        with pytest.raises(UsageError, match=message):
            evaluate(gan_run, Options(features=other))
    with pytest.raises(UsageError, match="a generation run"):
        evaluate(gan_run, Options(features=gan_run))
    with pytest.raises(UsageError, match="FID needs at least 65 generated images"):
        evaluate(gan_run, Options(features=digits_run, samples=20))
    with pytest.raises(UsageError, match="--features RUN_DIR"):
        evaluate(gan_run, Options())
    with pytest.raises(UsageError, match="--split train: the floor"):
        evaluate(gan_run, Options(features=digits_run, split="train"))


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """Inception-v3 with random weights, saved in the format of torch-fidelity's pt_inception-2015-12-05 file (the
    real one cannot be downloaded here)."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None):
        torch.manual_seed(0)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path_factory.mktemp("inception") / "pt_inception-random.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture()
def no_downloads(monkeypatch):
    """Any download fails the test; and Inception resizes to 75x75 (its smallest input) instead of 299x299, for
    ours and torchmetrics' alike: the same computation at a sixteenth of the cost on 2 CPU cores."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe
    from torchmetrics.image.fid import NoTrainInceptionV3

    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(fe, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(NoTrainInceptionV3, "INPUT_IMAGE_SIZE", 75)


def test_inception_weights_file_scores_as_torchmetrics_does(inception_weights, no_downloads, tmp_path):
    from unittest import mock

    from torchmetrics.image.fid import FrechetInceptionDistance

    from bigmodel_cli.evaluation.features import inception_features, load_extractor
    from bigmodel_cli.evaluation.generative import embed

    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (65, 1, 8, 8)).astype(np.uint8)
    fake = (real // 2).astype(np.uint8)
    extractor, record = inception_features(inception_weights, 64)
    ours = fid_kid(embed(extractor, real)[0], embed(extractor, fake)[0], 5, 0)["fid"]
    reference = FrechetInceptionDistance(feature=64, feature_extractor_weights_path=str(inception_weights))
    reference.update(torch.from_numpy(real).expand(-1, 3, -1, -1), real=True)  # torchmetrics wants RGB uint8
    reference.update(torch.from_numpy(fake).expand(-1, 3, -1, -1), real=False)
    assert ours > 0 and ours == pytest.approx(float(reference.compute()), rel=1e-5)
    assert record["features"] == 64 and record["classes"] is None and len(record["sha256"]) == 64
    full, _ = inception_features(inception_weights, 2048)
    feats, logits = full.features_and_logits(torch.zeros(2, 1, 8, 8))
    assert feats.shape == (2, 2048) and logits.shape == (2, 1008)  # pool3 and the Inception Score's logits
    (tmp_path / "notes.pth").write_text("not weights")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    for bad, message in ((tmp_path / "notes.pth", "not Inception-v3 weights"),
                         (tmp_path / "other.pth", "not Inception-v3 weights"), (tmp_path / "none.pth", "not found")):
        with pytest.raises(UsageError, match=message):
            load_extractor(bad, {"input_shape": [1, 8, 8]})
    with pytest.raises(UsageError, match=r"Inception layer 100 .* expected one of \[64, 192, 768, 2048\]"):
        inception_features(inception_weights, 100)
    import torchmetrics.image.fid as tm_fid

    with mock.patch.object(tm_fid, "_TORCH_FIDELITY_AVAILABLE", False), \
            pytest.raises(UsageError, match=r"need torch-fidelity: pip install 'bigmodel-cli\[inception\]'"):
        inception_features(inception_weights, 64)


def test_gan_eval_on_an_inception_weights_file(gan_run, inception_weights, no_downloads):
    report = evaluate(gan_run, Options(features=inception_weights, inception_layer=64, samples=65, split="val"))
    metrics = report["metrics"]
    assert metrics["fid"] > report["floor"]["fid"] > 0 and 0 <= metrics["precision"] <= 1
    assert "inception_score" not in metrics and report["class_shares"] is None  # layer 64 stops before the logits
    assert report["extractor"]["file"] == str(inception_weights.resolve()) and report["extractor"]["features"] == 64
    assert main("eval", str(gan_run), "--features", str(inception_weights), "--inception-layer", "64",
                "--samples", "64") == 2  # FID on 64 features needs 65 samples


def test_vae_eval_reports_elbo_and_reconstructions(vae_run):
    report = evaluate(vae_run, Options(fail_over={"nelbo": 1000}))
    m = report["metrics"]
    assert m["nelbo"] > 0 and m["bits_per_dim"] == pytest.approx(m["nelbo"] / (64 * np.log(2)))
    assert 0 < m["psnr"] < 100 and report["gates"][0]["passed"]
    assert (vae_run / "eval/test_reconstructions.png").is_file() and (vae_run / "eval/test_interpolation.png").is_file()


def test_restoration_eval_compares_with_the_corrupted_input(denoise_run):
    report = evaluate(denoise_run, Options())
    m = report["metrics"]
    assert 6 < m["psnr_corrupted"] < 12  # sigma 0.5 on [0, 1], clipped
    assert m["psnr_gain"] == pytest.approx(m["psnr"] - m["psnr_corrupted"]) and 0 <= m["ssim"] <= 1
    assert (denoise_run / "eval/test_restorations.png").is_file()


# ---------------------------------------------------------------- export and generate


def test_conditional_gan_exports_the_contract(gan_run, tmp_path):
    report = export_run(gan_run)
    assert report["verification"]["passed"] and report["verification"]["identical_pixels"] >= 0.999
    assert report["verification"]["float_pixels_from"].startswith("the exported graph")
    session = ort.InferenceSession(str(gan_run / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [("z", "tensor(float)"), ("label", "tensor(int64)")]
    assert [(o.name, o.type) for o in session.get_outputs()] == [("image", "tensor(uint8)")]
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["task"] == "generation" and meta["latent_dim"] == "8" and meta["conditional"] == "true"
    assert json.loads(meta["image_shape"]) == [1, 8, 8] and json.loads(meta["class_names"])[3] == "3"
    assert meta["z_distribution"] == "standard_normal" and "default_rng(seed)" in meta["z_seed_rule"]
    images = session.run(["image"], {"z": latents(0, 5, 8), "label": np.arange(5)})[0]
    assert images.shape == (5, 1, 8, 8) and images.dtype == np.uint8

    from_model, info = generate(gan_run / "model.onnx", n=20, seed=3, label=4)
    again, _ = generate(gan_run / "model.onnx", n=20, seed=3, label=4)
    from_run, _ = generate(gan_run, n=20, seed=3, label=4)
    assert np.array_equal(from_model, again) and info["labels"] == [4] * 20
    assert (from_model == from_run).mean() >= 0.999  # PyTorch and onnxruntime: the same images
    assert np.array_equal(from_model, session.run(["image"], {"z": latents(3, 20, 8),
                                                               "label": np.full(20, 4)})[0])  # a server's bytes


def test_generate_writes_grids_and_folders_and_refuses_bad_input(gan_run, denoise_run, tmp_path):
    assert main("generate", str(gan_run), "--n", "12", "--out", str(tmp_path / "grid.png")) == 0
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
    assert main("generate", str(gan_run), "--n", "3", "--label", "2", "--out", str(tmp_path / "twos")) == 0
    assert sorted(p.name for p in (tmp_path / "twos").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert main("generate", str(gan_run), "--label", "10", "--out", str(tmp_path / "x.png")) == 2
    np.save(tmp_path / "z.npy", np.zeros((4, 5), np.float32))
    assert main("generate", str(gan_run), "--z", str(tmp_path / "z.npy"), "--out", str(tmp_path / "x.png")) == 2
    assert main("generate", str(denoise_run), "--out", str(tmp_path / "x.png")) == 2
    assert not (tmp_path / "x.png").exists()
    assert main("generate", str(gan_run), "--seed", "-1", "--out", str(tmp_path / "x.png")) == 2
    assert not (tmp_path / "x.png").exists()


def test_generate_replaces_only_a_folder_of_its_own_pngs(gan_run, tmp_path, monkeypatch):
    """--out FOLDER is swapped in whole: a previous generate's folder is replaced, any other is refused intact."""
    out = tmp_path / "samples"
    assert main("generate", str(gan_run), "--n", "3", "--out", str(out)) == 0
    assert main("generate", str(gan_run), "--n", "2", "--out", str(out)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png"]
    (out / "notes.txt").write_text("mine")
    assert main("generate", str(gan_run), "--n", "2", "--out", str(out)) == 2
    assert (out / "notes.txt").read_text() == "mine" and len(list(out.iterdir())) == 3
    monkeypatch.chdir(out)
    (out / "notes.txt").unlink()
    assert main("generate", str(gan_run), "--n", "2", "--out", ".") == 2  # the working directory is never swapped
    assert main("generate", str(gan_run), "--n", "2", "--out", str(tmp_path)) == 2
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png"]


def test_restoration_model_takes_and_gives_uint8_images(denoise_run, restoration_data):
    report = export_run(denoise_run)
    assert report["verification"]["passed"]
    session = ort.InferenceSession(str(denoise_run / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [("input", "tensor(uint8)")]
    noisy = np.load(restoration_data / "test/x.npy")[:4]
    out = session.run(["image"], {"input": noisy})[0]
    assert out.dtype == np.uint8 and out.shape == noisy.shape
    assert session.get_modelmeta().custom_metadata_map["task"] == "restoration"
    with pytest.raises(UsageError, match="fp32 ONNX"):
        export_run(denoise_run, quantize="int8")
