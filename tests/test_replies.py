"""The reply levers of issue 32: the committed corpus, its training samples, the GGUF LoRA export that
llama.cpp loads, and the kept (saved) prefix state of the worked examples."""

from pathlib import Path

import numpy as np
import pytest

from emoslm.emotions import TAGS
from emoslm.errors import DataError
from emoslm.ieat.reply_corpus import CORPUS_DIR, decontaminate, parse, read_corpus, render_samples


def test_the_committed_corpus_covers_both_languages_every_emotion_and_every_kind():
    dialogues = read_corpus([CORPUS_DIR])
    for lang in ("en", "zh"):
        mine = [d for d in dialogues if d.lang == lang]
        assert len(mine) >= 60
        assert {t.emotion for d in mine for t in d.turns} == set(TAGS)
        assert {d.kind for d in mine} == {"trajectory", "why", "empathy"}
        assert all(d.turns[-1].trajectory for d in mine if d.kind == "trajectory")


def test_every_corpus_reply_passes_the_cheap_checks():
    """The corpus teaches what the checks demand: never the third person, whole sentences, the user's
    language, a spoken length, a trajectory answer with exactly the path's emotion words; and mostly "you"
    (a reply such as "Ugh, that's genuinely gross." addresses no one and is still right)."""
    from emoslm.eval.checks import check_reply
    from emoslm.eval.metrics import trajectory_exact

    replies, failures, impersonal = 0, [], 0
    for dialogue in read_corpus([CORPUS_DIR]):
        for index, turn in enumerate(dialogue.turns):
            reply = dialogue.full_reply(index)
            problems = check_reply(reply, dialogue.lang).problems
            impersonal += "not second person" in problems
            replies += 1
            if set(problems) - {"not second person"}:
                failures.append((dialogue.id, index, problems))
            if turn.trajectory and not trajectory_exact(reply, dialogue.path(index), dialogue.lang)["exact"]:
                failures.append((dialogue.id, index, "trajectory not exact"))
    assert not failures, failures[:5]
    assert impersonal / replies < 0.1


def test_corpus_lines_are_checked():
    with pytest.raises(DataError, match="emotion 'joy'"):
        parse({"lang": "en", "kind": "why", "turns": [{"user": "a", "emotion": "joy", "cause": "b", "reply": "c"}]},
              "x:1")
    with pytest.raises(DataError, match="lacks reply"):
        parse({"lang": "en", "kind": "why", "turns": [{"user": "a", "emotion": "sad", "cause": "b"}]}, "x:2")


def test_decontamination_drops_a_dialogue_near_an_evaluation_turn():
    dialogues = [parse({"id": i, "lang": "en", "kind": "empathy", "turns": [
        {"user": u, "emotion": "sad", "cause": "c", "reply": "You are sad."}]}, i) for i, u in
        [("a", "My dog ran away"), ("b", "I won the lottery")]]
    vectors = {"My dog ran away": [1.0, 0.0], "I won the lottery": [0.0, 1.0], "The dog left home": [0.95, 0.31]}
    kept, dropped = decontaminate(dialogues, ["The dog left home"], lambda texts: [vectors[t] for t in texts], 0.9)
    assert [d.id for d in kept] == ["b"] and dropped[0]["id"] == "a" and dropped[0]["near"] == "The dog left home"


def test_samples_are_the_agent_prompt_with_the_cause_and_reply_as_target(llama):
    from emoslm.think import THINK_CLOSE, empathy_system, think_opening, trajectory_reply

    dialogue = next(d for d in read_corpus([CORPUS_DIR]) if d.kind == "trajectory" and d.lang == "en")
    system = empathy_system("en", examples=False)
    samples = render_samples(dialogue, llama.render, system, "<|im_end|>", history_turns=2)
    assert len(samples) == len(dialogue.turns)
    first, last = samples[0], samples[-1]
    assert first.prompt.endswith(think_opening(dialogue.turns[0].emotion, "en")) and system in first.prompt
    assert first.target.endswith(dialogue.turns[0].reply + "<|im_end|>") and THINK_CLOSE in first.target
    path = [t.emotion for t in dialogue.turns]
    assert trajectory_reply(path, "en") in last.target  # the forced path sentence starts the trajectory reply
    assert dialogue.turns[-2].reply in last.prompt and "<think>" not in last.prompt.split("<think>")[0][-200:]


def test_a_gguf_lora_loads_in_llama_cpp_and_moves_it_as_peft_moves_the_model(tmp_path):
    """A random LoRA on SmolLM2, exported; what it does to llama.cpp's next-token logits matches what it does
    in transformers + PEFT (layout), and best at the alpha written (scale: alpha / r, as PEFT). Measured:
    correlation 0.89 at the written alpha, 0.57 at half of it; relative distance 0.51 against 0.84 at twice."""
    import torch
    from llama_cpp import Llama
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emoslm.llm.gguf_lora import write_gguf_lora
    from emoslm.llm.hf import hf_checkpoint
    from emoslm.store import resolve

    folder = hf_checkpoint("smollm2-135m-instruct")
    ids = AutoTokenizer.from_pretrained(folder)("The capital of France is")["input_ids"]
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        before = base(input_ids=torch.tensor([ids])).logits[0, -1].numpy()
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["v_proj", "o_proj", "down_proj"],
                                            init_lora_weights=False))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.05)
    with torch.no_grad():
        peft_delta = model(input_ids=torch.tensor([ids])).logits[0, -1].numpy() - before
    gguf = str(resolve("smollm2-135m-instruct").require_path())

    def logits(lora: Path | None) -> np.ndarray:
        llm = Llama(model_path=gguf, n_ctx=128, verbose=False, logits_all=True,
                    **({"lora_path": str(lora)} if lora else {}))
        llm.eval(ids)
        out = np.array(llm.scores[len(ids) - 1])
        llm.close()
        return out

    bare = logits(None)
    distance = {}
    for alpha in (4, 8, 16):
        delta = logits(write_gguf_lora(get_peft_model_state_dict(model), alpha, "llama", tmp_path / f"{alpha}.gguf"))
        delta = delta - bare
        distance[alpha] = np.linalg.norm(delta - peft_delta) / np.linalg.norm(peft_delta)
        if alpha == 8:
            assert np.corrcoef(delta, peft_delta)[0, 1] > 0.8
    assert min(distance, key=distance.get) == 8, distance


def test_a_kept_prefix_is_restored_from_disk_and_answers_as_if_evaluated(tmp_path, monkeypatch):
    from emoslm.config import settings
    from emoslm.llm import Sampling
    from emoslm.llm.llama_cpp import LlamaCppLLM

    monkeypatch.setenv("EMOSLM_HOME", str(tmp_path))  # an empty cache: the first keep_prefix computes
    head = "<|im_start|>system\nYou are a kind assistant who answers in one sentence.<|im_end|>\n"
    prompt = head + "<|im_start|>user\nI lost my keys.<|im_end|>\n<|im_start|>assistant\n"
    greedy = Sampling(max_tokens=16, temperature=0.0)
    fresh = LlamaCppLLM("smollm2-135m-instruct", n_ctx=512, reuse_prefix=False, lora=None)
    want = fresh.complete(prompt, greedy).text
    fresh.close()
    first = LlamaCppLLM("smollm2-135m-instruct", n_ctx=512, lora=None)
    first.keep_prefix(head)
    states = list(Path(settings().cache_dir).glob("prefix-states/*.bin"))
    first.complete("Something else entirely.", greedy)  # the cache now holds another prompt
    assert first.complete(prompt, greedy).text == want
    first.close()
    again = LlamaCppLLM("smollm2-135m-instruct", n_ctx=512, lora=None)
    again.keep_prefix(head)  # read from disk, not evaluated
    assert again.llm.n_tokens == 0 and len(states) == 1
    assert again.complete(prompt, greedy).text == want
    again.close()


@pytest.mark.slow
def test_the_shipped_reply_adapter_loads_and_changes_what_the_model_says():
    from emoslm.llm import Sampling
    from emoslm.llm.llama_cpp import LlamaCppLLM, shipped_lora

    adapter = shipped_lora("qwen2.5-coder-1.5b-instruct")
    assert adapter is not None and Path(adapter).stat().st_size < 20e6
    prompt = ("<|im_start|>user\nI missed my bus and now I'll be late for my sister's recital.<|im_end|>\n"
              "<|im_start|>assistant\n")
    greedy = Sampling(max_tokens=24, temperature=0.0)
    said = []
    for lora in (None, "auto"):
        llm = LlamaCppLLM("qwen2.5-coder-1.5b-instruct", n_ctx=512, lora=lora, reuse_prefix=False)
        assert llm.adapter == (adapter if lora else None)
        said.append(llm.complete(prompt, greedy).text)
        llm.close()
    assert said[0] != said[1] and said[1].strip()


@pytest.mark.slow
def test_the_recipe_reproduces_the_shipped_adapter_s_first_steps(tmp_path):
    """Retrain the first steps of recipes/replies.yaml: the same samples in the same order from the same
    initialisation give the shipped run's logged losses (within 0.05: bf16 kernels differ across CPUs)."""
    import json
    import subprocess
    import sys

    from emoslm.llm.llama_cpp import SHIPPED_DIR

    shipped = json.loads((SHIPPED_DIR / "reply-lora-qwen2.5-coder-1.5b.json").read_text())
    # its own process: accelerate's state is process-wide (bf16 here) and the 1.5B takes ~8 GB
    recipe = Path(__file__).parents[1] / "recipes" / "replies.yaml"
    subprocess.run([sys.executable, "-m", "emoslm.cli", "train", "replies", str(recipe), "--out", str(tmp_path / "run"),
                    "--max-steps", "3"], check=True, capture_output=True)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["train_samples"] == shipped["summary"]["train_samples"]
    assert summary["dropped_near_evaluation"] == shipped["summary"]["dropped_near_evaluation"]
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert losses == pytest.approx(shipped["losses"][:3], abs=0.05)
    assert (tmp_path / "run" / "reply-lora.gguf").stat().st_size == shipped["summary"]["adapter_bytes"]


@pytest.mark.slow
def test_auto_answers_with_the_1_5b_and_its_reply_adapter_in_both_languages():
    from emoslm.llm import LLMPool
    from emoslm.llm.llama_cpp import shipped_lora

    pool = LLMPool("auto")
    en, zh = pool.for_lang("en"), pool.for_lang("zh")
    assert en is zh and en.adapter == shipped_lora("qwen2.5-coder-1.5b-instruct") is not None
    pool.close()
