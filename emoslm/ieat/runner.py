"""Run a recipe: shard the items, fan them out to workers, keep every finished item, assemble the files.

Resumability rests on three rules. (1) Each item's result is one part file written atomically
(``.parts/items/KEY.json``) and an item with a part is never built again. (2) Every random
choice is seeded by the recipe seed and the item id (see ``construct``), so the item a restart
rebuilds is the one the killed run was building. (3) The final files are assembled from the parts
in item order only when all parts exist, so a killed and restarted build writes the same bytes as
an uninterrupted one. Timings, which differ run to run, go to ``timings.json`` only.

Executors: ``local`` (in-process for one worker, else spawned processes, each loading the models
once) and ``ray`` (one actor per worker on a Ray cluster; the build folder must then be on a
filesystem every node sees, as it is for any multi-node data job).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import httpx

from emoslm.atomic import atomic_file
from emoslm.dialogues import write_dialogues
from emoslm.errors import BackendError, DataError, EmoslmError
from emoslm.ieat import schema
from emoslm.ieat.construct import Toolkit, assign_task, build_item, file_key, item_seed, multiturn_final
from emoslm.ieat.dialogues import regroup
from emoslm.ieat.recipe import Recipe
from emoslm.ieat.sources import SourceItem, collect
from emoslm.language import served
from emoslm.progress import Start, silent


@dataclass
class BuildReport:
    out: Path
    items: int  # in this build (after --limit)
    built_now: int  # items built by this call (others were resumed or belong to other shards)
    complete: bool  # all parts exist and the files were assembled
    summary: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` → (2, 4); shards count from 1."""
    try:
        index, total = (int(x) for x in text.split("/"))
    except ValueError:
        raise EmoslmError(f"--shard '{text}': write it as i/N, e.g. 1/4") from None
    if not 1 <= index <= total:
        raise EmoslmError(f"--shard '{text}': i must be between 1 and N")
    return index, total


def check_recogniser(recipe: Recipe) -> None:
    """The built-in recogniser must exist before any item is built (a setup problem, not a sample's)."""
    from emoslm.perception.recognizer import recogniser_dir

    if recipe.data.recognizer != "builtin":
        return
    directory = recipe.resolve(recipe.data.recognizer_dir) or recogniser_dir()
    if not (directory / "meta.json").exists():
        raise EmoslmError(f"no trained emotion recogniser in {directory}; run `emoslm perception train` first "
                          "(about 5 minutes, once)")


def check_endpoints(recipe: Recipe) -> None:
    """Fail in seconds, naming the URL, when a remote teacher or voice is down (not after the first item)."""
    specs = [recipe.data.teacher.llm, *[v for vs in recipe.data.voices.values() for v in vs],
             *recipe.data.stage2.tts.values()]
    for spec in specs:
        if not spec.startswith(("http://", "https://")):
            continue
        base = spec.split("?")[0].rstrip("/")
        try:
            httpx.get(f"{base}/models", timeout=5.0)
        except httpx.HTTPError as exc:
            raise BackendError(f"cannot reach {base} ({type(exc).__name__}); start the server or fix the recipe's "
                               "URL") from None


def _write_json(path: Path, obj: Any) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=1, sort_keys=True), encoding="utf-8")


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    lines = [json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows]
    with atomic_file(path) as tmp:
        tmp.write_text("".join(lines), encoding="utf-8")
    return len(lines)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def built_from(out: Path) -> dict[str, Any] | None:
    """The recipe record of a build folder (name, digest, recipe), or None for a new folder."""
    marker = out / "recipe.json"
    return _read_json(marker) if marker.exists() else None


def claim_folder(recipe: Recipe, out: Path) -> None:
    """Record the recipe in the build folder; refuse to resume a folder built from another recipe."""
    built = built_from(out)
    if built is not None:
        if built.get("digest") != recipe.digest():
            raise DataError(f"{out} was built from a different recipe ({built.get('name')}); "
                            "use a new --out folder or delete this one")
        return
    _write_json(out / "recipe.json",
                {"name": recipe.name, "digest": recipe.digest(), "recipe": recipe.model_dump(mode="json")})


def load_instructions(recipe: Recipe, out: Path, langs: list[str], tools_factory: Callable[[], Toolkit]
                      ) -> dict[str, list[dict[str, Any]]]:
    """The spoken instruction pools, built once per build folder."""
    from emoslm.ieat.instructions import build_instructions

    index = out / "instructions" / "index.json"
    if index.exists():
        return _read_json(index)
    pools = build_instructions(tools_factory(), langs, out)
    _write_json(index, pools)
    return pools


# --- executors -----------------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(recipe_json: str, recipe_path: str | None, env: dict[str, str]) -> None:
    os.environ.update(env)
    recipe = Recipe.model_validate_json(recipe_json)
    recipe.path = Path(recipe_path) if recipe_path else None
    _WORKER["tools"] = Toolkit(recipe)


def _work(item: SourceItem, task: str, instructions: dict[str, Any], out: str) -> dict[str, Any]:
    start = time.perf_counter()
    record = build_item(item, task, instructions, _WORKER["tools"], Path(out))
    record["seconds"] = round(time.perf_counter() - start, 3)
    return record


def _worker_env(workers: int) -> dict[str, str]:
    """Split the cores between workers so they do not fight over them."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    env = {"EMOSLM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    if "EMOSLM_HOME" in os.environ:
        env["EMOSLM_HOME"] = os.environ["EMOSLM_HOME"]
    return env


def run_local(recipe: Recipe, jobs: list[tuple[SourceItem, str]], instructions: dict[str, Any], out: Path,
              workers: int, tools_factory: Callable[[], Toolkit]) -> Iterator[dict[str, Any]]:
    if workers == 1:
        _WORKER["tools"] = tools_factory()
        for item, task in jobs:
            yield _work(item, task, instructions, str(out))
        return
    args = (recipe.model_dump_json(), str(recipe.path) if recipe.path else None, _worker_env(workers))
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=args) as pool:
        futures = [pool.submit(_work, item, task, instructions, str(out)) for item, task in jobs]
        for future in as_completed(futures):
            yield future.result()


def run_ray(recipe: Recipe, jobs: list[tuple[SourceItem, str]], instructions: dict[str, Any], out: Path,
            workers: int) -> Iterator[dict[str, Any]]:
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise EmoslmError("--executor ray needs Ray: run `pip install 'ray>=2.9'`") from None

    class Worker:
        def __init__(self, recipe_json: str, recipe_path: str | None, env: dict[str, str]) -> None:
            _init_worker(recipe_json, recipe_path, env)

        def run(self, item: SourceItem, task: str) -> dict[str, Any]:
            return _work(item, task, instructions, str(out))

    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict[str, Any] = {"address": recipe.data.ray_address} if recipe.data.ray_address else {
            "num_cpus": workers, "include_dashboard": False}
        try:
            ray.init(log_to_driver=False, configure_logging=False, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = recipe.data.ray_address or "a local instance"
            raise BackendError(f"cannot start or join Ray at {where} ({str(exc).splitlines()[0][:160]}); "
                               "run `ray start --head` there or fix ray_address") from None
    try:
        actor = ray.remote(num_cpus=1)(Worker)
        args = (recipe.model_dump_json(), str(recipe.path) if recipe.path else None, _worker_env(workers))
        pool = ActorPool([actor.remote(*args) for _ in range(workers)])
        yield from pool.map_unordered(lambda a, job: a.run.remote(*job), jobs)
    finally:
        if started_here:
            ray.shutdown()


# --- the build -------------------------------------------------------------------------------------------

def build(recipe: Recipe, out: Path, limit: int | None = None, shard: tuple[int, int] = (1, 1),
          workers: int | None = None, executor: str | None = None, retry_errors: bool = False,
          progress: Start = silent) -> BuildReport:
    """Build (or resume) the recipe's data set in ``out``; assemble the files once every item is built."""
    started = time.perf_counter()
    out = Path(out)
    workers = workers or recipe.data.workers
    executor = executor or recipe.data.executor
    check_endpoints(recipe)
    check_recogniser(recipe)
    items = collect(recipe, limit)
    if not items:
        raise DataError("the recipe's sources gave no items; check their paths and word limits")
    out.mkdir(parents=True, exist_ok=True)
    claim_folder(recipe, out)
    parts = out / ".parts" / "items"
    tools: Toolkit | None = None

    def shared_tools() -> Toolkit:
        nonlocal tools
        tools = tools or Toolkit(recipe)
        return tools

    langs = sorted({served(i.lang) for i in items})
    instructions = load_instructions(recipe, out, langs, shared_tools)
    mine = [item for n, item in enumerate(items) if n % shard[1] == shard[0] - 1]
    todo = [(item, assign_task(recipe, item.id)) for item in mine if _needs_work(parts, item.id, retry_errors)]
    if tools is not None and (workers > 1 or executor == "ray"):  # free the cores' memory for the workers
        tools.close()
        tools = None
    built_now = 0
    advance = progress(f"building {len(todo)} items", len(todo))
    runs = run_ray(recipe, todo, instructions, out, workers) if executor == "ray" else \
        run_local(recipe, todo, instructions, out, workers, shared_tools)
    for record in runs:
        _write_json(parts / f"{file_key(record['id'])}.json", record)
        built_now += 1
        advance()
    complete = all((parts / f"{file_key(i.id)}.json").exists() for i in items)
    summary = assemble(recipe, out, items, shared_tools, progress) if complete else {}
    if tools is not None:
        tools.close()
    return BuildReport(out, len(items), built_now, complete, summary, round(time.perf_counter() - started, 2))


def _needs_work(parts: Path, item_id: str, retry_errors: bool) -> bool:
    part = parts / f"{file_key(item_id)}.json"
    if not part.exists():
        return True
    return retry_errors and bool(_read_json(part).get("errors"))


def assemble(recipe: Recipe, out: Path, items: list[SourceItem], tools_factory: Callable[[], Toolkit],
             progress: Start = silent) -> dict[str, Any]:
    """Multi-turn regrouping (resumable, one part per dialogue), then every output file, in item order."""
    records = [_read_json(out / ".parts" / "items" / f"{file_key(i.id)}.json") for i in items]
    errors = [{"id": r["id"], **e} for r in records for e in r["errors"]]
    empathy = [r for r in records if r.get("ieat") and r["task"] == "empathy"]
    spec = recipe.data.multiturn
    groups = regroup(empathy, spec.share, spec.lengths, recipe.seed)
    multi, grouped = [], set()
    index = out / "instructions" / "index.json"
    pools = _read_json(index) if index.exists() else {}
    advance = progress(f"multi-turn dialogues ({len(groups)})", len(groups))
    for n, members in enumerate(groups):
        dialogue_id = f"mt{len(members)}-{n:05d}-{members[0]['id']}"
        part = out / ".parts" / "multiturn" / f"{file_key(dialogue_id)}.json"
        if not part.exists():
            asked = trajectory_question(recipe, dialogue_id, pools.get(f"{members[-1]['lang']}/trajectory"))
            try:
                final: dict[str, Any] = {"turn": multiturn_final(members, dialogue_id, tools_factory(), out, asked)}
            except EmoslmError as exc:
                final = {"error": str(exc)}
            _write_json(part, final)
        final = _read_json(part)
        advance()
        if "error" in final:
            errors.append({"id": dialogue_id, "stage": "multiturn", "error": final["error"]})
            continue
        extra = {**tools_provenance(recipe, members[-1]["lang"]), "seed": recipe.seed}
        multi.append(schema.multiturn_sample(dialogue_id, members, final["turn"], extra))
        grouped.update(m["id"] for m in members)
    return write_outputs(recipe, out, records, multi, grouped, errors)


def trajectory_question(recipe: Recipe, dialogue_id: str, pool: list[dict[str, Any]] | None
                        ) -> dict[str, Any] | None:
    """The spoken trajectory instruction a dialogue ends with (a seeded ``multiturn.trajectory`` share), or None."""
    if not pool:
        return None
    rng = random.Random(item_seed(recipe.seed, dialogue_id, "trajectory"))
    return pool[rng.randrange(len(pool))] if rng.random() < recipe.data.multiturn.trajectory else None


def tools_provenance(recipe: Recipe, lang: str) -> dict[str, str]:
    """Which models and prompts made a sample, from the recipe (no model needs loading to say so)."""
    from emoslm.ieat.construct import PROMPT_VERSION
    from emoslm.llm import AUTO_LLM
    from emoslm.perception.recognizer import RECOGNISER_VERSION

    llm = recipe.data.teacher.llm
    return {"teacher": AUTO_LLM.get(lang, AUTO_LLM["en"]) if llm == "auto" else llm.split("?")[0],
            "recognizer": f"{recipe.data.recognizer}:recogniser-{RECOGNISER_VERSION}", "prompts": PROMPT_VERSION}


def write_outputs(recipe: Recipe, out: Path, records: list[dict[str, Any]], multi: list[dict[str, Any]],
                  grouped: set[str], errors: list[dict[str, Any]]) -> dict[str, Any]:
    def extra(r: dict[str, Any]) -> dict[str, Any]:
        return {**tools_provenance(recipe, r["lang"]), "seed": recipe.seed}

    s11 = [schema.stage_1_1_sample(r, extra(r)) for r in records if "answer" in r]
    s12 = [schema.stage_1_2_sample(r, extra(r)) for r in records if "ieat" in r and r["id"] not in grouped]
    _write_jsonl(out / "stage1_1.jsonl", s11)
    _write_jsonl(out / "stage1_2.jsonl", s12)
    _write_jsonl(out / "multiturn.jsonl", multi)
    _write_jsonl(out / "stage2.jsonl", (e for s in [*s12, *multi] for e in schema.stage2_entries(s)))
    _write_jsonl(out / "errors.jsonl", errors)
    dialogues = [schema.to_humdial(s) for s in [*s12, *multi]]
    for lang in sorted({s["lang"] for s in [*s12, *multi]}):
        write_dialogues(out / "humdial" / f"{lang}.jsonl", [d for d, s in zip(dialogues, [*s12, *multi],
                                                                                 strict=True) if s["lang"] == lang])
    summary = {
        "recipe": recipe.name, "items": len(records), "stage1_1": len(s11), "stage1_2": len(s12),
        "multiturn": len(multi), "errors": len(errors),
        "tasks": dict(sorted(Counter(s["task"] for s in s12).items())),
        "languages": dict(sorted(Counter(s["lang"] for s in [*s12, *multi]).items())),
        "emotions": dict(sorted(Counter(s["emotion"] for s in s12).items())),
        "multiturn_lengths": dict(sorted(Counter(str(len(s["emotions"])) for s in multi).items())),
    }
    _write_json(out / "summary.json", summary)
    seconds = [r.get("seconds", 0.0) for r in records]
    _write_json(out / "timings.json", {"items": len(seconds), "item_seconds_total": round(sum(seconds), 2),
                                       "item_seconds_mean": round(sum(seconds) / max(1, len(seconds)), 3)})
    return summary
