"""`dla report`: the HTML site from tiny real runs (MNIST), its config-diff logic, torn metrics, and a real browser."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from conftest import TINY, tiny_config
from dla import experiment
from dla.cli import main
from dla.errors import DlaError
from dla.kind import IMAGE_CLASSIFIER, LANGUAGE_MODEL, TEXT_CLASSIFIER
from dla.report.site import build_site, differing_keys, run_kind
from dla.rundir import RunDir
from dla.sweep import run_sweep

CHROMIUM = Path("/usr/bin/chromium")
SWEEP = """
sweep:
  base: lab1-mlp
  grid: {optim.lr: [0.001, 0.003], model.dropout: [0.0, 0.2]}
  run_name: "lr{optim.lr}-drop{model.dropout}"
  plot: {x: optim.lr, series: model.dropout}
"""
SWEEP_RUNS = ["lr0.001-drop0.0", "lr0.001-drop0.2", "lr0.003-drop0.0", "lr0.003-drop0.2"]


@pytest.fixture(scope="module")
def runs(data_root, tmp_path_factory) -> Path:
    """runs/lab1-mlp/base (gradient stats, OOD scores, FGSM) and a 2 x 2 sweep, a few seconds each."""
    root = tmp_path_factory.mktemp("report-runs")
    runs_dir = root / "runs"
    tiny = [o for o in TINY if not o.startswith("model.dropout")]  # the sweep varies it
    common = [*tiny, "train.epochs=2", "train.grad_stats_every=4", f"runs_dir={runs_dir}"]
    experiment.train(tiny_config(*common, "run_name=base"), data_root)
    base = str(runs_dir / "lab1-mlp" / "base")
    at = ["--data-root", str(data_root)]
    assert main([*at, "ood", base, "--ood", "noise-uniform", "--n", "200", "--detectors", "msp,energy"]) == 0
    assert main([*at, "attack", base, "--n", "64", "--eps", "0,4/255,16/255"]) == 0
    (root / "tiny-sweep.yaml").write_text(SWEEP)
    run_sweep(str(root / "tiny-sweep.yaml"), [*common, "sweep_name=tiny"], data_root)
    return runs_dir


def test_differing_keys_finds_exactly_the_keys_that_differ():
    a = {"name": "x", "run_name": "a", "optim": {"name": "adamw", "lr": 0.001}, "model": {"hidden": [64], "dropout": 0.0}}
    b = {"name": "x", "run_name": "b", "optim": {"name": "adamw", "lr": 0.003}, "model": {"hidden": [64], "dropout": 0.0}}
    c = {"name": "x", "run_name": "c", "optim": {"name": "adamw", "lr": 0.001}, "model": {"hidden": [128], "dropout": 0.0},
         "train": {"clip": 1.0}}
    assert differing_keys([a, b]) == ["optim.lr"]
    assert differing_keys([a, b, c]) == ["optim.lr", "model.hidden", "train.clip"]  # a key only some runs have differs
    assert differing_keys([a, a]) == []
    assert differing_keys([{"x": 1}, {"x": 1.0}, {"x": True}]) == ["x"]  # 1 and true are not the same setting


def test_run_kind_of_configs_this_version_cannot_load():
    """A config with no `kind:` (older runs), or the old fine-tuning dialect's, is told apart by its data and summary."""
    assert run_kind({"kind": "hf-text-classifier"}, {}).name == TEXT_CLASSIFIER  # old dialect
    assert run_kind({"data": {"name": "inferno"}}, {}).name == LANGUAGE_MODEL
    assert run_kind({}, {"unit": "round"}).name == LANGUAGE_MODEL
    assert run_kind({"data": {"name": "mnist"}}, {"unit": "epoch"}).name == IMAGE_CLASSIFIER
    assert run_kind({"kind": "language-model", "data": {"name": "mnist"}}, {}).name == LANGUAGE_MODEL  # declared wins


def test_site_pages_tables_and_figures(runs, tmp_path):
    build_site([runs / "tiny-sweep"], tmp_path / "report")  # an earlier report, of the sweep alone
    stale = tmp_path / "report" / "run" / "tiny-sweep-lr0.001-drop0.0.html"
    assert stale.is_file()
    (tmp_path / "report" / "notes.txt").write_text("mine")
    (tmp_path / "report" / "files" / "mine").mkdir(parents=True)
    (tmp_path / "report" / "files" / "mine" / "notes.txt").write_text("mine too")
    site = build_site([runs / "lab1-mlp"], tmp_path / "report")
    out = site.index.parent
    assert not stale.exists()  # pages the earlier report wrote go; the user's files stay
    assert (out / "notes.txt").read_text() == "mine" and (out / "files" / "mine" / "notes.txt").read_text() == "mine too"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left
    site = build_site([runs], tmp_path / "report")
    out = site.index.parent
    assert site.index == out / "index.html" and "| lab1-mlp/base |" in site.table
    assert (out / "assets" / "plotly.min.js").stat().st_size > 1_000_000  # written once, no CDN
    pages = list(out.rglob("*.html"))
    assert len(pages) == 1 + 2 + 5 and all("cdn." not in p.read_text() for p in pages)
    sweep = (out / "study" / "tiny-sweep.html").read_text()
    for name in SWEEP_RUNS:
        assert f">{name}</a>" in sweep
    assert "<code>optim.lr</code>" in sweep and "<code>model.dropout</code>" in sweep
    assert "<code>optim.name</code>" not in sweep.split("Config shared")[0]  # shared keys are folded away
    assert "lr.png" in sweep  # the sweep's own x-plot, copied
    base = (out / "run" / "lab1-mlp-base.html").read_text()
    for part in ("Gradient flow", "Accuracy under attack", "Out-of-distribution detection", "dla train "):
        assert part in base
    copied = {p.relative_to(out / "files" / "lab1-mlp-base").as_posix() for p in (out / "files" / "lab1-mlp-base").rglob("*.png")}
    assert {"ood/hist_noise-uniform.png", "ood/roc_pr_noise-uniform.png", "attack/fgsm_gallery.png"} <= copied
    for caption in ("ID vs OOD score histograms: noise-uniform", "ROC and precision-recall: noise-uniform",
                    "FGSM gallery", "FGSM accuracy against ε (× 1/255)"):  # written by the studies, in their manifests
        assert f"<figcaption>{caption}</figcaption>" in base
    assert "<h3>Out-of-distribution detection</h3>" in base and "<h3>Adversarial attacks</h3>" in base
    assert "lr.png</figcaption>" not in sweep and "test_acc against optim.lr" in sweep


def _copy_run(runs: Path, to: Path) -> Path:
    shutil.copytree(runs / "lab1-mlp" / "base", to, ignore=shutil.ignore_patterns("checkpoints", "tb"))
    return to


def test_a_new_study_appears_from_its_manifest_alone(runs, tmp_path):
    """A study the report has never heard of: its folder's manifest.json is all the report needs."""
    from dla.manifest import write_manifest

    run = _copy_run(runs, tmp_path / "runs" / "lab1-mlp" / "base")
    (run / "probe").mkdir()
    shutil.copy2(run / "ood" / "hist_noise-uniform.png", run / "probe" / "layers.png")
    (run / "probe" / "probe.md").write_text("| layer | accuracy (%) |\n| --- | --- |\n| fc1 | 91.5 |\n")
    write_manifest(run / "probe", "probe", "Linear probes", [{"file": "layers.png", "caption": "probe accuracy per layer"}],
                   [{"file": "probe.md"}], series=[{"plot": "probe-accuracy", "title": "Probe accuracy by layer",
                                                    "x": "layer", "y": "accuracy (%)", "name": "linear",
                                                    "points": [[1, 91.5], [2, 95.0]]}])
    out = build_site([tmp_path / "runs"], tmp_path / "report").index.parent
    page = (out / "run" / "lab1-mlp-base.html").read_text()
    assert "<h3>Linear probes</h3>" in page and "<figcaption>probe accuracy per layer</figcaption>" in page
    assert ">fc1<" in page  # its table
    assert "<h2>Probe accuracy by layer</h2>" in page and "Accuracy under attack" in page  # its series, plotted
    assert page.index("<h3>Adversarial attacks</h3>") < page.index("<h3>Linear probes</h3>")  # known studies first
    assert (out / "files" / "lab1-mlp-base" / "probe" / "layers.png").is_file()
    assert "Linear probes" in (out / "index.html").read_text()  # the study's badge


def test_a_run_written_before_manifests_still_shows_its_figures(runs, tmp_path, capsys):
    run = _copy_run(runs, tmp_path / "old" / "lab1-mlp" / "base")
    for manifest in run.rglob("manifest.json"):
        manifest.unlink()
    (run / "attack" / "manifest.json").write_text('{"study": "attack", "tit')  # damaged: shown from its files
    shutil.rmtree(run / "ood")
    (run / "ood").mkdir()
    shutil.copy2(runs / "lab1-mlp" / "base" / "ood" / "hist_noise-uniform.png", run / "ood")
    (run / "ood" / "table.md").write_text("| OOD set | detector | AUROC |\n| --- | --- | --- |\n| noise | msp | 0.9731 |\n")
    out = build_site([tmp_path / "old"], tmp_path / "report").index.parent
    page = (out / "run" / "lab1-mlp-base.html").read_text()
    assert "<h3>Out-of-distribution detection</h3>" in page and "0.9731" in page
    assert "<figcaption>hist_noise-uniform.png</figcaption>" in page  # captioned with its file name
    assert (out / "files" / "lab1-mlp-base" / "ood" / "hist_noise-uniform.png").is_file()
    assert "<h3>Adversarial attacks</h3>" in page and "plots/curves.png" not in page  # the interactive curves stand
    err = capsys.readouterr().err
    assert err.count("attack/manifest.json: damaged JSON") == 1 and "shown from its files" in err


def test_torn_last_metrics_line_still_builds_and_marks_the_run(runs, tmp_path):
    folder = tmp_path / "crashed" / "lab1-mlp"
    shutil.copytree(runs / "lab1-mlp" / "base", folder / "torn", ignore=shutil.ignore_patterns("checkpoints", "tb"))
    shutil.copytree(runs / "lab1-mlp" / "base", folder / "whole", ignore=shutil.ignore_patterns("checkpoints", "tb"))
    torn = RunDir(folder / "torn")
    records = torn.read_metrics()
    with open(torn.metrics, "a") as fh:
        fh.write('{"epoch": 3, "step": 12, "train_lo')  # the crash came mid-write
    assert torn.read_metrics() == records and torn.torn_metrics()
    assert not RunDir(folder / "whole").torn_metrics()

    assert main(["report", str(tmp_path / "crashed"), "--out", str(tmp_path / "rep")]) == 0
    page = (tmp_path / "rep" / "run" / "lab1-mlp-torn.html").read_text()
    assert "Torn metrics" in page
    assert "torn metrics" in (tmp_path / "rep" / "study" / "lab1-mlp.html").read_text()
    assert "Torn metrics" not in (tmp_path / "rep" / "run" / "lab1-mlp-whole.html").read_text()
    assert "1 torn metrics" in (tmp_path / "rep" / "index.html").read_text()

    lines = torn.metrics.read_text().splitlines()
    torn.metrics.write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")  # damage before the end is an error
    with pytest.raises(DlaError, match=r"metrics.jsonl:2: "):
        torn.read_metrics()


def test_empty_folder_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "rep")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dla: error: no run directories under")
    assert not (tmp_path / "rep").exists()  # nothing written
    assert main(["report", str(tmp_path / "missing")]) == 1
    assert "no such run directory" in capsys.readouterr().err


def test_report_replaces_only_a_report_it_wrote(runs, tmp_path, capsys):
    """An existing folder that is not a dla report, a file, a path below a file: refused, nothing changed."""
    mine = tmp_path / "mine"
    for name in ("files/notes.txt", "run/todo.md", "index.html"):
        (mine / name).parent.mkdir(parents=True, exist_ok=True)
        (mine / name).write_text("mine")
    (tmp_path / "afile").write_text("mine")
    for out, expect in ((mine, "not a dla report"), (tmp_path / "afile", "a file, not a folder"),
                        (tmp_path / "afile" / "site", "is a file, not a folder")):
        assert main(["report", str(runs / "lab1-mlp"), "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expect in err, err
    assert sorted(p.relative_to(mine).as_posix() for p in mine.rglob("*") if p.is_file()) == [
        "files/notes.txt", "index.html", "run/todo.md"] and (tmp_path / "afile").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "mine"]
    (tmp_path / "empty").mkdir()  # an empty folder takes a report
    assert main(["report", str(runs / "lab1-mlp"), "--out", str(tmp_path / "empty")]) == 0
    assert (tmp_path / "empty" / ".dla-report").is_file()
    # a file of the user's where the new report writes a page: refused, the old report left as it was
    build_site([runs / "tiny-sweep"], tmp_path / "rep")
    (tmp_path / "rep" / "run" / "lab1-mlp-base.html").write_text("mine")
    before = sorted((p.relative_to(tmp_path / "rep"), p.read_bytes()) for p in (tmp_path / "rep").rglob("*") if p.is_file())
    with pytest.raises(DlaError, match="lab1-mlp-base.html: a file dla report did not write"):
        build_site([runs], tmp_path / "rep")
    assert sorted((p.relative_to(tmp_path / "rep"), p.read_bytes()) for p in (tmp_path / "rep").rglob("*")
                  if p.is_file()) == before


def test_a_run_with_a_damaged_file_is_left_out_with_a_line(runs, tmp_path, capsys):
    folder = tmp_path / "runs" / "lab1-mlp"
    for name in ("good", "bad"):
        shutil.copytree(runs / "lab1-mlp" / "base", folder / name, ignore=shutil.ignore_patterns("checkpoints", "tb"))
    (folder / "bad" / "summary.json").write_text("[1, 2]\n")
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "rep")]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad/summary.json: not a JSON object" in err and "left out" in err
    assert (tmp_path / "rep" / "run" / "lab1-mlp-good.html").is_file()
    assert not (tmp_path / "rep" / "run" / "lab1-mlp-bad.html").exists()


def _local_target(page: Path, ref: str) -> Path | None:
    url = urlparse(ref)
    if url.scheme or ref.startswith("#") or not url.path:
        return None
    return (page.parent / unquote(url.path)).resolve()


@pytest.mark.slow
def test_site_in_headless_chromium(runs, tmp_path_factory):
    """Open every page in Debian's Chromium: no console errors, every plot drawn, expected rows, links resolve."""
    if not CHROMIUM.is_file() and os.environ.get("DLA_REQUIRE_DATA") != "1":
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    out = tmp_path_factory.mktemp("site") / "report"
    index = build_site([runs], out).index
    shots = tmp_path_factory.mktemp("screenshots")
    args = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"failed to load {r.url}"))
            seen: set[Path] = set()
            todo = [index]
            while todo:
                path = todo.pop(0)
                if path in seen:
                    continue
                seen.add(path)
                page.goto(path.as_uri())
                page.wait_for_load_state("load")
                plots = page.locator(".plotly-graph-div")
                for i in range(plots.count()):
                    plots.nth(i).locator("svg.main-svg, canvas").first.wait_for(state="attached", timeout=10_000)
                refs = page.eval_on_selector_all("a[href], img[src], script[src], link[href]",
                                                 "els => els.map(e => e.getAttribute('href') || e.getAttribute('src'))")
                for ref in refs:
                    target = _local_target(path, ref)
                    assert target is None or target.is_file(), f"{path.name}: broken link {ref}"
                    if target and target.suffix == ".html":
                        todo.append(target)
                if path == index:
                    assert page.locator("tbody tr").count() == 2  # lab1-mlp and the sweep
                    page.screenshot(path=shots / "index.png", full_page=True)
                if path.name == "tiny-sweep.html":
                    rows = page.locator("table.sortable tbody tr")
                    assert [rows.nth(i).locator("td").first.inner_text().rstrip(" ★") for i in range(4)] == SWEEP_RUNS
                    assert rows.count() == 4 and plots.count() == 2  # curves and gradient flow
                    page.locator("table.sortable th", has_text="test acc").click()  # sorting works
                    first = page.locator("table.sortable tbody tr").first.locator("td").first.inner_text()
                    assert first.endswith("★")  # descending: the best run first
                    page.screenshot(path=shots / "sweep.png", full_page=True)
            assert errors == []
            assert len(seen) == 1 + 2 + 5  # every page was reached by a link
        finally:
            browser.close()
    print(f"screenshots in {shots}")
    assert (shots / "index.png").stat().st_size > 10_000 and (shots / "sweep.png").stat().st_size > 50_000


@pytest.mark.slow
def test_study_commands_refresh_the_report(runs, data_root, tmp_path, capsys):
    """`dla attack --report` rewrites report/ from ./runs; without the flag it prints the command to run."""
    shutil.copytree(runs / "lab1-mlp" / "base", tmp_path / "runs" / "lab1-mlp" / "base", ignore=shutil.ignore_patterns("tb"))
    at = ["--data-root", str(data_root)]
    assert main([*at, "attack", "runs/lab1-mlp/base", "--method", "pgd", "--steps", "2", "--n", "32", "--eps", "0,8/255"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "to look at the results: dla report runs --out report"
    assert main([*at, "attack", "runs/lab1-mlp/base", "--n", "32", "--eps", "0,8/255", "--report"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "report: report/index.html"
    page = (tmp_path / "report" / "run" / "lab1-mlp-base.html").read_text()
    assert "files/lab1-mlp-base/attack/pgd_gallery.png" in page and "PGD" in page
