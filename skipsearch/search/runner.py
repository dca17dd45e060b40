"""Runs a study end to end: model and task, reference continuations, costs, the Optuna
search, re-scoring of the best candidates with the real decoder, and profile export.

This is where the pieces meet the outside world (model loading, caches, the study
storage, profile files); the pieces themselves stay pure. Nothing here prints: progress
bars go to stderr, and results are returned to the command line.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import optuna
from tqdm.auto import tqdm

from skipsearch.config.profiles import (
    DraftSettings,
    Profile,
    ProfileMetrics,
    ProfileModel,
    check_profile_for_model,
    load_profile,
    save_profile,
)
from skipsearch.config.studies import StudyConfig, resolve_skip_budget
from skipsearch.engine.costs import CostModel, measure_costs, relative_costs
from skipsearch.engine.decoding import DecodeSettings, DecodeStats, decode
from skipsearch.engine.drafting import PolicySettings, Priors
from skipsearch.engine.lossless import LosslessCounts, classify
from skipsearch.engine.models import LoadedModel, load_model, model_fingerprint
from skipsearch.engine.prediction import predicted_speedup_from_stats
from skipsearch.engine.replay import measure_priors, prompt_costs, replay_drafting
from skipsearch.engine.skipping import SkipSet, eligible_sublayers
from skipsearch.errors import SkipsearchError
from skipsearch.search.baselines import MethodResult, evenly_spaced, importance_ranking, least_important
from skipsearch.search.draft_grid import NGRAM, THRESHOLDS
from skipsearch.search.layer_dp import clasp, knapspec, knapspec_shortlist
from skipsearch.search.neighbours import LocalSearch, neighbours
from skipsearch.search.objectives import get_objective
from skipsearch.search.references import Reference, reference_continuations
from skipsearch.search.scoring import ProxyScorer
from skipsearch.search.storages import redact
from skipsearch.search.study import (
    SkipObjective,
    best_trials,
    completed_trials,
    enqueue_warm_starts,
    make_sampler,
    open_study,
)
from skipsearch.search.tasks import check_prompt_fits, format_prompt, load_task, split_prompts
from skipsearch.search.workers import run_trials, trial_counts
from skipsearch.version import __version__

log = logging.getLogger(__name__)

@dataclass
class StudySetup:
    """Everything a search needs, built once per process."""

    config: StudyConfig
    loaded: LoadedModel
    fingerprint: str
    eligible: list[tuple[str, int]]
    k: int
    search_refs: list[Reference]
    heldout_refs: list[Reference]
    scorer: ProxyScorer
    warm_profiles: list[tuple[str, Profile]] = field(default_factory=list)  # (path, profile), checked against the model
    _costs: CostModel | None = None
    _heldout_scorer: ProxyScorer | None = None
    _runtime_scorer: ProxyScorer | None = None

    @property
    def costs(self) -> CostModel:
        """The cost model the objective and the predictions use: the study's shared one (set by
        `prepare_study`) or one timed here (`time_costs`). Reading it never times anything."""
        if self._costs is None:
            raise SkipsearchError("internal error: the cost model is not set yet; call prepare_study or time_costs "
                                  "first (please report this)")
        return self._costs

    @costs.setter
    def costs(self, costs: CostModel) -> None:
        self._costs = costs

    def time_costs(self) -> CostModel:
        """Time this model's forward passes here and now (a benchmark of some seconds) and use them.
        The study's stored costs were timed by whichever worker came first, perhaps on another
        machine or under other load; a prediction set beside a measurement taken now needs costs
        timed now, on the machine that measures."""
        context = int(sum(len(r.prompt_ids) for r in self.search_refs) / len(self.search_refs))
        self._costs = measure_costs(self.loaded.model, context_tokens=context, max_verify_tokens=self.verify_tokens,
                                    contexts=self.cost_contexts)
        return self._costs

    @property
    def cost_contexts(self) -> list[int]:
        """Where attention is timed besides the mean prompt: 128, 512 and 2048 tokens as far as the
        task's prompts reach, and the longest prompt with its continuation."""
        longest = max(len(r.prompt_ids) + len(r.continuation) for r in self.search_refs + self.heldout_refs)
        limit = getattr(self.loaded.model.config, "max_position_embeddings", None) or longest + 1
        longest = min(longest, limit - 1)
        return [n for n in (128, 512, 2048) if n < longest] + [longest]

    @property
    def verify_tokens(self) -> int:
        """The longest verify pass a round may make: a layer-skip draft or an n-gram draft, plus one."""
        return self.config.draft.max_draft_tokens + NGRAM.max_tokens + 1

    def fits(self, costs: CostModel) -> bool:
        """Whether stored costs serve this model and draft length."""
        return (costs.num_layers == self.loaded.model.config.num_hidden_layers
                and len(costs.verify) >= self.verify_tokens)

    @property
    def heldout_scorer(self) -> ProxyScorer:
        if self._heldout_scorer is None:
            self._heldout_scorer = ProxyScorer(self.loaded.model, self.heldout_refs, self.config.search.draft_cache)
        return self._heldout_scorer

    @property
    def engine_draft(self) -> bool:
        """Whether the study searches for an engine's draft model (`search.draft_cache: own`): it
        drafts a fixed length per round with a confidence stop, without n-grams or a policy."""
        return self.config.search.draft_cache == "own"

    @property
    def runtime_policies(self) -> bool:
        """Whether trials weigh skipsearch's runtime policy (n-gram drafts, the cost-model choice)."""
        return self.config.search.objective != "matchness" and not self.engine_draft

    @property
    def runtime_scorer(self) -> ProxyScorer:
        """The search prompts scored as skipsearch's runtime drafts (the full model's cache): where a
        profile's priors come from, whatever cache the study searched for."""
        if not self.engine_draft:
            return self.scorer
        if self._runtime_scorer is None:
            self._runtime_scorer = ProxyScorer(self.loaded.model, self.search_refs)
        return self._runtime_scorer

    @property
    def thresholds(self) -> tuple[float, ...]:
        """Confidence thresholds the search tries: a fixed grid and the study's own."""
        return tuple(sorted(set(THRESHOLDS) | {self.config.draft.confidence_threshold}))

    @property
    def task_name(self) -> str:
        task = self.config.task
        return task.source + (f"/{task.category}" if task.category else "")


def check_output_path(path: Path, is_default: bool) -> None:
    """Fail before any work when an explicit output folder is missing; default folders are made."""
    if path.parent.is_dir():
        return
    if is_default:
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    raise SkipsearchError(f"output folder {path.parent} does not exist; create it or choose another path")


def load_configured_model(config: StudyConfig) -> LoadedModel:
    """The study's model, loaded as its `model:` section says."""
    model = config.model
    return load_model(model.name, dtype=model.dtype, device=model.device, device_map=model.device_map,
                      attn_implementation=model.attn_implementation)


def prepare(config: StudyConfig, progress: bool = True, loaded: LoadedModel | None = None,
            warm_starts: tuple[str, ...] | list[str] = ()) -> StudySetup:
    """Load the task's prompts, the model (unless given), the warm-start profiles and the references.

    Cheap checks come first, so bad input fails before the slow steps: the task, then the
    model, then whether each warm-start profile was made for this model. Costs are a step of
    their own: `prepare_study` (the study's shared ones) or `StudySetup.time_costs`."""
    task_cfg = config.task
    task = load_task(task_cfg.source, data=task_cfg.data, category=task_cfg.category, field=task_cfg.field,
                     split=task_cfg.split, category_field=task_cfg.category_field)
    search_prompts, heldout_prompts = split_prompts(task, task_cfg.search_prompts, task_cfg.heldout_prompts,
                                                    config.search.seed)
    loaded = loaded or load_configured_model(config)
    model, tokenizer = loaded.model, loaded.tokenizer
    fingerprint = model_fingerprint(model)
    warm_profiles = [(path, load_profile(path)) for path in warm_starts]
    for path, profile in warm_profiles:
        try:
            check_profile_for_model(profile, model, fingerprint)
        except SkipsearchError as exc:
            raise SkipsearchError(f"warm start {path}: {exc}") from None
    max_positions = getattr(model.config, "max_position_embeddings", None)

    def encode(prompts):
        encoded = []
        for prompt in prompts:
            ids = format_prompt(tokenizer, prompt.text, task_cfg.chat_template)
            check_prompt_fits(ids, max_positions, task_cfg.reference_tokens, prompt.id)
            encoded.append((prompt.id, ids))
        return encoded

    task_key = f"{task.name}:{task_cfg.category}:{task_cfg.chat_template}"
    search_refs = reference_continuations(model, fingerprint, task_key, encode(search_prompts),
                                          task_cfg.reference_tokens, progress)
    heldout_refs = reference_continuations(model, fingerprint, task_key, encode(heldout_prompts),
                                           task_cfg.reference_tokens, progress)
    eligible = eligible_sublayers(model.config.num_hidden_layers, config.search.keep_first, config.search.keep_last)
    k = resolve_skip_budget(config.search.skip_budget, len(eligible))
    return StudySetup(config, loaded, fingerprint, eligible, k, search_refs, heldout_refs,
                      ProxyScorer(model, search_refs, config.search.draft_cache), warm_profiles)


def importance(setup: StudySetup, study: optuna.Study, progress: bool) -> list[tuple[tuple[str, int], float]]:
    """Each eligible sublayer's matchness when skipped alone; stored in the study, computed once."""
    stored = study.user_attrs.get("importance")
    if stored and len(stored) == len(setup.eligible):
        return [((kind, layer), value) for kind, layer, value in stored]
    bar = tqdm(total=len(setup.eligible), desc="sublayer importance", disable=not progress, leave=False)

    def score(skip_set):
        bar.update(1)
        return setup.scorer.score(skip_set)

    ranking = importance_ranking(score, setup.eligible)
    bar.close()
    study.set_user_attr("importance", [[kind, layer, value] for (kind, layer), value in ranking])
    return ranking


DP_METHODS = ("clasp", "clasp-sublayers", "knapspec")


def free_count_limit(setup: StudySetup) -> int:
    """The largest count KnapSpec considers choosing its own: twice the study's budget, as the
    largest least-important warm start, at most half the eligible sublayers."""
    return max(1, min(2 * setup.k, len(setup.eligible) // 2))


def dp_method(setup: StudySetup, name: str, k: int | None) -> MethodResult:
    """CLaSp's or KnapSpec's set for this study on its search prompts; with k None KnapSpec picks
    its own count (up to `free_count_limit`). Needs the study's costs (KnapSpec weighs blocks by them)."""
    if name == "knapspec":
        return knapspec(setup.scorer, setup.costs, setup.eligible, k, setup.config.draft.max_draft_tokens,
                        setup.thresholds, max_count=free_count_limit(setup))
    if name not in DP_METHODS:
        raise SkipsearchError(f"unknown dynamic program {name!r}; use one of {', '.join(DP_METHODS)}")
    return clasp(setup.scorer, setup.eligible, setup.k if k is None else k, whole_layers=name == "clasp")


def warm_start_sets(setup: StudySetup, ranking, progress: bool = False) -> list[SkipSet]:
    """Sets the search tries before sampling: warm-start profiles, then the strongest first:
    CLaSp's and KnapSpec's sets (with a free count also KnapSpec's shortlist at its own count,
    which the trials score as KnapSpec would, and no skip set at all: n-gram drafting alone), the
    least important sublayers, evenly spaced layers, two nearest neighbours of each dynamic
    program's set, with a free count the least important sublayers at half and twice the count."""
    k, eligible = setup.k, setup.eligible
    fixed = get_objective(setup.config.search.objective).fixed_count
    bar = tqdm(total=2 if fixed else 3, desc="warm starts (dynamic programs)", disable=not progress, leave=False)
    found = []
    for name in ("clasp-sublayers", "knapspec"):
        found.append(dp_method(setup, name, k).best)
        bar.update(1)
    # the dynamic programs' sets first: they generalise best out of sample, and a small budget or
    # few trials must not run out on weaker starts before reaching them
    sets = list(found)
    if not fixed:
        sets += knapspec_shortlist(setup.scorer, setup.costs, eligible, None, setup.config.draft.max_draft_tokens,
                                   max_count=free_count_limit(setup))
        if not setup.engine_draft:  # an engine's draft model without a skip set is the model itself
            sets.append(SkipSet())
        bar.update(1)
    bar.close()
    sets += [least_important(ranking, k), evenly_spaced(eligible, k)]
    for dp_set in found:
        sets += neighbours(dp_set, dict(ranking), eligible, fixed_count=fixed)[:2]
    if not fixed:
        sets += [least_important(ranking, size) for size in (max(1, k // 2), min(len(eligible), 2 * k))]
    allowed = set(eligible)
    given = []  # the user's own warm starts go first: a short study must not drop them
    for path, profile in setup.warm_profiles:
        kept = [s for s in profile.skip.sublayers if s in allowed]
        if len(kept) < len(profile.skip):
            log.warning("warm start %s: dropped sublayers outside the eligible layers", path)
        if kept:
            given.append(SkipSet.from_sublayers(kept))
    return given + sets


def prepare_study(setup: StudySetup, study: optuna.Study, progress: bool) -> None:
    """The study's one-off work, done by the first worker and reused by the others: the sublayer
    ranking and the warm starts it yields, and the costs every worker's objective uses (so trial
    values from different workers compare)."""
    search_cfg = setup.config.search
    # studies prepared before the attribute existed were all searched for the shared cache
    searched_for = study.user_attrs.get("draft_cache",
                                        "shared" if study.user_attrs.get("warm_started") else search_cfg.draft_cache)
    if searched_for != search_cfg.draft_cache:
        raise SkipsearchError(f"study {study.study_name!r} scores drafts on the {searched_for} draft cache, not "
                              f"the {search_cfg.draft_cache} one; give the study another name or storage")
    study.set_user_attr("draft_cache", search_cfg.draft_cache)
    stored = study.user_attrs.get("costs")
    if stored and setup.fits(CostModel.from_dict(stored)):
        setup.costs = CostModel.from_dict(stored)
    else:
        study.set_user_attr("costs", setup.time_costs().to_dict())
    if not study.user_attrs.get("warm_started"):  # after the costs: KnapSpec's warm start weighs by them
        # no more than the study's trials: a warm start past the target would wait in the storage
        sets = warm_start_sets(setup, importance(setup, study, progress), progress)[:search_cfg.trials]
        enqueue_warm_starts(study, sets, setup.eligible)
        study.set_user_attr("warm_started", True)
    study.set_user_attr("skip_budget", setup.k)
    study.set_user_attr("sampler", search_cfg.sampler)


def run_search(setup: StudySetup, study: optuna.Study, progress: bool) -> None:
    """Run trials until the study holds `search.trials` complete ones (shared with other workers)."""
    search_cfg = setup.config.search
    objective = SkipObjective(setup.scorer.score, setup.costs, setup.eligible, search_cfg.objective,
                              setup.k if get_objective(search_cfg.objective).fixed_count else None,
                              setup.config.draft.max_draft_tokens, setup.thresholds,
                              policies=setup.runtime_policies)
    complete, _ = trial_counts(study)
    bar = tqdm(total=search_cfg.trials, initial=min(complete, search_cfg.trials), desc="trials (all workers)",
               disable=not progress)

    def show(study: optuna.Study, _trial) -> None:
        bar.n = min(trial_counts(study)[0], search_cfg.trials)
        bar.refresh()

    local = LocalSearch(setup.eligible, dict(importance(setup, study, progress)), search_cfg.objective,
                        fixed_count=get_objective(search_cfg.objective).fixed_count, target=search_cfg.trials)
    try:
        run_trials(study, objective, search_cfg.trials, search_cfg.heartbeat_interval, callbacks=[local, show])
    finally:
        bar.close()


@dataclass
class Measurement:
    """A skip set decoded for real on the held-out prompts, against plain decoding."""

    skip_set: SkipSet
    max_draft_tokens: int
    confidence_threshold: float
    ngram: list[int] | None  # [min_n, max_n, max_tokens] of n-gram drafting, None without
    policy_margin: float | None  # the cost-model policy's margin; None: the skip set drafts every round
    matchness: float  # proxy matchness on the held-out prompts
    acceptance_rate: float
    mean_accepted_tokens: float
    # measured: tokens/s over skipsearch's plain decoder's, both after the prompt's prefill
    decode_speedup: float
    # cost model over drafting replayed on the held-out proxy outcomes: as the runtime drafts, or with an
    # own draft cache as an engine drafts (fixed drafts, no n-grams)
    predicted_speedup: float
    predicted_acceptance: float  # accepted / drafted tokens in that replay: beside acceptance_rate
    tokens_per_s: float
    plain_tokens_per_s: float
    trial: int | None = None
    # held-out outputs against plain decoding: identical / tie_flip / error (see `lossless`)
    lossless: dict = field(default_factory=dict)
    # while decoding the held-out prompts: verify rounds, the n-gram drafter's share of them, the
    # share of n-gram drafts the skipped model continued, and full-model steps without a draft
    rounds: int = 0
    ngram_rounds: int = 0
    ngram_layer_skip_rounds: int = 0
    plain_steps: int = 0
    extra: dict = field(default_factory=dict)

    def to_attrs(self) -> dict:
        """The record kept in the study (`rescored`), the skip set as trial attributes."""
        record = asdict(self)
        del record["skip_set"]
        return {**self.skip_set.to_attrs(), **record}


def search_priors(setup: StudySetup, skip_set: SkipSet, max_draft_tokens: int, confidence_threshold: float) -> Priors:
    """The evidence a profile carries: acceptance by position of the skip set's drafts and of the
    n-gram drafts, with counts, over the search prompts' reference continuations."""
    return measure_priors(setup.runtime_scorer.score(skip_set).prompts, len(skip_set) > 0, NGRAM, max_draft_tokens,
                          confidence_threshold)


def drafting_settings(setup: StudySetup, costs: CostModel, skip_set: SkipSet, max_draft_tokens: int,
                      confidence_threshold: float, priors: Priors | None = None) -> DecodeSettings:
    """The decoder's settings for a skip set on the held-out prompts, as the runtime runs a profile:
    the skip set and n-gram drafting under the policy, weighing `costs` relative to the full model,
    with the search's `priors`; the guard off, so the number is the policy's own speed."""
    return DecodeSettings(max_new_tokens=setup.config.task.reference_tokens, max_draft_tokens=max_draft_tokens,
                          confidence_threshold=confidence_threshold, fallback=False, ngram=NGRAM,
                          costs=relative_costs(costs, skip_set), policy=PolicySettings(), priors=priors)


def measure(setup: StudySetup, skip_set: SkipSet, max_draft_tokens: int, confidence_threshold: float,
            trial: int | None = None) -> Measurement:
    """Decode every held-out prompt plainly and as the runtime would with this skip set (n-gram
    drafting and the policy's choice between the drafters, with the priors the search measured,
    weighing costs timed on this machine), interleaved, timed after the prefill; guard off, so
    the number is the policy's own speed.

    Each output is checked against plain decoding's: in float32 it must be identical; in
    bfloat16/float16 a difference is re-scored, counted as a tie flip or an error, and only an
    error (a defect) stops the measurement."""
    model = setup.loaded.model
    plain = DecodeSettings.plain(setup.config.task.reference_tokens)
    priors = search_priors(setup, skip_set, max_draft_tokens, confidence_threshold)
    drafting = drafting_settings(setup, setup.costs, skip_set, max_draft_tokens, confidence_threshold, priors)
    # one untimed run first: the first decode after loading pays one-off allocation costs
    decode(model, list(setup.heldout_refs[0].prompt_ids), None, DecodeSettings.plain(4))
    plain_time = draft_time = 0.0
    plain_tokens = draft_tokens = 0
    runs = []
    counts = LosslessCounts()
    # Both sides are timed after the prefill they pay alike, so the speedup is the decoding
    # phase's own, independent of prompt length, as the cost model predicts it.
    for reference in setup.heldout_refs:
        full = decode(model, list(reference.prompt_ids), None, plain)
        plain_time += full.stats.decoding_time_s
        plain_tokens += len(full.token_ids) - 1
        drafted = decode(model, list(reference.prompt_ids), skip_set, drafting)
        divergence = classify(model, list(reference.prompt_ids), full.token_ids, drafted.token_ids,
                              verify_tokens=setup.verify_tokens)
        if divergence.kind == "error":
            raise SkipsearchError(f"self-speculative output differed from plain decoding on {reference.prompt_id} "
                                  f"({divergence.describe()}); this is a bug: please report it with the model, "
                                  "dtype and profile")
        counts.add(divergence)
        draft_time += drafted.stats.decoding_time_s
        draft_tokens += len(drafted.token_ids) - 1
        runs.append(drafted.stats)
    if plain_tokens == 0:
        raise SkipsearchError("the model ended every held-out answer at its first token, so there is no decoding "
                              "to time; use prompts it answers at more length")
    totals = DecodeStats.total(runs)
    heldout = setup.heldout_scorer.score(skip_set)
    per_prompt, plain_steps = prompt_costs(setup.costs, skip_set, heldout.prompts)
    # an own-cache study predicts the engine's draft model: its fixed rule over its own-cache trace
    replayed_settings = (DecodeSettings(max_new_tokens=setup.config.task.reference_tokens,
                                        max_draft_tokens=max_draft_tokens, confidence_threshold=confidence_threshold,
                                        ngram=None, costs=None, fallback=False)
                         if setup.engine_draft else drafting)
    replayed, predicted = replay_drafting(heldout.prompts, replayed_settings, len(skip_set) > 0, per_prompt,
                                          plain_steps=plain_steps)
    tokens_per_s, plain_tokens_per_s = draft_tokens / draft_time, plain_tokens / plain_time
    return Measurement(
        skip_set=skip_set,
        max_draft_tokens=max_draft_tokens, confidence_threshold=confidence_threshold,
        ngram=[NGRAM.min_n, NGRAM.max_n, NGRAM.max_tokens], policy_margin=drafting.policy.margin,
        matchness=heldout.matchness, acceptance_rate=totals.acceptance_rate,
        mean_accepted_tokens=totals.mean_accepted_tokens,
        decode_speedup=tokens_per_s / plain_tokens_per_s,
        predicted_speedup=predicted, predicted_acceptance=replayed.acceptance_rate,
        tokens_per_s=tokens_per_s, plain_tokens_per_s=plain_tokens_per_s, trial=trial, lossless=counts.to_dict(),
        rounds=totals.rounds, ngram_rounds=totals.ngram_rounds,
        ngram_layer_skip_rounds=totals.ngram_layer_skip_rounds, plain_steps=totals.plain_steps,
        # the cost model over the run's own counts: tells cost-model error from replay error
        extra={"predicted_from_run": predicted_speedup_from_stats(setup.costs, skip_set, totals)},
    )


def rescore(setup: StudySetup, study: optuna.Study, top: int, progress: bool) -> list[Measurement]:
    """Measure the best candidates with the real decoder, each with its searched draft settings,
    beside predictions from costs timed on this machine just before."""
    objective = setup.config.search.objective
    candidates = best_trials(study, objective, max(top, setup.config.search.rescore_top))
    if not candidates:
        raise SkipsearchError("the study has no finished trial that drafts (a skip set or n-grams); run more trials")
    study.set_user_attr("rescore_costs", setup.time_costs().to_dict())
    measurements = []
    for trial in tqdm(candidates, desc="re-scoring with the real decoder", disable=not progress, leave=False):
        attrs = trial.user_attrs
        measurements.append(measure(setup, SkipSet.from_attrs(attrs), attrs["draft_tokens"],
                                    attrs["confidence_threshold"], trial.number))
    key = get_objective(objective).rescore_key
    if setup.engine_draft and key == "decode_speedup":  # the decoder measures skipsearch's runtime, not the engine
        key = "predicted_speedup"
    measurements.sort(key=lambda m: getattr(m, key), reverse=True)
    study.set_user_attr("rescored", [m.to_attrs() for m in measurements])
    return measurements


def build_profile(setup: StudySetup, measurement: Measurement, study: optuna.Study, storage: str,
                  command: str) -> Profile:
    config, model = setup.config, setup.loaded.model
    costs = setup.costs
    return Profile(
        model=ProfileModel(name=setup.loaded.name, architecture=model.config.model_type,
                           num_hidden_layers=model.config.num_hidden_layers, fingerprint=setup.fingerprint),
        task=setup.task_name,
        skip=measurement.skip_set,
        draft=DraftSettings(
            max_draft_tokens=measurement.max_draft_tokens, confidence_threshold=measurement.confidence_threshold,
            ngram=NGRAM,
            priors=search_priors(setup, measurement.skip_set, measurement.max_draft_tokens,
                                 measurement.confidence_threshold),
        ),
        metrics=ProfileMetrics(
            matchness=round(measurement.matchness, 4), acceptance_rate=round(measurement.acceptance_rate, 4),
            mean_accepted_tokens=round(measurement.mean_accepted_tokens, 3),
            speedup=round(measurement.decode_speedup, 3),
            predicted_speedup=round(measurement.predicted_speedup, 3), device=costs.device, dtype=costs.dtype,
        ),
        provenance={
            "tool_version": __version__,
            "study": study.study_name,
            "storage": redact(storage),
            "trial": measurement.trial,
            "objective": config.search.objective,
            "sampler": config.search.sampler,
            "seed": config.search.seed,
            "draft_cache": config.search.draft_cache,
            "trials": len(completed_trials(study)),
            "heldout_prompts": len(setup.heldout_refs),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": command,
            **_context_fit(costs),
        },
    )


def _context_fit(costs: CostModel) -> dict:
    """The cost model's attention-against-context fit, as a profile's provenance keeps it: the
    context lengths timed, all attention blocks' seconds per token at each, and the fitted slope."""
    if not costs.context_points:
        return {}
    return {"cost_contexts": [point["context_tokens"] for point in costs.context_points],
            "attention_seconds_at_contexts": [round(sum(point["attention"]), 6) for point in costs.context_points],
            "attention_seconds_per_context_token": float(f"{sum(costs.attention_slope):.3g}")}


def export_profiles(setup: StudySetup, measurements: list[Measurement], study: optuna.Study, storage: str,
                    path: Path, top: int, command: str) -> list[Path]:
    """The best measured candidate to `path`; with top > 1 the next ones to path-2, path-3, …"""
    written = []
    for rank, measurement in enumerate(measurements[:top], start=1):
        target = path if rank == 1 else path.with_name(f"{path.name.removesuffix('.yaml')}-{rank}.yaml")
        save_profile(build_profile(setup, measurement, study, storage, command), target)
        written.append(target)
    study.set_user_attr("exported_profile", str(written[0]))
    return written


def open_configured_study(config: StudyConfig, storage: str | optuna.storages.BaseStorage,
                          seeded: bool = True) -> optuna.Study:
    """The study with heartbeats; `seeded=False` gives the sampler a fresh random seed, so that
    extra workers propose other candidates than the first one (same history, same seed, same
    proposals otherwise)."""
    # Optuna warns with a traceback for every failed trial, an interrupted one included; errors
    # that matter reach the command line as exceptions.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    sampler = make_sampler(config.search.sampler, config.search.seed if seeded else None, config.search.objective)
    return open_study(config.name, storage, config.search.objective, sampler, config.search.heartbeat_interval)
