"""What a user sees in the MLflow UI after two trainings: a real browser on a real MLflow server.

Two real trainings through the flow (the second with lr0=0.01) land in experiment "ui-test";
headless Chromium then opens the pages a user opens and checks their text: the runs table
(names, dataset, model), the chart view comparing both runs, a run's model and system
metrics, and the registered model with its ``candidate`` alias. Every page is saved as a
PNG under ``$TRAINYARD_TEST_ARTIFACTS/mlflow-ui/`` (default ``.test-artifacts/mlflow-ui/``);
``compare.png`` is the README's picture.

Chromium is Debian's ``chromium`` package (Playwright's browser download is not reachable):
without it these tests skip, or fail under ``TRAINYARD_REQUIRE_BROWSER=1`` (CI).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest

from tasks.adapters.git_dvc import dvc_dir_md5
from tests.browser import INSTALL_HINT, browser_page, chromium_path, grow_to_content, save_screenshot
from tests.conftest import REPO, copy_dataset, like_a_users_machine, write_params

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

pytestmark = pytest.mark.slow

EXPERIMENT = "ui-test"
MODEL = EXPERIMENT  # the registered model is named after the experiment
OVERRIDES = (["train.epochs=2"], ["train.epochs=2", "train.lr0=0.01"])
TIMEOUT_MS = 60_000  # the first page load of a fresh server compiles nothing, but 2 shared cores are slow

# MLflow 3 opens an experiment as GenAI (traces overview) and pops its assistant panel over a third of
# the page on the first visit; a user who trains models switches to "Model training" and closes the
# panel once, and MLflow keeps both choices in localStorage. Preset them, as that user's browser has.
MLFLOW_PREFERENCES = """
try {
  localStorage.setItem('mlflow.workflowType_v1', JSON.stringify('machine_learning'));
  localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');
  localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');
} catch (e) {}
"""


@dataclass(frozen=True)
class Run:
    run_id: str
    name: str
    version: str  # of the registered model, read back with MlflowClient


@dataclass(frozen=True)
class Trained:
    server: str
    experiment_id: str
    older: Run
    newer: Run
    dataset: str  # the dataset input's name: the data folder's
    data_hash: str


@pytest.fixture(scope="module")
def chromium() -> str:
    """Checked before the trainings, so a machine without Chromium does not train for nothing."""
    path = chromium_path()
    if path is None:
        if os.environ.get("TRAINYARD_REQUIRE_BROWSER") == "1":
            pytest.fail(f"TRAINYARD_REQUIRE_BROWSER=1 but no Chromium is installed ({INSTALL_HINT})")
        pytest.skip(f"no Chromium here: {INSTALL_HINT}")
    return path


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, mlflow_server: str, prefect_api: None, tiny_dataset: Path
) -> Trained:
    """Two real 2-epoch trainings (the second with lr0=0.01) into a fresh experiment, one after the other."""
    from mlflow.tracking import MlflowClient

    from flows.train import TrainResult, train_flow

    mp = pytest.MonkeyPatch()
    work = tmp_path_factory.mktemp("ui")
    like_a_users_machine(mp, work)
    data = copy_dataset(tiny_dataset, work / "tiny")
    params = write_params(
        work / "params.yaml",
        data,
        tracking_uri=mlflow_server,
        experiment=EXPERIMENT,
        stage_root=work / "stage",
        plots=False,  # no page here shows them
    )
    try:
        results = [train_flow(params_path=str(params), overrides=list(o)) for o in OVERRIDES]
    finally:
        mp.undo()
    assert [r.outcome for r in results] == ["trained", "trained"]
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None

    def run(result: TrainResult) -> Run:
        found = client.search_model_versions(f"name = '{MODEL}' and run_id = '{result.run_id}'")
        return Run(result.run_id, result.run_name, found[0].version if found else "")

    return Trained(
        server=mlflow_server,
        experiment_id=experiment.experiment_id,
        older=run(results[0]),
        newer=run(results[1]),
        dataset=data.name,
        data_hash=dvc_dir_md5(data),
    )


@pytest.fixture
def page(chromium: str, trained: Trained) -> Iterator["Page"]:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    with browser_page(viewport=(1400, 900), init_script=MLFLOW_PREFERENCES) as page:
        page.set_default_timeout(TIMEOUT_MS)
        yield page


def artifacts() -> Path:
    """Where the screenshots go: CI keeps this folder as the test run's artifacts."""
    root = os.environ.get("TRAINYARD_TEST_ARTIFACTS") or str(REPO / ".test-artifacts")
    return Path(root) / "mlflow-ui"


def runs_url(t: Trained, query: str = "") -> str:
    return f"{t.server}/#/experiments/{t.experiment_id}/runs{query}"


def col(name: str) -> str:
    """A cell of the runs table (ag-grid): ``col-id`` is the column's key, e.g. attributes.`Models`."""
    return f'[role="gridcell"][col-id="attributes.`{name}`"]'


def chart(page: "Page", key: str) -> "Locator":
    """The chart card of metric ``key``: its title (H4) shows the key's last part and holds all of it."""
    card = page.get_by_test_id("experiment-view-compare-runs-card")
    return card.filter(has=page.locator(f'h4[title="{key}"]'))


# ---------------------------------------------------------------------- no browser


def test_names_differ_and_candidate_is_the_newer_runs_version(trained: Trained) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(trained.server)
    assert trained.older.name != trained.newer.name
    assert "lr0=0.01" in trained.newer.name and "lr0" not in trained.older.name
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert sorted(str(v.run_id) for v in versions) == sorted([trained.older.run_id, trained.newer.run_id])
    candidate = client.get_model_version_by_alias(MODEL, "candidate")
    assert candidate.run_id == trained.newer.run_id
    run_tags = client.get_run(trained.newer.run_id).data.tags
    assert candidate.tags["trainyard.data_hash"] == run_tags["trainyard.data_hash"] == trained.data_hash


# ---------------------------------------------------------------------- browser


def test_runs_table_shows_names_dataset_and_model_of_each_run(page: "Page", trained: Trained) -> None:
    from playwright.sync_api import expect

    page.goto(runs_url(trained))
    for run in (trained.older, trained.newer):
        # ag-grid splits a row into pinned and scrolling parts, all with row-id = the run id
        row = page.locator(f'[role="row"][row-id="{run.run_id}"]')
        expect(row.locator(f'{col("Run Name")} a[href*="/runs/{run.run_id}"]')).to_have_text(run.name)
        expect(row.locator(col("Dataset"))).to_contain_text(f"{trained.dataset} ({trained.data_hash[:36]})")
        model = row.locator(f"{col('Models')} a")
        expect(model.first).to_have_attribute("href", re.compile(rf"/models/{MODEL}/versions/{run.version}$"))
        expect(model.first).to_contain_text(MODEL)
    assert trained.older.version != trained.newer.version
    save_screenshot(page, artifacts(), "runs-table.png")


def test_chart_view_compares_both_runs(page: "Page", trained: Trained) -> None:
    """The runs page's chart view: one chart per metric, a line per run (the README's picture)."""
    from playwright.sync_api import expect

    page.goto(runs_url(trained, "?compareRunsMode=CHART"))
    search = page.get_by_placeholder("Search metric charts")
    # mAP is 0 after 2 epochs on the tiny dataset: check its chart, but picture the losses, which differ
    for text, keys in (("mAP", ["metrics/mAP50-95B"]), ("loss", ["train/box_loss", "val/box_loss"])):
        search.fill(text)
        for key in keys:
            for run in (trained.older, trained.newer):  # the legend names each line after its run
                expect(chart(page, key)).to_contain_text(f"{run.name} ({key})")
    search.blur()
    save_screenshot(page, artifacts(), "compare.png")


def test_run_page_charts_each_epoch(page: "Page", trained: Trained) -> None:
    from playwright.sync_api import expect

    page.goto(runs_url(trained, f"/{trained.newer.run_id}"))
    expect(page.get_by_role("heading", name=trained.newer.name)).to_be_visible()
    page.get_by_role("tab", name="Model metrics").click()
    sections = page.get_by_test_id("experiment-view-compare-runs-section-header")
    for section in ("train", "val", "metrics"):  # the part of the metric key before "/"
        expect(sections.filter(has_text=re.compile(rf"^{section}\s*\(\d+\)"))).to_be_visible()
    grow_to_content(page)  # charts render when on screen: show them all
    for key in ("train/box_loss", "val/box_loss", "metrics/mAP50-95B"):
        # titled "box_loss" in section "train"; the H4's title attribute holds the whole key
        expect(chart(page, key)).to_contain_text(f"{trained.newer.name} ({key})")  # its legend: a line of this run
    save_screenshot(page, artifacts(), "run-metrics.png")


def test_run_page_shows_system_metrics(page: "Page", trained: Trained) -> None:
    from playwright.sync_api import expect

    page.goto(runs_url(trained, f"/{trained.older.run_id}"))
    page.get_by_role("tab", name="System metrics").click()
    key = "system/cpu_utilization_percentage"
    expect(chart(page, key)).to_contain_text(f"{trained.older.name} ({key})")
    grow_to_content(page)
    save_screenshot(page, artifacts(), "run-system.png")


def test_registered_model_page_shows_versions_and_candidate(page: "Page", trained: Trained) -> None:
    from playwright.sync_api import expect

    page.goto(f"{trained.server}/#/models/{MODEL}")
    rows = page.get_by_role("row")
    newer = rows.filter(has=page.get_by_role("link", name=f"Version {trained.newer.version}", exact=True))
    older = rows.filter(has=page.get_by_role("link", name=f"Version {trained.older.version}", exact=True))
    expect(newer).to_contain_text("candidate")
    expect(older).to_be_visible()
    expect(older).not_to_contain_text("candidate")
    save_screenshot(page, artifacts(), "registered-model.png")
