"""Cross-task transfer: every study's exported profile decoded on every study's held-out prompts.

A profile found for task A is often deployed on task B as well; the transfer matrix says
what that costs. Each cell is a real measurement (`runner.measure`: plain and
self-speculative decoding interleaved on B's held-out prompts), stored in B's study so
reports can show it later without a model. `measure_transfer_matrix` does it all for finished
studies: their exported profiles (`exported_profile`), one loaded model, every study prepared on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import optuna
from tqdm.auto import tqdm

from skipsearch.config.profiles import Profile, load_profile
from skipsearch.config.studies import StudyConfig, output_paths
from skipsearch.errors import SkipsearchError
from skipsearch.search.runner import StudySetup, load_configured_model, measure, prepare

USER_ATTR = "transfer"


@dataclass
class TransferTask:
    """One study taking part: its prepared setup (held-out prompts, costs), study and exported profile."""

    setup: StudySetup
    study: optuna.Study
    profile: Profile


def check_same_model(tasks: list[TransferTask]) -> None:
    """Profiles only transfer between tasks of one model: the same weights, checked by fingerprint."""
    fingerprints = {t.setup.fingerprint for t in tasks} | {t.profile.model.fingerprint for t in tasks}
    if len(fingerprints) > 1:
        names = ", ".join(f"{t.study.study_name} ({t.profile.model.name})" for t in tasks)
        raise SkipsearchError(f"a transfer matrix needs studies of one model, got {names}; "
                              "report studies of different models without --transfer")


def measure_transfer(tasks: list[TransferTask], progress: bool = True) -> list[dict]:
    """Measure each profile on each task's held-out prompts; store each task's row in its study.

    Returns one row per (profile task, evaluation task) with the held-out matchness, the
    measured acceptance and speedup, and the predicted speedup.
    """
    check_same_model(tasks)
    rows = []
    bar = tqdm(total=len(tasks) ** 2, desc="transfer matrix", disable=not progress, leave=False)
    for target in tasks:
        target_rows = []
        target.setup.time_costs()  # predictions beside measurements taken now, on this machine
        for source in tasks:
            draft = source.profile.draft
            measured = measure(target.setup, source.profile.skip, draft.max_draft_tokens, draft.confidence_threshold)
            target_rows.append({
                "profile_task": source.setup.task_name,
                "profile_study": source.study.study_name,
                "eval_task": target.setup.task_name,
                "matchness": round(measured.matchness, 4),
                "acceptance_rate": round(measured.acceptance_rate, 4),
                "decode_speedup": round(measured.decode_speedup, 3),
                "predicted_speedup": round(measured.predicted_speedup, 3),
                "device": target.setup.costs.device,
                "identical": measured.lossless["identical"],
                "tie_flips": measured.lossless["tie_flip"],
                "errors": measured.lossless["error"],
            })
            bar.update(1)
        target.study.set_user_attr(USER_ATTR, target_rows)
        rows += target_rows
    bar.close()
    return rows


def profile_path(study: optuna.Study, config: StudyConfig) -> Path:
    """Where a study's exported profile lies: the path its search recorded, else the config's."""
    exported = study.user_attrs.get("exported_profile")
    return Path(exported) if isinstance(exported, str) else output_paths(config)[0]


def exported_profile(study: optuna.Study, config: StudyConfig) -> Profile:
    path = profile_path(study, config)
    if not path.is_file():
        raise SkipsearchError(f"study {config.name} has no exported profile at {path}; "
                              f"run skipsearch search for it first")
    return load_profile(path)


def measure_transfer_matrix(studies: list[tuple[optuna.Study, StudyConfig]], progress: bool) -> None:
    """Prepare every study on one loaded model and store the transfer matrix in the studies."""
    profiles = [exported_profile(study, config) for study, config in studies]
    model = load_configured_model(studies[0][1])
    tasks = [TransferTask(prepare(config, progress, loaded=model), study, profile)
             for (study, config), profile in zip(studies, profiles)]
    measure_transfer(tasks, progress)
