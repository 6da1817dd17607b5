"""Export a checkpoint as a standard transformers Llama model folder.

    uv run train/export_hf.py --checkpoint checkpoints/best_model.pt --output_dir hf_model

Writes config.json, model.safetensors (fp32, lm_head tied to the embedding), generation_config.json
(generate.py's sampling defaults) and the tokenizer files, then reloads the folder and checks its
logits against the checkpoint's. Use it with no custom code:

    model = AutoModelForCausalLM.from_pretrained("hf_model")
    tokenizer = AutoTokenizer.from_pretrained("hf_model")
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, LlamaForCausalLM

from model import LlamaForTraining, ModelConfig
from owt.checkpointing import model_from_checkpoint
from owt.cli import ArgumentParser, ScriptError, run_main
from owt.sampling import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_K,
    DEFAULT_TOP_P,
    checkpoint_tokenizer,
)

TOLERANCE = 1e-4  # max |logit difference| allowed between the export and the checkpoint (fp32)


def llama_config(config: ModelConfig, tokenizer: Any) -> LlamaConfig:
    """The transformers LlamaConfig describing the same network as `config`."""
    return LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,  # plain multi-head attention, no GQA
        max_position_embeddings=config.max_position_embeddings,
        rope_theta=config.rope_theta,
        rms_norm_eps=config.rms_norm_eps,
        initializer_range=config.init_std,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        dtype="float32",
    )


def generation_config(tokenizer: Any) -> GenerationConfig:
    """generate.py's defaults, so model.generate() samples the way generate.py does."""
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        # GPT-2 has no pad token; without one generate() warns and pads with EOS anyway.
        pad_token_id=tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else tokenizer.eos_token_id,
        do_sample=True,
        temperature=DEFAULT_TEMPERATURE,
        top_k=DEFAULT_TOP_K,
        top_p=DEFAULT_TOP_P,
        max_new_tokens=DEFAULT_MAX_NEW_TOKENS,
    )


@torch.no_grad()
def max_logit_difference(model: LlamaForTraining, hf_model: Any, input_ids: torch.Tensor) -> float:
    """max |logits(model) - logits(hf_model)| over every position of `input_ids` (B, T)."""
    ours, _ = model(input_ids)
    return (ours - hf_model(input_ids).logits).abs().max().item()


def export(
    checkpoint: Path | str, output_dir: Path | str, tokenizer_name: str | None = None
) -> Path:
    """Write the transformers folder for `checkpoint` into `output_dir` and verify its logits."""
    model, state = model_from_checkpoint(checkpoint)
    tokenizer = checkpoint_tokenizer(state, tokenizer_name)
    hf_model = LlamaForCausalLM(llama_config(model.config, tokenizer))
    # Same key names by construction; strict loading turns any drift into an error here.
    hf_model.load_state_dict(model.state_dict(), strict=True)
    hf_model.generation_config = generation_config(tokenizer)
    hf_model.save_pretrained(output_dir)  # writes the tied lm_head once
    # safetensors creates the file owner-only (0600); a model folder is meant to be shared.
    for weights in Path(output_dir).glob("*.safetensors"):
        weights.chmod(0o644)
    tokenizer.model_max_length = model.config.max_position_embeddings
    tokenizer.save_pretrained(output_dir)

    reloaded = AutoModelForCausalLM.from_pretrained(output_dir).eval()
    length = min(64, model.config.max_position_embeddings)
    ids = torch.randint(0, model.config.vocab_size, (1, length))
    diff = max_logit_difference(model, reloaded, ids)
    if diff > TOLERANCE:
        raise ScriptError(
            f"Exported logits differ from the checkpoint's by {diff:.2e} > {TOLERANCE:.0e}: "
            "the architecture in model.py and transformers' Llama have drifted apart."
        )
    print(
        f"Exported {checkpoint} (step {state.get('step')}, val_loss {state.get('val_loss')}) "
        f"to {output_dir}; max |logit difference| on reload {diff:.1e}"
    )
    return Path(output_dir)


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a .pt file written by pretrain.py")
    p.add_argument("--output_dir", required=True, help="folder to write (created if missing)")
    p.add_argument(
        "--tokenizer_name",
        default=None,
        help="tokenizer to bundle (hub name or local folder) when the checkpoint's is unavailable",
    )
    args = p.parse_args(argv)
    export(args.checkpoint, args.output_dir, args.tokenizer_name)


if __name__ == "__main__":
    run_main(main, interrupted="the output folder may be incomplete: run the same command again")
