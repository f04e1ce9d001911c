"""UnifiedSLM speed: training tokens/s per stage, generation tokens/s against plain `transformers`, memory.

Measured side by side in one run on the embedded default (SmolLM2-135M + Whisper tiny.en):

- training: tokens per second of forward + backward + optimiser step for stage 1-1 (adapter only) and
  stage 1-2 (adapter + LoRA), batch of 4 five-second clips;
- generation: new tokens per second of ``UnifiedSLM`` generating from speech embeddings against the
  plain ``transformers`` ``generate`` of the same LLM on the same prompt given as text (the ratio is the
  cost of listening: the speech positions and the Whisper encoder);
- evaluation: held-out clips decoded one at a time (``generate``) against 16 at a time over a left-padded
  batch (``generate_batch``), on the same clips with the same budgets; the texts must be identical;
- peak resident memory of the process.

Writes ``benchmarks/results/slm.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from emoslm.slm.generate import from_parts  # noqa: E402
from emoslm.speech.tts import PiperTTS  # noqa: E402
from emoslm.train.stages import apply_stage  # noqa: E402

TEXT = "My flight got cancelled for the third time and nobody at the desk will help me at all today."


def mel_of(seconds: float = 5.0) -> torch.Tensor:
    from emoslm.speech.mel_front_end import MelFrontEnd

    audio = PiperTTS().synthesize(TEXT).at()
    return MelFrontEnd.for_mels(80).tensor(audio[: int(seconds * 16_000)])


def training_speed(stage: str, mel: torch.Tensor, steps: int) -> float:
    model, tokenizer = from_parts()
    trainable = apply_stage(model, stage)
    optimiser = torch.optim.AdamW(trainable, lr=1e-4)
    prompt = model.processor.layout(tokenizer, model.speech_length(mel.shape[1]))
    target = tokenizer(" That sounds exhausting; I am sorry the desk would not help.", add_special_tokens=False)
    ids = torch.tensor([prompt.input_ids + target["input_ids"]] * 4)
    mask = torch.tensor([prompt.speech_mask + [False] * len(target["input_ids"])] * 4)
    labels = ids.clone()
    labels[:, : len(prompt.input_ids)] = -100
    batch = dict(input_ids=ids, speech_mask=mask, labels=labels, mel=mel[None].repeat(4, 1, 1),
                 mel_frames=torch.tensor([mel.shape[1]] * 4))
    model.train()
    model(**batch).loss.backward()  # warm-up
    optimiser.zero_grad()
    start = time.perf_counter()
    for _ in range(steps):
        model(**batch).loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    return ids.numel() * steps / (time.perf_counter() - start)


@torch.no_grad()
def generation_speed(mel: torch.Tensor, tokens: int) -> dict[str, float]:
    model, tokenizer = from_parts()
    model.eval()
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompt = model.processor.layout(tokenizer, model.speech_length(mel.shape[1]))
    embeds = model.embed(torch.tensor([prompt.input_ids]), torch.tensor([prompt.speech_mask]), mel[None],
                         torch.tensor([mel.shape[1]]))
    text_ids = tokenizer.apply_chat_template([{"role": "user", "content": TEXT}], add_generation_prompt=True,
                                             return_tensors="pt", return_dict=True)["input_ids"]

    def timed(fn) -> float:
        fn()  # warm-up
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - start)
        return tokens / sorted(seconds)[1]  # the median of three

    kwargs = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=end)
    slm = timed(lambda: model.llm.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2],
                                                                                          dtype=torch.long), **kwargs))
    plain = timed(lambda: model.llm.generate(input_ids=text_ids, attention_mask=torch.ones_like(text_ids), **kwargs))

    def listen_and_generate() -> None:
        e = model.embed(torch.tensor([prompt.input_ids]), torch.tensor([prompt.speech_mask]), mel[None],
                        torch.tensor([mel.shape[1]]))
        model.llm.generate(inputs_embeds=e, attention_mask=torch.ones(e.shape[:2], dtype=torch.long), **kwargs)

    with_encoder = timed(listen_and_generate)
    return {"slm_tokens_per_s": round(slm, 1), "plain_transformers_tokens_per_s": round(plain, 1),
            "slm_incl_encoder_tokens_per_s": round(with_encoder, 1), "ratio_slm_over_plain": round(slm / plain, 3),
            "speech_positions": sum(prompt.speech_mask), "text_prompt_tokens": int(text_ids.shape[1])}


def evaluation_speed(mel: torch.Tensor, clips: int, think: int, reply: int) -> dict[str, float]:
    """Think + reply for ``clips`` crops of the clip (3-5 s, so the batch is padded): one at a time vs batched."""
    from emoslm.slm.generate import generate, generate_batch

    model, tokenizer = from_parts()
    model.eval()
    mels = [mel[:, : int(mel.shape[1] * (0.6 + 0.4 * i / max(1, clips - 1)))] for i in range(clips)]
    start = time.perf_counter()
    alone = [generate(model, tokenizer, m, think_budget=think, max_new_tokens=reply) for m in mels]
    one_at_a_time = time.perf_counter() - start
    start = time.perf_counter()
    together = generate_batch(model, tokenizer, mels, think_budget=think, max_new_tokens=reply, batch_size=clips)
    batched = time.perf_counter() - start
    tokens = sum(g.think_tokens + g.reply_tokens for g in alone)
    return {"clips": clips, "tokens": tokens, "one_at_a_time_tokens_per_s": round(tokens / one_at_a_time, 1),
            "batched_tokens_per_s": round(tokens / batched, 1), "ratio": round(one_at_a_time / batched, 2),
            "identical_texts": sum(a == b for a, b in zip(alone, together, strict=True))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--clips", type=int, default=16, help="evaluation: clips decoded (and the batch size)")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args()
    torch.manual_seed(0)
    mel = mel_of()
    results = {"train_tokens_per_s": {s: round(training_speed(s, mel, args.steps), 1) for s in ("1-1", "1-2")},
               "generation": generation_speed(mel, args.tokens),
               "evaluation": evaluation_speed(mel, args.clips, 48, 64),
               "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
               "threads": torch.get_num_threads()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "slm.json").write_text(json.dumps(results, indent=2))
    g, e = results["generation"], results["evaluation"]
    lines = ["# UnifiedSLM speed (SmolLM2-135M + Whisper tiny.en, CPU)", "",
             "| measure | value |", "|---|---|",
             f"| training tokens/s, stage 1-1 (adapter) | {results['train_tokens_per_s']['1-1']} |",
             f"| training tokens/s, stage 1-2 (adapter + LoRA) | {results['train_tokens_per_s']['1-2']} |",
             f"| generation tokens/s, UnifiedSLM from speech embeddings | {g['slm_tokens_per_s']} |",
             f"| generation tokens/s, incl. Whisper encoder + adapter | {g['slm_incl_encoder_tokens_per_s']} |",
             f"| generation tokens/s, plain transformers on the text prompt | {g['plain_transformers_tokens_per_s']} |",
             f"| ratio UnifiedSLM / plain | **{g['ratio_slm_over_plain']}×** |",
             f"| prompt: speech positions vs text tokens | {g['speech_positions']} vs {g['text_prompt_tokens']} |",
             f"| evaluation tokens/s, {e['clips']} clips one at a time (`generate`) | "
             f"{e['one_at_a_time_tokens_per_s']} |",
             f"| evaluation tokens/s, the same clips batched (`generate_batch`) | {e['batched_tokens_per_s']} |",
             f"| ratio batched / one at a time | **{e['ratio']}×** |",
             f"| clips whose think and reply are identical both ways | {e['identical_texts']} of {e['clips']} |",
             f"| peak RSS | {results['peak_rss_gb']} GB |"]
    (args.out / "slm.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
