"""UnifiedSLM: a tiny random model trains and round-trips; the real SmolLM2 + Whisper tiny.en model generates."""

import pytest

torch = pytest.importorskip("torch")

from transformers import LlamaConfig, WhisperConfig  # noqa: E402

from emoslm.slm.model import UnifiedSLM, UnifiedSLMConfig  # noqa: E402


def tiny(**listening) -> UnifiedSLM:
    torch.manual_seed(0)
    llm = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=256)
    encoder = WhisperConfig(d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                            num_mel_bins=8, max_source_positions=64, decoder_layers=1, decoder_attention_heads=2,
                            decoder_ffn_dim=32)
    return UnifiedSLM(UnifiedSLMConfig(llm_config=llm.to_dict(), encoder_config=encoder.to_dict(), adapter_dim=16,
                                       adapter_layers=1, adapter_heads=2, **listening))


def batch(model: UnifiedSLM):
    frames = torch.tensor([40, 24])
    mel = torch.randn(2, 8, 40)
    n = [model.speech_length(int(f)) for f in frames]
    ids = torch.randint(0, 64, (2, 14))
    mask = torch.zeros(2, 14, dtype=torch.bool)
    for b, count in enumerate(n):
        mask[b, 2:2 + count] = True
    labels = ids.clone()
    labels[:, :8] = -100  # loss on the assistant part only
    return dict(input_ids=ids, speech_mask=mask, mel=mel, mel_frames=frames, labels=labels)


def test_tiny_model_trains_and_round_trips(tmp_path):
    model = tiny()
    inputs = batch(model)
    before = model.adapter.project.weight.detach().clone()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss = model(**inputs).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
    assert not torch.equal(before, model.adapter.project.weight)  # gradients reached the adapter
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()
    loaded = UnifiedSLM.from_pretrained(tmp_path)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        a = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
        b = loaded(**{k: v for k, v in inputs.items() if k != "labels"}).logits
    assert torch.equal(a, b)


def test_speech_changes_the_output_only_through_marked_positions():
    model = tiny().eval()
    inputs = batch(model)
    with torch.no_grad():
        with_speech = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
        other = dict(inputs, mel=torch.randn(2, 8, 40))
        with_other = model(**{k: v for k, v in other.items() if k != "labels"}).logits
    assert torch.allclose(with_speech[:, :2], with_other[:, :2])  # before the speech: unchanged (causal)
    assert not torch.allclose(with_speech[:, 5:], with_other[:, 5:])
    bad = dict(inputs, speech_mask=torch.ones(2, 14, dtype=torch.bool))
    with pytest.raises(ValueError, match="more positions"):
        model(**{k: v for k, v in bad.items() if k != "labels"})


def test_layer_mix_and_emotion_head_learn_in_stage_1_1_and_round_trip(tmp_path):
    """The listening path that keeps the paralinguistics: the encoder's layers mixed, an emotion head on the
    adapter's output whose cross-entropy joins the text loss; stage 1-1 trains both; a checkpoint keeps both."""
    from emoslm.speech.whisper_ct2 import encode_layers
    from emoslm.train.stages import apply_stage

    model = tiny(encoder_mix=True, emotion_head=True, emotion_weight=0.5)
    inputs = batch(model)
    with torch.no_grad():  # what the frame cache holds for such a model: every layer (mel's is the same)
        stacks = encode_layers(model.encoder, inputs["mel"])
    assert stacks.shape[1] == 2 and torch.allclose(model.speech_embeddings(inputs["mel"]),
                                                   model.speech_embeddings(frames=stacks), atol=1e-5)
    with pytest.raises(ValueError, match="every layer"):
        model.speech_embeddings(frames=stacks[:, -1])
    cached = {**{k: v for k, v in inputs.items() if k != "mel"}, "frames": stacks,
              "emotion_labels": torch.tensor([2, -100])}
    trainable = apply_stage(model, "1-1")
    assert {id(p) for p in model.layer_mix.parameters()} <= {id(p) for p in trainable}
    assert {id(p) for p in model.emotion_head.parameters()} <= {id(p) for p in trainable}
    out = model(**cached)
    assert out.emotion_loss is not None and torch.isclose(out.loss, out.emotion_loss * 0.5 + model.llm(
        inputs_embeds=model.embed(inputs["input_ids"], inputs["speech_mask"], frames=stacks,
                                  mel_frames=inputs["mel_frames"]), labels=inputs["labels"]).loss)
    optimiser = torch.optim.AdamW(trainable, lr=1e-2)
    first = None
    for _ in range(10):
        loss = model(**cached).emotion_loss
        first = first if first is not None else loss.item()
        model(**cached).loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    assert model(**cached).emotion_loss.item() < 0.5 * first
    assert not torch.allclose(model.layer_mix.weights, torch.full((2,), 0.5))  # the mix moved
    assert model(**{k: v for k, v in cached.items() if k != "emotion_labels"}).get("emotion_loss") is None

    model.save_pretrained(tmp_path)
    loaded = UnifiedSLM.from_pretrained(tmp_path).eval()
    assert loaded.config.encoder_mix and loaded.config.emotion_head
    assert torch.equal(loaded.layer_mix.logits, model.layer_mix.logits)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**cached).logits, loaded(**cached).logits)
        assert torch.isclose(model(**cached).emotion_loss, loaded(**cached).emotion_loss)


@pytest.mark.slow
def test_real_model_loads_and_generates_think_and_reply(spoken_sentence):
    from emoslm.slm.generate import from_parts, generate

    model, tokenizer = from_parts("smollm2-135m-instruct", "whisper-tiny.en")
    mel = model.processor.front_end.tensor(spoken_sentence)
    prompt = model.processor.layout(tokenizer, model.speech_length(mel.shape[-1]))
    assert sum(prompt.speech_mask) == model.speech_length(mel.shape[-1]) > 10
    assert tokenizer.decode(prompt.input_ids).rstrip().endswith("<think>")
    out = generate(model, tokenizer, mel, think_budget=12, max_new_tokens=12)
    assert out.think and out.reply and out.think_tokens <= 12 and out.reply_tokens <= 12
    assert "<think>" not in out.reply


def test_the_processor_travels_with_the_checkpoint_and_every_path_uses_it(tmp_path, spoken_sentence):
    """Training's collator, generation's prompt and the report all lay out with ``model.processor``; a checkpoint
    keeps the rules it was trained with, and one from before the processor existed gets the defaults."""
    import json

    from emoslm.slm.generate import generate_batch, prompt_embeds
    from emoslm.slm.model import UnifiedSLM
    from emoslm.slm.processor import FILE, SYSTEM, SLMProcessor
    from emoslm.train.data import Collator, Example
    from tests.tiny import tiny_slm

    model, tokenizer = tiny_slm()
    model.processor.system = "You are a patient listener."
    model.save_pretrained(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / FILE).read_text())["system"] == "You are a patient listener."
    loaded = UnifiedSLM.from_pretrained(tmp_path / "ckpt")
    assert loaded.processor == model.processor and loaded.processor.front_end.n_mels == 80
    prompt = loaded.processor.layout(tokenizer, 5)
    assert "You are a patient listener." in tokenizer.decode(prompt.input_ids) and sum(prompt.speech_mask) == 5
    mel = loaded.processor.front_end.tensor(spoken_sentence)
    default = SLMProcessor().layout(tokenizer, model.speech_length(mel.shape[-1])).input_ids
    assert prompt_embeds(loaded, tokenizer, mel).shape[0] != len(default)  # generation prefills the saved rules
    assert len(generate_batch(loaded, tokenizer, [mel], think_budget=2, max_new_tokens=2)) == 1

    example = Example("c0", "c0", None, SLMProcessor().target("They sound calm.", "Hello."), think=True,
                      user_text="Hi there.")
    collate = Collator(tokenizer, model.speech_length, lambda path: None, processor=loaded.processor)
    batch = collate([example])
    assert "You are a patient listener." in tokenizer.decode(batch["input_ids"][0])
    labels = [t for t in batch["labels"][0].tolist() if t != -100]
    assert tokenizer.decode(labels).endswith("</think>\n\nHello.<|im_end|>")

    (tmp_path / "ckpt" / FILE).unlink()  # a checkpoint from before the processor: the rules it was trained with
    assert UnifiedSLM.from_pretrained(tmp_path / "ckpt").processor.system == SYSTEM
