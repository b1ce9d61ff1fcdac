"""`dla.manifest`: what a study wrote, described beside its files; merged when a study adds to its folder."""

from __future__ import annotations

import json

import pytest

from dla.errors import DlaError
from dla.manifest import MANIFEST, legacy_manifest, read_manifest, study_rank, write_manifest


def _files(folder, *names):
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")


def test_a_second_study_call_adds_to_the_manifest(tmp_path):
    """As atomic_dir merges a study's files over its folder, the manifest keeps the entries of files not written now."""
    out, tmp = tmp_path / "attack", tmp_path / ".attack.tmp"
    _files(out, "fgsm.md", "fgsm_gallery.png", "pgd_gallery.png")
    fgsm = {"plot": "accuracy-vs-eps", "name": "FGSM", "points": [[0, 98.0], [8, 40.0]]}
    write_manifest(out, "attack", "Adversarial attacks", [{"file": "fgsm_gallery.png", "caption": "FGSM gallery"}],
                   [{"file": "fgsm.md"}], series=[fgsm])
    write_manifest(tmp, "attack", "Adversarial attacks", [{"file": "pgd_gallery.png", "caption": "PGD gallery"}],
                   series=[{**fgsm, "name": "PGD"}, {**fgsm, "points": [[0, 97.0]]}], over=out)
    (out / MANIFEST).write_bytes((tmp / MANIFEST).read_bytes())  # what atomic_dir's rename does
    manifest = read_manifest(out)
    assert [f["caption"] for f in manifest["figures"]] == ["FGSM gallery", "PGD gallery"]
    assert manifest["tables"] == [{"file": "fgsm.md"}]
    assert [(s["name"], s["points"]) for s in manifest["series"]] == [("FGSM", [[0, 97.0]]), ("PGD", fgsm["points"])]


def test_read_manifest_shows_only_files_inside_its_folder(tmp_path):
    folder = tmp_path / "probe"
    _files(folder, "a.png", "sub/b.png")
    (tmp_path / "secret.png").write_bytes(b"x")
    entries = [{"file": f} for f in ("a.png", "sub/b.png", "../secret.png", str(tmp_path / "secret.png"), "gone.png", 3)]
    (folder / MANIFEST).write_text(json.dumps({"study": "probe", "title": "Probe", "figures": entries,
                                               "series": [{"plot": "p", "name": "n", "points": [[1, "x"]]}]}))
    manifest = read_manifest(folder)
    assert [f["file"] for f in manifest["figures"]] == ["a.png", "sub/b.png"] and manifest["series"] == []
    assert read_manifest(tmp_path) is None  # no manifest
    (folder / MANIFEST).write_text("{oops")
    with pytest.raises(DlaError, match=r"probe/manifest.json: damaged JSON"):
        read_manifest(folder)
    (folder / MANIFEST).write_text('{"figures": []}')
    with pytest.raises(DlaError, match="needs a study name and a title"):
        read_manifest(folder)


def test_legacy_manifest_of_a_folder_written_before_manifests(tmp_path):
    ood = tmp_path / "ood"
    _files(ood, "hist_noise.png", "metrics.json", "odin_grid.md", "table.md")
    manifest = legacy_manifest(ood)
    assert manifest["title"] == "Out-of-distribution detection"
    assert [t["file"] for t in manifest["tables"]] == ["table.md", "odin_grid.md"]  # table.md first
    assert manifest["figures"] == [{"file": "hist_noise.png", "caption": "hist_noise.png"}]
    _files(tmp_path / "checkpoints", "best.safetensors")
    assert legacy_manifest(tmp_path / "checkpoints") is None  # not a study folder of old
    assert study_rank({"study": "plots"}) < study_rank({"study": "ood"}) < study_rank({"study": "new"}, "a")
