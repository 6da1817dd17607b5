"""Generate text from a checkpoint, streaming it to stdout as it is produced.

    uv run train/generate.py --checkpoint checkpoints/best_model.pt --prompt "The meaning of"

Decodes incrementally with a KV cache and stops at EOS. Status lines go to stderr, so stdout is
exactly the prompt and its continuation(s).
"""

from __future__ import annotations

import argparse
import sys

import torch

from owt.checkpointing import model_from_checkpoint
from owt.cli import ArgumentParser, run_main
from owt.devices import resolve_device
from owt.sampling import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_K,
    DEFAULT_TOP_P,
    TextStream,
    check_sampling_args,
    checkpoint_tokenizer,
    generate_ids,
    prompt_to_ids,
)

SEPARATOR = "---------------\n"  # between samples, on its own line


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the docstring's layout and show every flag's default."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a .pt file written by pretrain.py")
    p.add_argument("--prompt", default="", help="text to continue; %(default)r: a new document")
    p.add_argument("--max_new_tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS, help="at most")
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="0 = greedy")
    p.add_argument("--top_k", type=int, default=DEFAULT_TOP_K, help="0 disables it")
    p.add_argument("--top_p", type=float, default=DEFAULT_TOP_P, help="1 disables it")
    p.add_argument("--seed", type=int, default=1337, help="seeds the sampling generator")
    p.add_argument("--num_samples", type=int, default=1, help="continuations of the prompt")
    p.add_argument("--device", default="auto", help="auto (mps, cuda, cpu), or a torch device")
    p.add_argument(
        "--tokenizer_name",
        default=None,
        help="override the checkpoint's tokenizer (hub name or local folder)",
    )
    args = p.parse_args(argv)
    try:
        check_sampling_args(args.temperature, args.top_k, args.top_p)
    except ValueError as exc:
        p.error(str(exc))
    if args.max_new_tokens < 1 or args.num_samples < 1:
        p.error("--max_new_tokens and --num_samples must be >= 1")
    return args


def generate(args: argparse.Namespace) -> list[list[int]]:
    """Stream each sample to stdout; return the generated token ids of each."""
    device = resolve_device(args.device)
    model, state = model_from_checkpoint(args.checkpoint, device)
    tokenizer = checkpoint_tokenizer(state, args.tokenizer_name)
    prompt_ids = prompt_to_ids(tokenizer, args.prompt)
    print(
        f"{args.checkpoint}: step {state.get('step')}, val_loss {state.get('val_loss')}, "
        f"{model.num_parameters() / 1e6:.1f}M params on {device}; prompt {len(prompt_ids)} tokens",
        file=sys.stderr,
    )
    generator = torch.Generator().manual_seed(args.seed)  # pick_token draws on the CPU
    samples = []
    for i in range(args.num_samples):
        tokens = generate_ids(
            model,
            prompt_ids,
            args.max_new_tokens,
            args.temperature,
            args.top_k,
            args.top_p,
            eos_token_id=tokenizer.eos_token_id,
            generator=generator,
        )
        print(SEPARATOR if i else "", args.prompt, sep="", end="", flush=True)
        stream = TextStream(tokenizer)
        for token in tokens:
            print(stream.push(token), end="", flush=True)
        print(stream.finish(), flush=True)
        samples.append(stream.ids)
    return samples


def main(argv: list[str] | None = None) -> None:
    generate(parse_args(argv))


if __name__ == "__main__":
    run_main(main, interrupted="nothing was written")
