"""Task families over all apps: the expert solves everything in both styles, verifiers reject unsolved
states, a random policy solves almost nothing, splits are disjoint and deterministic."""

import random
import re

import pytest

from env_server.a11y import parse_rows
from env_server.actions import ActionError
from env_server.sim import SIM_SCHEMA
from env_server.sim.backend import SimBackend
from env_server.tasks import pools
from env_server.tasks.base import SPLITS, is_heldout_value, pick
from env_server.tasks.expert import Expert
from env_server.tasks.mail_tasks import SUBJECTS
from env_server.tasks.registry import FAMILIES, HELDOUT_FAMILIES, families, family, make_task
from env_server.tasks.settings_tasks import DEVICE_NAMES, VOLUMES
from env_server.types import TaskRef

SEEDS = 12


def run_expert(backend, task, style, coords=False):
    obs = backend.reset(task)
    expert = Expert(task, style, coords=coords)
    actions = []
    while not obs.last:
        action = expert.act(obs)
        actions.append(action)
        obs = backend.step(action)
    return obs, actions


def cases():
    for name in FAMILIES:
        for split in SPLITS:
            if split != "heldout" and name in HELDOUT_FAMILIES:
                continue
            yield name, split


APPS = ("files", "editor", "sheet", "terminal", "settings", "mail")


def test_enough_families_over_apps():
    assert len(FAMILIES) >= 24
    assert {a for f in FAMILIES.values() for a in f.apps} == set(APPS) == set(SIM_SCHEMA.apps)
    assert sum(not f.feasible for f in FAMILIES.values()) >= 3
    assert sum(len(f.apps) > 1 for f in FAMILIES.values()) >= 5  # multi-app workflows
    assert HELDOUT_FAMILIES and set(families("train")).isdisjoint(HELDOUT_FAMILIES)
    for app in APPS:
        mine = [n for n, f in FAMILIES.items() if app in f.apps]
        assert len(mine) >= 3, app
        assert any(n in HELDOUT_FAMILIES for n in mine), f"no held-out family uses {app}"
        assert any(n not in HELDOUT_FAMILIES for n in mine), f"no train family uses {app}"


@pytest.mark.parametrize("name, split", list(cases()))
def test_expert_solves_every_task_in_both_styles(name, split):
    backend = SimBackend()
    for seed in range(SEEDS):
        task = make_task(TaskRef(name, seed, split))
        api_obs, _ = run_expert(backend, task, "api")
        api_state = backend.desktop.state()
        assert api_obs.reward == 1.0, (task.task_id, "api", api_obs.error)
        gui_obs, actions = run_expert(backend, task, "gui", coords=seed % 3 == 0)
        assert gui_obs.reward == 1.0, (task.task_id, "gui", gui_obs.error)
        for a in actions:
            assert SIM_SCHEMA.parse(a).kind != "api", (task.task_id, a)
        # the API plan and the GUI plan leave the same files, settings and sent emails behind
        gui_state = backend.desktop.state()
        for key in ("files", "settings"):
            assert gui_state[key] == api_state[key], (task.task_id, key)
        assert gui_state["mail"]["sent"] == api_state["mail"]["sent"], task.task_id


@pytest.mark.parametrize("name, split", list(cases()))
def test_verifier_rejects_unsolved_states(name, split):
    fam = family(name)
    backend = SimBackend()
    for seed in range(4):
        task = make_task(TaskRef(name, seed, split))
        backend.reset(task)
        obs = backend.step("done()")
        assert obs.reward == 0.0, f"{task.task_id}: done() on the initial state must not pass"
        if not fam.feasible:
            backend.reset(task)
            assert backend.step("fail()").reward == 1.0
        else:
            run_expert(backend, task, "api")
            backend.desktop.declared = "fail"  # solved but claimed infeasible
            assert backend.evaluate() == 0.0


def test_tasks_are_deterministic_and_splits_disjoint():
    for name in FAMILIES:
        for split in SPLITS:
            if split != "heldout" and name in HELDOUT_FAMILIES:
                with pytest.raises(ValueError, match="held out"):
                    make_task(TaskRef(name, 0, split))
                continue
            a, b = make_task(TaskRef(name, 3, split)), make_task(TaskRef(name, 3, split))
            assert a == b
        if name not in HELDOUT_FAMILIES:
            train = {make_task(TaskRef(name, s, "train")).instruction for s in range(200)}
            held = {make_task(TaskRef(name, s, "heldout")).instruction for s in range(200)}
            novel = {make_task(TaskRef(name, s, "novel")).instruction for s in range(200)}
            assert train.isdisjoint(held), name
            assert len(train) > 20, name  # parameters really vary
            assert novel.isdisjoint(held), name


@pytest.mark.parametrize("pool", [pools.FOLDERS, pools.STEMS, SUBJECTS, DEVICE_NAMES])
def test_novel_values_are_invented_in_the_shape_of_train_values(pool):
    rng = random.Random(0)
    made = [v for _ in range(300) for v in pick(rng, pool, "novel", 2)]
    assert not set(made) & set(pool)  # never a train or held-out value
    assert not any(is_heldout_value(v) for v in made)
    assert len(set(made)) > 250  # really new names, not a handful
    shapes = {re.sub(r"[a-z]+", "a", re.sub(r"[A-Z][a-z]*", "A", v)) for v in pool if not is_heldout_value(v)}
    for v in made:  # same pattern of capitalised / lower-case words, digits and separators
        assert re.sub(r"[a-z]+", "a", re.sub(r"[A-Z][a-z]*", "A", re.sub(r"\d", "9", v))) in {
            re.sub(r"\d", "9", sh) for sh in shapes}, v
    assert pick(random.Random(1), pool, "novel", 3) == pick(random.Random(1), pool, "novel", 3)


def test_novel_numbers_come_from_the_train_values():
    rng = random.Random(0)
    got = {v for _ in range(2000) for v in pick(rng, VOLUMES, "novel")}
    assert got == {v for v in VOLUMES if not is_heldout_value(v)}


def test_sampling_a_split_covers_its_families():
    seen = {make_task(TaskRef("", s, "train")).family for s in range(400)}
    assert seen == set(families("train"))
    with pytest.raises(ValueError, match="unknown split"):
        make_task(TaskRef("", 0, "test"))
    with pytest.raises(ValueError, match="unknown task family"):
        make_task(TaskRef("files.nope", 0, "train"))


def random_action(rng: random.Random, obs) -> str:
    rows = parse_rows(obs.a11y)
    choice = rng.random()
    if choice < 0.5 and rows:
        return f"click(#{rng.choice(rows).id})"
    if choice < 0.6:
        return f"click({rng.randrange(1280)}, {rng.randrange(720)})"
    if choice < 0.7:
        return f'type("{rng.choice(["a", "hello", "Reports", "1"])}")'
    if choice < 0.8:
        return f'hotkey("{rng.choice(["enter", "escape", "ctrl", "backspace"])}")'
    if choice < 0.85:
        return f"scroll({rng.randint(-3, 3)})"
    if choice < 0.9:
        return f"double_click(#{rng.choice(rows).id})" if rows else "scroll(1)"
    return rng.choice(["done()", "fail()"])


def test_random_policy_solves_almost_nothing():
    rng = random.Random(0)
    backend = SimBackend()
    solved, n = 0, 0
    solved_feasible = 0
    for seed in range(300):
        obs = backend.reset(TaskRef("", seed, "train"))
        while not obs.last:
            action = random_action(rng, obs)
            try:
                SIM_SCHEMA.parse(action)
            except ActionError:  # pragma: no cover - the generator only makes valid actions
                raise
            obs = backend.step(action)
            assert "internal simulator error" not in obs.error, obs.error
        solved += obs.reward
        solved_feasible += obs.reward * family(backend.task.family).feasible
        n += 1
    # only infeasible tasks can be solved by chance (by saying fail()); nothing else should be
    assert solved / n < 0.1, solved / n
    assert solved_feasible / n < 0.02, solved_feasible / n
