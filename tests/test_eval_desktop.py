"""The desktop task-suite evaluation CLI: baselines bound the table, families are selectable, bad
flags give a usage error instead of a traceback."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eval.desktop import suite, summarise

ROOT = Path(__file__).resolve().parents[1]


def test_suite_selects_families_and_splits():
    tasks = suite("heldout", 2, "settings.set_volume,mail")
    fams = {t.family for t in tasks}
    assert "settings.set_volume" in fams and "mail.attach_file" in fams and "files.rename_file" not in fams
    assert all(t.split == "heldout" for t in tasks) and len(tasks) == 2 * len(fams)
    assert "mail.attach_file" not in {t.family for t in suite("train", 1, "mail")}  # a held-out family
    with pytest.raises(ValueError, match="nosuchapp"):
        suite("train", 1, "nosuchapp")


def test_cli_baselines_bound_the_table(tmp_path):
    run = subprocess.run([sys.executable, "-m", "eval.desktop", "--policies=random,expert", "--seeds=2",
                          "--families=settings,files.delete_missing", f"--out={tmp_path}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    per = res["results"]
    expert, random = per["expert"], per["random"]
    assert expert["overall"]["success"] == 1.0
    assert random["overall"]["success"] < expert["overall"]["success"]
    assert set(expert["by_family"]) == {"settings.set_volume", "settings.theme_font", "settings.device_setup",
                                        "settings.set_locale", "settings.font_out_of_range",
                                        "files.delete_missing"}
    assert expert["by_family"]["settings.set_locale"]["heldout_family"] is True
    assert (tmp_path / "gallery.html").stat().st_size > 1000 and "| **overall** |" in run.stdout

    bad = subprocess.run([sys.executable, "-m", "eval.desktop", "--policies=random", "--families=nope",
                          f"--out={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--families" in bad.stderr and "Traceback" not in bad.stderr


def test_summarise_counts_steps_per_success():
    from types import SimpleNamespace as NS

    from env_server.types import TaskRef

    def ep(fam, ok, n, bad=0, aborted=""):
        steps = [NS(parsed=i >= bad) for i in range(n)]
        return NS(task=TaskRef(fam, 0, "train"), success=ok, steps=steps, aborted=aborted)

    s = summarise([ep("files.delete_file", True, 2), ep("files.delete_file", False, 4, bad=2),
                   ep("mail.reply", True, 1), ep("mail.reply", False, 3, bad=3, aborted="step 3: ABORTED")])
    assert s["overall"]["aborted"] == 1 and s["by_family"]["mail.reply"]["aborted"] == 1
    assert s["overall"]["success"] == pytest.approx(2 / 3)
    assert s["overall"]["steps_per_success"] == pytest.approx(1.5)
    assert s["overall"]["invalid_rate"] == pytest.approx(2 / 7)
    assert s["by_app"]["files"]["success"] == 0.5 and s["by_family"]["mail.reply"]["episodes"] == 1
