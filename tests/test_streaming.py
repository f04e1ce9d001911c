"""The streaming contract: backends stream what they return, agents stream what they reply, live input, barge-in."""

from __future__ import annotations

import ast
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from emoslm.agents.events import (
    AudioChunk,
    Cancelled,
    Done,
    Emotion,
    Error,
    Reply,
    SpeechStarted,
    SpeechStopped,
    TextDelta,
    ThinkDelta,
    Timing,
    Transcript,
    from_wire,
)
from emoslm.llm import Sampling
from emoslm.llm.base import StopMatcher
from emoslm.perception.estimate import EmotionEstimate, Evidence, as_probs
from emoslm.speech.voice import Clauses
from emoslm.think import Incremental, clean_reply
from tests.conftest import free_port

GREEDY = Sampling(max_tokens=32, temperature=0.0, seed=0)
PROMPT = "<|im_start|>user\nTell me about a calm morning by the sea.<|im_end|>\n<|im_start|>assistant\n"


# --- small parts --------------------------------------------------------------------------------------

def test_stop_matcher_holds_a_possible_stop_and_cuts_at_it():
    stops = StopMatcher(["</think>"])
    assert stops.feed("I hear sadness.</th") == ("I hear sadness.", False)
    assert stops.feed("ink> and more") == ("", True)
    other = StopMatcher(["</think>"])
    assert other.feed("a <b") == ("a <b", False) and other.feed("") == ("", False)
    assert other.feed("</") == ("", False) and other.flush() == "</"


def test_clauses_cut_at_sentence_ends_and_long_pauses_only():
    cutter = Clauses()
    assert cutter.feed("It costs 3.5 dollars") == []  # a decimal point is no sentence end
    assert cutter.feed(". I am sorry") == ["It costs 3.5 dollars."]
    assert cutter.feed(", truly,") == []  # a short clause waits for more
    assert cutter.feed(" and I know how much this meant to you, so") == [
        "I am sorry, truly, and I know how much this meant to you,"]
    assert cutter.flush() == ["so"]
    assert Clauses().feed("我很难过。你还好吗？") == ["我很难过。", "你还好吗？"]


def test_the_first_clause_may_be_half_as_long_so_first_audio_comes_sooner():
    zh = Clauses()
    assert zh.feed("你的感受是愤怒（anger），因为同事") == ["你的感受是愤怒（anger），"]  # 7 characters: first only
    assert zh.feed("填错了，所以") == []  # later clauses wait for 8
    en = Clauses()
    assert en.feed("Oh, I hear you, that") == ["Oh, I hear you,"]
    assert en.feed(" sounds hard, and") == []


def test_incremental_emits_only_a_stable_prefix():
    said = Incremental(clean_reply)
    pieces = [said.update(d) for d in (" <ans", "wer>Hello", " there ", "friend.</answer>")]
    pieces.append(said.finish())
    assert "".join(pieces) == "Hello there friend." == said.emitted
    assert "<" not in "".join(pieces)


def test_every_event_round_trips_through_its_wire_form():
    voice = Evidence("acoustic:builtin", as_probs({"sad": 1.0}), {"f0_hz": 110.0})
    estimate = EmotionEstimate.from_probs({"sad": 0.7, "neutral": 0.3}, acoustic=voice, transcript="hi")
    audio = (np.sin(np.arange(1600) / 5) * 0.5).astype(np.float32)
    reply = Reply("Hello.", think="sad because", transcript="hi", emotion=estimate, think_emotion="sad",
                  timings={"first_audio": 0.4}, problems=["x"])
    events = [SpeechStarted(at=1.0), SpeechStopped(at=2.0, seconds=1.0), Transcript("hi", "en", partial=True),
              Emotion(estimate), ThinkDelta("sad because"), TextDelta("Hello."), AudioChunk(audio, 16_000, "Hello."),
              Timing("asr", 0.2), Cancelled(), Error("boom"), Done(reply)]
    for event in events:
        event.t = 0.25
        wire = json.loads(json.dumps(event.to_wire()))
        back = from_wire(wire)
        assert type(back) is type(event) and back.t == 0.25 and back.to_wire() == wire
    chunk = from_wire(json.loads(json.dumps(events[6].to_wire())))
    assert np.abs(chunk.audio - audio).max() < 1e-4
    done = from_wire(events[-1].to_wire())
    assert done.reply.emotion.tag == "sad" and done.reply.think_emotion == "sad" and done.reply.audio is None
    with pytest.raises(ValueError, match="unknown event"):
        from_wire({"type": "nope"})


def test_no_import_cycles_between_the_packages():
    """Dependencies point down: no package of emoslm imports one that imports it back (at any distance)."""
    root = Path(__file__).resolve().parent.parent / "emoslm"
    edges: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        unit = parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("emoslm."):
                target = node.module.split(".")[1]
                if target != unit:
                    edges.setdefault(unit, set()).add(target)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in edges.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = sorted(f"{a} -> {b}" for a in edges for b in edges[a] if reaches(b, a, {b}))
    assert not cycles, cycles


# --- backends: streamed deltas join to exactly what blocking returns, and what the library makes ------

@pytest.fixture(scope="module")
def llama_exact():
    """SmolLM2 evaluating every prompt whole, so the same prompt always gives the same text."""
    from emoslm.llm.llama_cpp import LlamaCppLLM

    model = LlamaCppLLM("smollm2-135m-instruct", n_ctx=2048, reuse_prefix=False)
    yield model
    model.close()


@pytest.fixture(params=["tiny", pytest.param("smollm2", marks=pytest.mark.slow)])
def llama_exact_any(request, tiny_text):
    """The tiny random GGUF (fast tier, golden text) or SmolLM2, each evaluating every prompt whole."""
    if request.param == "smollm2":
        return request.getfixturevalue("llama_exact"), None
    from emoslm.llm.llama_cpp import LlamaCppLLM

    model = LlamaCppLLM(str(tiny_text[1]), n_ctx=512, reuse_prefix=False)
    request.addfinalizer(model.close)
    return model, "tiny-llama-cpp-stream"


def test_llama_cpp_stream_equals_blocking_and_the_library(llama_exact_any):
    llama, golden_name = llama_exact_any
    stream = llama.stream(PROMPT, GREEDY)
    deltas = list(stream)
    assert len(deltas) > 5 and stream.completion.text == "".join(deltas)
    assert llama.complete(PROMPT, GREEDY).text == "".join(deltas)
    llama.llm.reset()
    direct = llama.llm.create_completion(PROMPT, max_tokens=32, temperature=0.0, top_p=GREEDY.top_p,
                                         top_k=GREEDY.top_k, repeat_penalty=GREEDY.repeat_penalty, seed=0)
    assert direct["choices"][0]["text"] == "".join(deltas)
    if golden_name:
        from tests.tiny import golden

        assert "".join(deltas) == golden(golden_name, "".join(deltas))


def test_llama_cpp_stream_stops_when_closed_early(llama):
    stream = llama.stream(PROMPT, Sampling(max_tokens=200, temperature=0.0))
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    assert llama.complete(PROMPT, GREEDY).text  # the context is free again


@pytest.mark.slow
def test_transformers_stream_equals_generate():
    import torch

    from emoslm.llm import load_llm

    hf = load_llm("transformers:smollm2-135m-instruct")
    settings = Sampling(max_tokens=24, temperature=0.0, repeat_penalty=1.1)
    deltas = list(hf.stream(PROMPT, settings))
    assert len(deltas) > 5 and "".join(deltas) == hf.complete(PROMPT, settings).text
    ids = hf.tokenizer(PROMPT, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.inference_mode():
        out = hf.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                                repetition_penalty=1.1, pad_token_id=hf.tokenizer.eos_token_id)
    assert "".join(deltas) == hf.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    sampled = Sampling(max_tokens=16, temperature=0.8, seed=3)
    assert hf.complete(PROMPT, sampled).text == hf.complete(PROMPT, sampled).text  # seeded, not global RNG


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_lean_path_equals_the_transformers_forward(kind):
    """Small random Llama / Qwen2 (biases) / Qwen3 (per-head q/k norms) stacks: the lean decode path gives the
    transformers logits and hidden states, for a prefill and for token-by-token steps."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from emoslm.llm.lean import lean_llm

    torch.manual_seed(0)
    config = AutoConfig.for_model(kind, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=101,
                                  max_position_embeddings=256, head_dim=16)
    model = AutoModelForCausalLM.from_config(config).eval()
    ids = torch.randint(0, 101, (1, 12))
    with torch.no_grad():
        full = model(ids, output_hidden_states=True)
        lean = lean_llm(model, capacity=4)  # grows its cache on the way
        last, kept = lean.step(model.get_input_embeddings()(ids[:, :7]), keep=(2,))
        steps = [model.lm_head(last)]
        for k in range(7, 12):
            last, kept2 = lean.step(model.get_input_embeddings()(ids[:, k:k + 1]), keep=(2,))
            steps.append(model.lm_head(last))
    assert torch.allclose(torch.cat(steps, dim=1), full.logits, atol=1e-5)
    assert torch.allclose(kept[2], full.hidden_states[2][:, :7], atol=1e-5)
    assert torch.allclose(kept2[2], full.hidden_states[2][:, 11:], atol=1e-5)


# --- the unified model: one KV cache from the think to the reply -------------------------------------

@pytest.fixture(params=["tiny", pytest.param("smollm2", marks=pytest.mark.slow)])
def slm_and_clip(request):
    """(model, tokenizer, front end, size): the tiny random model (fast tier, golden output) or SmolLM2's."""
    from emoslm.speech.mel_front_end import MelFrontEnd

    if request.param == "tiny":
        from tests.tiny import tiny_slm

        model, tokenizer = tiny_slm()
        return model, tokenizer, MelFrontEnd.for_mels(80), "tiny"
    from transformers import AutoTokenizer

    from emoslm.slm.model import UnifiedSLM

    checkpoint = request.getfixturevalue("slm_checkpoint")
    model, tokenizer = UnifiedSLM.from_pretrained(checkpoint).eval(), AutoTokenizer.from_pretrained(checkpoint)
    return model, tokenizer, MelFrontEnd.from_pretrained(checkpoint), "smollm2"


def test_slm_generation_keeps_one_cache_and_matches_a_full_prefill(slm_and_clip, spoken_sentence):
    import torch

    from emoslm.slm.generate import generate

    model, tokenizer, front_end, size = slm_and_clip
    if size == "tiny":  # the golden output needs the same audio every run: espeak-ng, not Piper's noisy sampling
        from emoslm.speech.tts import EspeakTTS
        from tests.conftest import SENTENCE

        spoken_sentence = EspeakTTS("en-us").synthesize(SENTENCE).at(16_000)
    mel = front_end.tensor(spoken_sentence)
    widths: list[int] = []
    fed: list[int] = []
    from emoslm.llm.decoding import TokenLoop
    from emoslm.llm.lean import LeanStack

    step, feed = LeanStack.step, TokenLoop.feed  # SmolLM2 decodes on the lean path: count what each step appends

    def counted(self, embeds, keep=()):
        widths.append(embeds.shape[1])
        return step(self, embeds, keep)

    def recorded(self, ids=None, embeds=None):
        fed.extend(ids or [])
        return feed(self, ids, embeds)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LeanStack, "step", counted)
        patch.setattr(TokenLoop, "feed", recorded)
        out = generate(model, tokenizer, mel, think_budget=10, max_new_tokens=10)
    prompt = model.processor.layout(tokenizer, model.speech_length(mel.shape[-1]))
    assert widths[0] == len(prompt.input_ids)  # the prompt is prefilled once ...
    assert sum(1 for w in widths if w > 1) <= 2  # ... and later only the closing tags are appended as a block
    # one transformers forward over the prompt and every token fed after it (think, closing tags, reply) must
    # rank each token the cached path chose as its best, up to float noise: lean and transformers sum in other
    # orders, so a near-tie may flip between CPUs (greedy text is not compared); a wrong cache or position moves
    # logits by whole units, not by 1e-2
    with torch.inference_mode():
        embeds = model.embed(torch.tensor([prompt.input_ids]), torch.tensor([prompt.speech_mask]), mel[None],
                             torch.tensor([mel.shape[-1]]))
        full = torch.cat([embeds, model.llm.get_input_embeddings()(torch.tensor([fed]))], dim=1)
        logits = model.llm(inputs_embeds=full).logits[0, embeds.shape[1] - 1:-1].float()
    bridge = len(fed) - out.think_tokens - out.reply_tokens
    chosen = [k for k in range(len(fed)) if not out.think_tokens <= k < out.think_tokens + bridge]
    assert out.reply and out.reply_tokens >= 3 and len(chosen) == out.think_tokens + out.reply_tokens
    picked = logits[chosen].gather(1, torch.tensor([fed[k] for k in chosen])[:, None])[:, 0]
    margin = picked - logits[chosen].max(1).values
    assert torch.all(margin >= -1e-2), margin.tolist()
    if size == "tiny":
        from tests.tiny import golden

        assert fed == golden("tiny-slm-one-cache", fed)  # every token the cached path fed, bridge included


def test_batched_generation_writes_what_one_clip_at_a_time_writes(slm_and_clip, spoken_sentence):
    """Evaluation decodes held-out clips in left-padded batches; greedy, it must write the same think and
    reply as ``generate`` on each clip alone (clips of different lengths, one with an earlier turn)."""
    from emoslm.slm.generate import generate, generate_batch

    model, tokenizer, front_end, _ = slm_and_clip
    half = spoken_sentence[: len(spoken_sentence) // 2]
    mels = [front_end.tensor(spoken_sentence), front_end.tensor(half), front_end.tensor(spoken_sentence)]
    earlier = [{"role": "user", "content": "I lost my keys."}, {"role": "assistant", "content": "Oh no."}]
    histories = [None, None, earlier]
    alone = [generate(model, tokenizer, m, h, think_budget=10, max_new_tokens=10)
             for m, h in zip(mels, histories, strict=True)]
    together = generate_batch(model, tokenizer, mels, histories, think_budget=10, max_new_tokens=10, batch_size=2)
    assert together == alone
    assert all(g.think_tokens > 0 for g in together)


def test_the_think_starts_with_what_the_emotion_head_hears(spoken_sentence):
    """A model that injects its head's tag opens every think as the IEAT teacher's does ("… so the emotion I hear
    is X. The most likely reason they feel X is") and the LLM goes on from there: streamed, drained and batched
    alike; the head reads the clip's prosody, so forgetting it is an error, and the prosody changes the tag."""
    import torch

    from emoslm.slm.generate import generate, generate_batch, generate_stream, injected_opening
    from emoslm.slm.listen import prosody_vector
    from emoslm.speech.mel_front_end import MelFrontEnd
    from emoslm.think import tag_in_think, think_opening
    from tests.tiny import tiny_slm

    model, tokenizer = tiny_slm(emotion_head=True, emotion_prosody=True, inject_emotion=True)
    mel = MelFrontEnd.for_mels(80).tensor(spoken_sentence)
    prosody = prosody_vector(spoken_sentence)
    with pytest.raises(ValueError, match="prosody"):
        generate(model, tokenizer, mel, think_budget=6, max_new_tokens=4)
    quieter = prosody_vector(spoken_sentence * 0.05)
    model.emotion_head.fit_prosody(torch.stack([prosody, quieter]))  # standardised: loud > 0 > quiet
    with torch.no_grad():  # one clear winner per prosody: a head that reads loudness alone
        model.emotion_head.classify.weight.zero_()
        model.emotion_head.prosody.weight.zero_()
        model.emotion_head.prosody.weight[2, 9] = 1.0  # TAGS[2] grows with the loudness mean (feature 9)
        model.emotion_head.prosody.weight[4, 9] = -1.0  # TAGS[4] with its opposite
    probs = model.heard_emotion(mel, prosody)
    tag = max(probs, key=probs.get)
    opening = injected_opening(model, mel, prosody)
    assert opening == think_opening(tag, "en") and abs(sum(probs.values()) - 1) < 1e-5
    quiet = injected_opening(model, mel, quieter)
    assert tag_in_think(quiet) != tag  # 26 dB quieter: the other tag

    pieces = list(generate_stream(model, tokenizer, mel, think_budget=6, max_new_tokens=4, prosody=prosody))
    assert pieces[0].part == "think" and pieces[0].text == opening.strip()
    alone = generate(model, tokenizer, mel, think_budget=6, max_new_tokens=4, prosody=prosody)
    assert alone.think.startswith(opening.strip()) and tag_in_think(alone.think) == tag
    assert alone.think_tokens <= 6  # the opening is given, not generated: the budget is the LLM's
    together = generate_batch(model, tokenizer, [mel, mel], think_budget=6, max_new_tokens=4, prosody=[prosody] * 2)
    assert together == [alone, alone]

    plain, _ = tiny_slm(emotion_head=True)  # a head that does not inject: the think is the LLM's alone
    assert injected_opening(plain, mel) == ""

    alone, _ = tiny_slm(emotion_head=True, emotion_prosody=True, inject_emotion=True, emotion_frame_dropout=1.0)
    alone.emotion_head.load_state_dict(model.emotion_head.state_dict())  # the same prosody term, frames unread
    with torch.no_grad():
        alone.emotion_head.classify.weight.normal_()  # would change the answer if the frames were read
    assert alone.heard_emotion(mel, prosody) == pytest.approx(probs, abs=1e-5)


# --- agents ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def teacher(recogniser_home):
    from emoslm.agents import load_agent

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMOSLM_HOME", str(recogniser_home))
        agent = load_agent("teacher", llm="llama-cpp:smollm2-135m-instruct?reuse_prefix=0", voice="piper")
    yield agent
    agent.close()


@pytest.fixture(scope="module")
def sad_clip(piper):
    from emoslm.speech.prosody import acted

    return piper.synthesize("My cat has been sick all week and the vet says there is not much left to do.",
                            acted("sad")).at()


SAD_TURNS = ["My cat has been sick all week and the vet says there is not much left to do.",
             "I failed my driving test again today and I do not know what to tell my parents.",
             "My best friend moved away this morning and the house feels so empty now."]


def multi_clause_turn(teacher, piper) -> list:
    """The events of the first sad turn whose reply has two clauses or more.

    Why: the reply is seeded, but llama.cpp's sums differ across CPUs, and on one CI machine SmolLM2 answered
    the first turn in one sentence; three one-clause replies in a row are what would fail here."""
    from emoslm.speech.prosody import acted
    from emoslm.speech.voice import Clauses

    for text in SAD_TURNS:
        events = list(teacher.stream([], piper.synthesize(text, piper.reproducible(acted("sad"))).at(), "en"))
        cutter = Clauses()
        reply = events[-1].reply if isinstance(events[-1], Done) else None
        if reply is None or len(cutter.feed(reply.text) + cutter.flush()) >= 2:
            return events
    return events


@pytest.mark.slow
def test_teacher_streams_in_order_and_speaks_before_it_finishes_writing(teacher, piper):
    events = multi_clause_turn(teacher, piper)
    kinds = [type(e) for e in events]
    assert kinds[-1] is Done and Error not in kinds
    first = {k: kinds.index(k) for k in (Transcript, Emotion, ThinkDelta, TextDelta, AudioChunk)}
    assert first[Transcript] < first[Emotion] < first[ThinkDelta] < first[TextDelta] < first[AudioChunk]
    reply = events[-1].reply
    texts = [e for e in events if isinstance(e, TextDelta)]
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    assert len(chunks) >= 2, f"a multi-clause reply is wanted here, got {reply.text!r}"
    assert events.index(chunks[0]) < events.index(texts[-1])  # first clause spoken while writing the rest
    assert "".join(e.text for e in texts) == reply.text
    assert "".join(e.text for e in events if isinstance(e, ThinkDelta)) == reply.think
    assert np.array_equal(np.concatenate([c.audio for c in chunks]), reply.audio)
    assert reply.emotion.tag in reply.think and reply.think_emotion == reply.emotion.tag
    assert all(a.t <= b.t for a, b in zip(events, events[1:], strict=False))  # stamped from the end of speech
    assert {"vad", "asr", "emotion", "think", "write", "tts", "first_text", "first_audio", "total"} <= set(
        reply.timings)
    assert reply.timings["first_audio"] < reply.timings["total"]


@pytest.mark.slow
def test_teacher_respond_equals_its_stream_and_the_conversation_keeps_emotions(teacher, sad_clip, piper):
    from emoslm.agents import Conversation

    streamed = [e for e in teacher.stream([], sad_clip, "en") if isinstance(e, Done)][0].reply
    blocking = teacher.respond([], sad_clip, "en")
    assert (blocking.text, blocking.think, blocking.transcript) == (streamed.text, streamed.think, streamed.transcript)
    assert abs(len(blocking.audio) - len(streamed.audio)) < 0.25 * len(streamed.audio)  # Piper's noise is unseeded
    talk = Conversation(teacher, "en")
    talk.respond(sad_clip)
    talk.respond(piper.synthesize("I just sat with her for an hour.").at())
    assert talk.user_emotions == [t.emotion for t in talk.history if t.role == "user"] and len(talk.user_emotions) == 2
    assert all(e is not None for e in talk.user_emotions)
    assert all(blocking.think not in t.text for t in talk.history)  # the think is never history


@pytest.mark.slow
def test_a_replayed_clip_gives_the_next_turns_prefill_the_time_the_user_spoke(teacher, sad_clip, monkeypatch):
    """Live, the teacher prefills the next turn's prompt while the user talks; a recording replayed straight
    after the last reply must not make Whisper share the CPU with that prefill (the demo's latency)."""
    from concurrent.futures import Future

    from emoslm.agents import Conversation

    prefill: Future = Future()  # the previous turn's prefill, still running; it ends 0.5 s into the clip
    monkeypatch.setattr(teacher, "_warming", prefill)
    threading.Timer(0.5, prefill.set_result, [None]).start()
    finished_first = []
    original = teacher.asr.transcribe
    monkeypatch.setattr(teacher.asr, "transcribe", lambda audio, language=None: finished_first.append(
        prefill.done()) or original(audio, language))
    Conversation(teacher, "en").respond(sad_clip)  # a recording (no heard_at): the clip lasts 4 s
    assert finished_first == [True]
    prefill = Future()  # live input says when the user stopped: the turn starts at once
    monkeypatch.setattr(teacher, "_warming", prefill)
    threading.Timer(0.5, prefill.set_result, [None]).start()
    finished_first.clear()
    list(Conversation(teacher, "en").stream(sad_clip, heard_at=time.perf_counter()))
    assert finished_first == [False]


@pytest.fixture(scope="module")
def plain():
    from emoslm.agents import load_agent

    with load_agent("plain", llm="llama-cpp:smollm2-135m-instruct?reuse_prefix=0", voice="piper") as agent:
        yield agent


def _padded(clip: np.ndarray, before: float = 0.5, after: float = 1.0) -> np.ndarray:
    return np.concatenate([np.zeros(int(before * 16_000), np.float32), clip, np.zeros(int(after * 16_000), np.float32)])


def _until_quiet(session, most: float = 120.0) -> None:
    """Wait until nobody talks and no reply is going on (a cancelled reply's successor may start late)."""
    deadline = time.monotonic() + most
    while (session.replying or session.speaking) and time.monotonic() < deadline:
        session.wait()
        time.sleep(0.05)


def _feed(session, audio: np.ndarray, chunk: int = 320) -> None:
    for start in range(0, len(audio), chunk):
        session.feed(audio[start:start + chunk])


def test_live_input_in_chunks_gives_the_whole_clip_transcript(plain, spoken_sentence):
    from emoslm.agents import Conversation
    from emoslm.agents.live import LiveSession

    whole = plain.respond([], spoken_sentence, "en")
    session = LiveSession(Conversation(plain, "en"), "en")
    _feed(session, _padded(spoken_sentence))
    session.wait()
    events = list(session.events())
    kinds = [type(e) for e in events]
    assert kinds[0] is SpeechStarted and SpeechStopped in kinds and kinds[-1] is Done
    assert any(isinstance(e, Transcript) and e.partial for e in events)  # heard while the user was talking
    assert kinds.index(SpeechStopped) > max(i for i, e in enumerate(events) if isinstance(e, Transcript) and e.partial)
    final = [e for e in events if isinstance(e, Transcript) and not e.partial]
    assert final[0].text == whole.transcript
    assert events[-1].reply.audio is not None and events[-1].reply.timings["first_audio"] > 0


def test_live_input_without_a_language_answers_in_the_language_its_partial_heard(plain, spoken_sentence,
                                                                                 monkeypatch):
    from emoslm.agents import Conversation
    from emoslm.agents.live import LANG_FROM_PARTIAL, LiveSession

    asked = []  # (seconds of audio, language asked for) of every transcription
    original = plain.asr.transcribe
    monkeypatch.setattr(plain.asr, "transcribe",
                        lambda audio, language=None: asked.append((len(audio) / 16_000, language)) or original(
                            audio, language))
    session = LiveSession(Conversation(plain), None)
    _feed(session, _padded(spoken_sentence))
    session.wait()
    events = list(session.events())
    partials = [e for e in events if isinstance(e, Transcript) and e.partial]
    assert partials and all(e.lang == "en" for e in partials)
    assert all(language is None for _, language in asked[:-1])  # each partial detected the language
    long_enough = [seconds for seconds, _ in asked[:-1] if seconds >= LANG_FROM_PARTIAL]
    assert long_enough and asked[-1][1] == "en"  # the final transcript did not detect it again
    assert events[-1].reply.transcript == plain.respond([], spoken_sentence, "en").transcript


def test_barge_in_cancels_the_reply_and_the_next_turn_goes_on(plain, spoken_sentence, piper, monkeypatch):
    from emoslm.agents import Conversation
    from emoslm.agents.live import LiveSession

    voice = plain.voices.voice(plain.voice_spec, "en")
    original, clauses, release = voice.clause, [], threading.Event()

    def slow(text, prosody):  # the first clause speaks; the next ones wait (the reply is still going on)
        clauses.append(text)
        if len(clauses) > 1:
            release.wait(120)
        return original(text, prosody)

    monkeypatch.setattr(voice, "clause", slow)
    talk = Conversation(plain, "en")
    session = LiveSession(talk, "en")
    _feed(session, _padded(spoken_sentence, after=0.6))
    got = []
    try:
        for event in session.events(timeout=60):  # wait for the reply to speak (before that, speech continues the turn)
            got.append(event)
            if isinstance(event, AudioChunk):
                break
        assert session.replying
        _feed(session, _padded(piper.synthesize("Wait, actually, stop.").at(), before=0.1))
    finally:
        release.set()
    _until_quiet(session)
    later = list(session.events())
    kinds = [type(e) for e in later]
    assert Cancelled in kinds and SpeechStarted in kinds
    assert kinds.index(Cancelled) > kinds.index(SpeechStarted)
    assert [e.reason for e in later if isinstance(e, Cancelled)][0] == "barge-in"
    assert Done not in kinds[: kinds.index(Cancelled)]  # the first reply never finished
    assert kinds[-1] is Done  # the barge-in became the next turn
    users = [t for t in talk.history if t.role == "user"]
    assert len(users) == 2 and "stop" in users[1].text.lower()


def test_speech_soon_after_an_end_of_turn_before_the_reply_spoke_continues_the_turn(plain, piper, monkeypatch):
    """A turn ended too early (a pause between sentences) is answered once, as one turn, if nothing was said."""
    from emoslm.agents import Conversation
    from emoslm.agents.live import LiveSession

    voice = plain.voices.voice(plain.voice_spec, "en")
    entered, release = threading.Event(), threading.Event()
    original = voice.clause

    def held(text, prosody):  # the first clause is held back, as on a slow CPU: the reply has not spoken yet
        entered.set()
        release.wait(120)
        return original(text, prosody)

    monkeypatch.setattr(voice, "clause", held)
    talk = Conversation(plain, "en")
    session = LiveSession(talk, "en")
    _feed(session, _padded(piper.synthesize("My dog died yesterday.").at(), after=0.6))
    try:
        assert entered.wait(120) and session.replying
        _feed(session, _padded(piper.synthesize("And I really miss him.").at(), before=0.1))
    finally:
        release.set()
    _until_quiet(session)
    events = list(session.events())
    cancelled = [e for e in events if isinstance(e, Cancelled)]
    assert [e.reason for e in cancelled] == ["resumed"]
    assert sum(isinstance(e, Done) for e in events) == 1
    users = [t.text.lower() for t in talk.history if t.role == "user"]
    assert len(users) == 1 and "dog" in users[0] and "miss" in users[0], users


def test_barge_in_while_the_first_clause_is_synthesised_is_acted_on_at_once(plain, spoken_sentence, monkeypatch):
    """The writer waits for the first clause's audio; a barge-in must not wait for that synthesis too."""
    from emoslm.agents import Conversation
    from emoslm.agents.live import LiveSession

    voice = plain.voices.voice(plain.voice_spec, "en")
    entered, release = threading.Event(), threading.Event()
    original = voice.clause

    def held(text, prosody):  # the real voice, held back until the test lets it speak (a slow CPU's first clause)
        entered.set()
        release.wait(120)
        return original(text, prosody)

    monkeypatch.setattr(voice, "clause", held)
    session = LiveSession(Conversation(plain, "en"), "en")
    _feed(session, _padded(spoken_sentence))
    try:
        assert entered.wait(120)  # the first clause is being synthesised, and the writer waits for it
        session.stop("barge-in")
        cancelled = next((e for e in session.events(timeout=30) if isinstance(e, Cancelled)), None)
        assert not release.is_set()
    finally:
        release.set()
    session.wait()
    assert cancelled is not None and cancelled.reason == "barge-in"  # while the synthesis was still held back
    assert not any(isinstance(e, Done) for e in session.events())


def test_chat_events_prints_one_wire_event_per_line(tmp_path, spoken_sentence):
    import subprocess
    import sys

    from emoslm.audio import save_audio

    wav = save_audio(tmp_path / "turn.wav", spoken_sentence)
    result = subprocess.run([sys.executable, "-m", "emoslm.cli", "chat", str(wav), "--agent", "plain", "--lang",
                             "en", "--llm", "llama-cpp:smollm2-135m-instruct", "--voice", "piper", "--events"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    events = [from_wire(json.loads(line)) for line in result.stdout.splitlines()]
    assert isinstance(events[0], Transcript) and isinstance(events[-1], Done)
    assert any(isinstance(e, AudioChunk) for e in events)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == events[-1].reply.text


def test_unknown_agent_spec_is_one_clear_line():
    from emoslm.agents import load_agent
    from emoslm.errors import EmoslmError

    with pytest.raises(EmoslmError, match="unknown agent 'robot'; use teacher, plain"):
        load_agent("robot")
    with pytest.raises(EmoslmError, match="not a UnifiedSLM checkpoint"):
        load_agent("slm:/nonexistent")


# --- a remote emoslm server (a GPU machine cannot exist here: a named fake replays one) ---------------

class FakeEmoslmServer:
    """Stands in for a remote emoslm server: answers /v1/chat/completions with canned SSE chunks."""

    def __init__(self, events: list[dict]) -> None:
        outer = self
        self.requests: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                outer.requests.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for wire in events:
                    chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}}],
                             "emoslm": {"event": wire}}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_remote_agent_reads_the_wire_events_of_an_emoslm_server(spoken_sentence):
    from emoslm.agents import Conversation, load_agent

    audio = np.full(800, 0.25, np.float32)
    canned = [Transcript("hello", "en"), ThinkDelta("calm"), TextDelta("Hi "), AudioChunk(audio, 16_000, "Hi"),
              TextDelta("there."), Done(Reply("Hi there.", think="calm", transcript="hello", think_emotion="neutral"))]
    fake = FakeEmoslmServer([e.to_wire() for e in canned])
    try:
        with load_agent(fake.url) as agent:
            talk = Conversation(agent, "en")
            events = list(talk.stream(spoken_sentence))
            again = talk.respond(spoken_sentence)
    finally:
        fake.close()
    assert [type(e) for e in events] == [type(e) for e in canned]
    reply = events[-1].reply
    assert reply.text == "Hi there." and np.allclose(reply.audio, audio, atol=1e-4)
    assert again.text == "Hi there."
    body = fake.requests[1]
    assert body["stream"] is True and body["modalities"] == ["text", "audio"]
    assert body["messages"][0] == {"role": "user", "content": "hello"}  # the first turn is history now
    assert body["messages"][-1]["content"][0]["type"] == "input_audio"
    assert body["emoslm"]["user_emotions"] == ["neutral"]


def test_remote_agent_unreachable_is_an_error_event():
    from emoslm.agents import load_agent
    from emoslm.errors import EmoslmError

    with load_agent(f"http://127.0.0.1:{free_port()}") as agent:
        events = list(agent.stream([], np.full(1600, 0.1, np.float32), "en"))
        assert isinstance(events[-1], Error) and "cannot reach the emoslm server" in events[-1].message
        with pytest.raises(EmoslmError, match="cannot reach"):
            agent.respond([], np.full(1600, 0.1, np.float32), "en")


@pytest.mark.slow
def test_chat_and_eval_run_the_unified_model_through_load_agent(slm_checkpoint, tmp_path, spoken_sentence,
                                                                recogniser_home):
    import os
    import subprocess
    import sys

    from emoslm.audio import save_audio
    from emoslm.dialogues import read_dialogues

    def cli(*args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "EMOSLM_HOME": str(recogniser_home)}  # eval reads reply voices with it
        return subprocess.run([sys.executable, "-m", "emoslm.cli", *args], capture_output=True, text=True,
                              timeout=600, env=env)

    wav = save_audio(tmp_path / "turn.wav", spoken_sentence)
    chat = cli("chat", str(wav), "--agent", f"slm:{slm_checkpoint}", "--lang", "en", "--voice", "piper",
               "--speak", str(tmp_path / "replies"))
    assert chat.returncode == 0, chat.stderr
    assert "assistant" in chat.stdout and (tmp_path / "replies" / "reply_1.wav").exists()

    turns = [{"turn_id": 1, "text": "I lost my keys again and I am already late.", "emotion": "anger"},
             {"turn_id": 2, "text": "My friend just found them in her bag!", "emotion": "happy"}]
    data = tmp_path / "en.jsonl"
    data.write_text(json.dumps({"dialogue_id": "en_T3_99", "turns": turns}) + "\n")
    out = tmp_path / "eval"
    run = cli("eval", "humdial", "--agent", f"slm:{slm_checkpoint}", "--data", str(data), "--voice", "--judge",
              "none", "--out", str(out))
    assert run.returncode == 0, run.stderr
    (answered,) = read_dialogues(out / "submission" / "en" / "HD-Track1-T3.jsonl")
    assert all(t.response_text and t.response_audio for t in answered.turns)


def test_a_paused_consumer_pauses_the_producer_thread():
    from concurrent.futures import ThreadPoolExecutor

    from emoslm.streams import on_thread

    made = []

    def endless():
        while True:
            made.append(len(made))
            yield made[-1]

    with ThreadPoolExecutor(1) as pool:
        stream = on_thread(endless(), pool, ahead=3)
        assert next(stream) == 0
        time.sleep(0.5)  # the consumer pauses: the producer may fill the hand-over, no more
        assert len(made) <= 1 + 3 + 1
        assert [next(stream) for _ in range(5)] == [1, 2, 3, 4, 5]
        stream.close()  # and closing it while the producer waits on a full hand-over still ends the worker
    closed = threading.Event()

    def watched():
        try:
            yield from endless()
        finally:
            closed.set()

    gone = on_thread(watched(), ThreadPoolExecutor(1), ahead=1, patience=0.2)
    assert next(gone) is not None  # then it neither reads on nor closes: the producer gives up, closed
    assert closed.wait(timeout=30)
