import json
import math

import torch

from comicutils import evaluation, stylizers
from comicutils.cli import main


def test_identity_against_itself_is_perfect_and_rows_name_their_method():
    x = torch.rand(3, 3, 32, 32)
    methods = {"identity": stylizers.build("identity"), "cartoon": stylizers.build("cartoon")}
    df = evaluation.evaluate(methods, x, x, metric_names=["ssim", "psnr", "mse", "lpips_vgg"],
                             set_metrics=())
    assert list(df.method) == ["identity", "cartoon"]
    ident = df.set_index("method").loc["identity"]
    assert ident.ssim == 1.0 and math.isinf(ident.psnr) and ident.mse == 0.0
    assert math.isnan(ident.lpips_vgg) and "lpips_vgg" in df.attrs["unavailable"]  # n/a offline
    cart = df.set_index("method").loc["cartoon"]
    assert cart.ssim < 1 and math.isfinite(cart.psnr) and cart.seconds_per_image > 0
    assert set(df.attrs["outputs"]) == {"identity", "cartoon"}


def test_json_rows_have_no_nan_or_inf():
    x = torch.rand(2, 3, 32, 32)
    df = evaluation.evaluate([stylizers.build("identity")], x, x, metric_names=["psnr", "lpips_alex"],
                             set_metrics=())
    [row] = evaluation.to_json_rows(df)
    assert row["psnr"] == "inf" and row["lpips_alex"] is None
    json.dumps(row, allow_nan=False)                    # strict JSON: raises on any NaN or infinity left


def test_evaluate_cli_writes_one_row_per_method_with_every_column(tmp_path, mirror, capsys):
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--methods", "identity", "cartoon", "--size", "64", "--limit", "2",
                 "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["pairs"] == 2 and [r["method"] for r in payload["rows"]] == ["identity", "cartoon"]
    for row in payload["rows"]:
        assert set(evaluation.COLUMNS) <= set(row)
        assert row["mode"] == "smoke" and row["parameters"] == 0
    assert "n/a" in payload["unavailable"]["lpips_vgg"] and "n/a" in payload["unavailable"]["fid"]
    assert payload["rows"][0]["fid"] is None and payload["rows"][0]["kid"] is None
    assert "identity" in capsys.readouterr().out


def test_evaluate_cli_reports_missing_options(capsys):
    assert main(["evaluate", "--methods", "pix2pix", "--size", "64", "--limit", "1"]) == 2
    assert "checkpoint" in capsys.readouterr().err


def test_evaluate_cli_skips_a_method_whose_weights_are_missing(tmp_path, mirror, capsys, monkeypatch):
    monkeypatch.setenv("COMICUTILS_MODE", "auto")
    out = tmp_path / "e.json"
    assert main(["evaluate", "--methods", "identity", "animegan", "--size", "64", "--limit", "2",
                 "--json", str(out)]) == 0
    assert [r["method"] for r in json.loads(out.read_text())["rows"]] == ["identity"]
    assert "animegan skipped" in capsys.readouterr().err


class _BrightIsComicV2:
    """A toy style classifier: bright images are 'comic v2', dark ones 'photo'."""

    classes = ("photo", "comic v1", "comic v2")

    def predict(self, images):
        return torch.where(images.mean(dim=(1, 2, 3)) > 0.5, 2, 0)


def test_style_acc_uses_the_given_classifier_and_is_is_na_offline():
    x = torch.cat([torch.full((2, 3, 32, 32), 0.9), torch.full((2, 3, 32, 32), 0.1)])
    df = evaluation.evaluate({"identity": stylizers.build("identity")}, x, x, metric_names=["ssim"],
                             set_metrics=(), style_classifier=_BrightIsComicV2())
    row = df.set_index("method").loc["identity"]
    assert row.style_acc == 0.5 and row.ssim == 1.0
    assert math.isnan(row["is"]) and "IS n/a" in df.attrs["unavailable"]["is"]
    assert list(df.columns[-2:]) == ["style_acc", "is"]


def test_without_a_classifier_one_is_trained_once_and_announced(monkeypatch, capsys):
    from comicutils import gan

    calls = []
    monkeypatch.setattr(gan, "course_style_classifier", lambda **kw: calls.append(kw) or _BrightIsComicV2())
    evaluation._trained_style_classifier.cache_clear()
    try:
        x = torch.full((2, 3, 32, 32), 0.9)
        for _ in range(2):
            df = evaluation.evaluate([stylizers.build("identity")], x, x, metric_names=["ssim"], set_metrics=(),
                                     style_metrics=("style_acc",))
    finally:
        evaluation._trained_style_classifier.cache_clear()
    assert df.style_acc.tolist() == [1.0] and len(calls) == 1 and "is" not in df.columns
    assert "No style classifier given" in capsys.readouterr().out


def test_taef2_frechet_distance_is_computed_offline_and_zero_for_the_same_set(mirror):
    g = torch.Generator().manual_seed(0)
    comics = torch.rand(6, 3, 32, 32, generator=g)
    other = (comics * 0.3 + 0.6).clamp(0, 1)
    methods = {"oracle": stylizers.build("identity"), "washed": stylizers.build("identity")}
    df = evaluation.evaluate({"oracle": methods["oracle"]}, comics, comics, metric_names=["ssim"],
                             set_metrics=("fd_taef2",), style_metrics=())
    washed = evaluation.evaluate({"washed": methods["washed"]}, other, comics, metric_names=["ssim"],
                                 set_metrics=("fd_taef2",), style_metrics=())
    assert abs(df.fd_taef2.iloc[0]) < 1e-3 < washed.fd_taef2.iloc[0]
    assert "fd_taef2" not in df.attrs["unavailable"]


def test_portrait_report_counts_faces_identity_and_line_work(mirror):
    from comicutils import data, faces

    _, photos = data.portraits(128, data.PORTRAIT_NAMES[:3])
    blank = lambda x: torch.full_like(x, 0.5)          # noqa: E731  (no face survives)
    df = evaluation.portrait_report({"identity": stylizers.build("identity"), "blank": blank}, photos,
                                    comics=photos.flip(-1))
    ident, gone = df.loc["identity"], df.loc["blank"]
    assert ident["faces found"] == 3 and ident["ID < 0.6"] == 1.0 and ident["ID distance"] < 1e-6
    assert gone["faces found"] == 0 and math.isnan(gone["ID < 0.6"]) and gone["edge density"] == 0.0
    assert df.loc["photos (input)", "edge density"] == ident["edge density"] > 0
    assert gone["palette size"] == 1 < df.loc["photos (input)", "palette size"] == ident["palette size"]
    assert ident["ID distance"] < faces.SAME_PERSON_THRESHOLD
    assert set(df.attrs["outputs"]) == {"identity", "blank"}
