from pathlib import Path

import pytest

from snn_runner.jobs import JobFileError, load_job

REPO = Path(__file__).resolve().parents[1]

BASE = """
name: t
kind: train
model: {hidden: [16], implementation: dense}
data: {dataset: randman, channels: 10, classes: 2, time_steps: 10}
train: {epochs: 1, batch_size: 8}
"""


def write(tmp_path, text, name="job.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, expected",
    [
        (BASE + "traing: {}\n", "unknown key 'traing'; did you mean 'train'?"),
        (BASE.replace("epochs: 1", "epohcs: 1"), "unknown key 'epohcs'; did you mean 'epochs'?"),
        (BASE.replace("epochs: 1", "epochs: one"), "train.epochs: expected int"),
        (BASE.replace("epochs: 1", "epochs: 0"), "train.epochs: invalid value 0"),
        (BASE.replace("time_steps: 10", "time_steps: 0"), "data.time_steps: invalid value 0"),
        (BASE.replace("hidden: [16]", "hidden: 16"), "model.hidden: expected a list of ints"),
        (BASE.replace("implementation: dense", "implementation: fastest"), "model.implementation: invalid value"),
        (BASE + "model2: {}\n", "unknown key 'model2'; did you mean 'model'?"),
        (BASE + "sweep: {grid: {model.max_activity: [0.1, 2.0]}}\n", "model.max_activity: invalid value 2.0"),
        (BASE + "sweep: {grid: {modl.hidden: [[8]]}}\n", "sweep key 'modl.hidden'"),
        (BASE + "sweep: {grid: {model.hiden: [[8]]}}\n", "unknown key 'hiden'; did you mean 'hidden'?"),
        (BASE + "sweep: {grod: {}}\n", "unknown key 'grod'; did you mean 'grid'?"),
        (BASE + "resources: {time_min: 0}\n", "resources.time_min: invalid value 0"),
        (BASE + "resources: {nodes: 0}\n", "resources.nodes: invalid value 0"),
        (BASE + "resources: {tasks_per_node: 0}\n", "resources.tasks_per_node: invalid value 0"),
        (BASE + "resources: {tasks_per_node: two}\n", "resources.tasks_per_node: expected int"),
        (BASE + "resources: {communication: nccl}\n", "resources.communication: invalid value 'nccl'"),
        (BASE + "resources: {task_per_node: 2}\n", "did you mean 'tasks_per_node'?"),
        (BASE.replace("kind: train", "kind: bench") + "bench: {network: huge}\n", "bench.network: invalid value 'huge'"),
        (BASE + "train: {epochs: 2}\n", "found the key 'train' twice (first on line 6, again on line 7)"),
        (BASE.replace("train: {epochs: 1, batch_size: 8}", "train: false"), "train (line 6): expected a mapping"),
        (BASE.replace("epochs: 1", "epochs: 1, seed: -1"), "train.seed: invalid value -1; expected a seed"),
        ("name: [\n", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping"),
    ],
)
def test_bad_job_files_are_rejected_with_file_key_and_reason(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(JobFileError) as err:
        load_job(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_missing_job_file(tmp_path):
    with pytest.raises(JobFileError, match="no such job file"):
        load_job(tmp_path / "nope.yaml")


def test_sweep_expands_grid_times_list_with_stable_ids(tmp_path):
    text = BASE + """
sweep:
  grid: {model.max_activity: [0.1, 0.2], train.seed: [0, 1, 2]}
  list: [{model.implementation: dense}, {model.hidden: [8]}]
"""
    tasks = load_job(write(tmp_path, text)).tasks()
    assert len(tasks) == 12
    assert [t.index for t in tasks] == list(range(12))
    assert tasks[0].config.model.max_activity == 0.1 and tasks[0].config.train.seed == 0
    assert tasks[1].config.train.seed == 1
    assert tasks[6].config.model.hidden == (8,)
    assert len({t.task_id for t in tasks}) == 12
    # ids depend on the resolved config only: same job elsewhere, same ids; a changed value, new ids
    again = load_job(write(tmp_path, text, "copy.yaml")).tasks()
    assert [t.task_id for t in again] == [t.task_id for t in tasks]
    changed = load_job(write(tmp_path, text.replace("batch_size: 8", "batch_size: 9"), "c2.yaml")).tasks()
    assert not {t.task_id for t in changed} & {t.task_id for t in tasks}


def test_identical_tasks_are_rejected(tmp_path):
    with pytest.raises(JobFileError, match="identical"):
        load_job(write(tmp_path, BASE + "sweep: {grid: {train.seed: [1, 1]}}\n"))


def test_shipped_job_files_are_valid():
    files = sorted((REPO / "jobs").glob("*.yaml"))
    assert any(f.name == "smoke.yaml" for f in files)
    for path in files:
        job = load_job(path)
        assert job.tasks(), path
    smoke = load_job(REPO / "jobs" / "smoke.yaml")
    assert len(smoke.tasks()) >= 4


def test_bench_task_config_is_the_timed_network():
    job = load_job(REPO / "jobs" / "bench-activity.yaml")
    for task in job.tasks():
        cfg = task.config
        assert (cfg.data.channels, *cfg.model.hidden, cfg.data.classes) == (1156, 1470, 1460, 10)
        assert (cfg.data.time_steps, cfg.train.batch_size, cfg.data.input_capacity) == (100, 48, 32)
        assert (cfg.data.dataset, cfg.model.weight_scale) == ("random", 2.5)
    deeper = load_job(REPO / "jobs" / "bench-multilayer.yaml").tasks()
    assert {t.config.model.hidden for t in deeper} == {(1470,) * n for n in (2, 3, 4, 5)}


@pytest.mark.parametrize("key", ["model: {hidden: [64]}", "train: {batch_size: 4}", "data: {time_steps: 7}"])
def test_bench_job_refuses_keys_its_preset_decides(tmp_path, key):
    text = f"name: b\nkind: bench\nbench: {{network: tiny}}\n{key}\n"
    with pytest.raises(JobFileError, match="set by the bench preset"):
        load_job(write(tmp_path, text))


def test_rules_between_sections_are_checked_when_the_job_is_loaded(tmp_path):
    text = BASE + ("sweep: {list: [{model.implementation: sparse_layer, train.rate_strength: 1.0, "
                   "train.backend: ipu}]}\n")
    with pytest.raises(JobFileError, match="not available on the IPU backend"):
        load_job(write(tmp_path, text))


def test_progress_interval_is_recorded_but_does_not_change_the_task_id(tmp_path):
    quiet = load_job(write(tmp_path, BASE.replace("batch_size: 8", "batch_size: 8, progress_s: 0"), "q.yaml"))
    loud = load_job(write(tmp_path, BASE, "l.yaml"))
    assert quiet.tasks()[0].task_id == loud.tasks()[0].task_id
    assert quiet.tasks()[0].config.train.progress_s == 0 and loud.tasks()[0].config.train.progress_s == 30


def test_a_task_found_by_index_must_still_have_its_id(tmp_path):
    from snn_runner.jobs import TaskChangedError

    path = write(tmp_path, BASE)
    submitted = load_job(path).task(0)
    assert load_job(path).task(0, expected_id=submitted.task_id) == submitted
    path.write_text(BASE.replace("epochs: 1", "epochs: 2"))
    with pytest.raises(TaskChangedError) as err:
        load_job(path).task(0, expected_id=submitted.task_id)
    message = str(err.value)
    assert str(path) in message and submitted.task_id in message and load_job(path).task(0).task_id in message
    with pytest.raises(TaskChangedError, match="no task 5"):
        load_job(path).task(5, expected_id="x")
