"""A real model end to end through the command line, as a practitioner meets one (issue 12): a checkpoint folder
made the way Hugging Face makes one (a small GPT-2- or LLaMA-shaped model from a config object, every parameter
perturbed, save_pretrained sharded with its index, a tokenizer.json trained locally with tokenizers), then

    specc import FOLDER -o model.spec            the count equals the reference model's
    specc compile model.spec --lora ...          the trainable count printed equals peft's for the same settings
    specc train model.spec --init-from FOLDER --lora ...   the first step's loss equals the reference's
    specc sample RUN / specc export / specc generate        the same greedy text

each a real process (no function of ours called in between)."""

from __future__ import annotations

import json
import subprocess

import pytest
from test_init_from import hf_folder

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.slow

LORA = {"gpt2": (["c_attn"], "*.attn.qkv"), "llama": (["q_proj", "v_proj"], "*.attn.q,*.attn.v")}


def specc(specc_cmd, *args) -> str:
    done = subprocess.run([*specc_cmd, *map(str, args)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    return done.stdout


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_hugging_face_folder_imports_fine_tunes_with_lora_and_ships(tmp_path, specc_cmd, family):
    folder, reference, corpus = hf_folder(tmp_path, family)
    spec = tmp_path / "model.spec"
    specc(specc_cmd, "import", folder, "-o", spec)
    compiled = json.loads(specc(specc_cmd, "compile", spec, "--json"))
    assert compiled["params"]["total"] == sum(p.numel() for p in reference.parameters())  # tied: once

    modules, targets = LORA[family]
    lora = ["--lora", 4, "--lora-alpha", 8, "--lora-targets", targets]
    shown = " ".join(specc(specc_cmd, "compile", spec, *lora).split())
    tuned = peft.get_peft_model(reference, peft.LoraConfig(r=4, lora_alpha=8, target_modules=modules))
    trainable, total = tuned.get_nb_trainable_parameters()
    assert f"trainable params: {trainable:,} || all params: {total:,}" in shown
    base = tuned.unload()  # the reference again, without adapters

    run = tmp_path / "run"
    specc(specc_cmd, "train", spec, "--init-from", folder, "--data", corpus, *lora, "--steps", 3, "--batch", 4,
          "--eval-every", 3, "--seed", 7, "--out", run)
    from test_init_from import first_batch
    x, y = first_batch(run, 4, 7)
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(base(x).logits.flatten(0, 1), y.flatten()).item()
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["train_loss"]
    assert abs(first - expected) < 1e-4  # adapters start at B = 0: the checkpoint's own function

    prompt = "the king sees"
    sampled = specc(specc_cmd, "sample", run, "--prompt", prompt, "--max-new-tokens", 12, "--temperature", 0)
    specc(specc_cmd, "export", spec, "--checkpoint", run, "--onnx", "-o", tmp_path / "model.onnx")
    generated = specc(specc_cmd, "generate", tmp_path / "model.onnx", "--prompt", prompt, "--max-new-tokens", 12,
                      "--temperature", 0)
    assert sampled == generated and sampled.startswith(prompt) and len(sampled) > len(prompt)
