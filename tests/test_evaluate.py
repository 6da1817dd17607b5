"""evaluate.py and --eval_hellaswag: scores checked against plain computations written here.

The models are tiny and random (no real weights can be downloaded here): a transformers
GPT2LMHeadModel saved to a folder, and checkpoints of ours trained by pretrain.py.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from hub_stub import HUB_GITATTRIBUTES, HubStub, StubRepo
from owt.folder_lock import LOCK_FILE, WriterLock
from owt.lm_scores import TextScore
from scripts import FP32_EAGER, one_line_error, pretrain_args, run_script
from textdata import write_layout

VOCAB = 50257
U = 2.0**-24  # fp32 unit roundoff
# fp32 tolerance of a mean cross-entropy computed by two code paths (ours batched, transformers'
# per window): each token's log-sum-exp over V logits has a relative rounding error of about
# ceil(log2 V) * u under pairwise summation; sqrt(V) * u bounds that with room for blocked SIMD
# sums (any order of V same-sign terms), relative to the loss itself.
LOSS_RTOL = math.sqrt(VOCAB) * U


def tiny_gpt2(folder: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A random 2-layer GPT2LMHeadModel with the real GPT-2 tokenizer, saved as a folder."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    # initializer_range 0.5, not GPT-2's 0.02: a near-uniform model would give endings of equal
    # length near-equal scores, and HellaSwag's argmax needs clear winners to be comparable.
    config = GPT2Config(
        vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2, initializer_range=0.5
    )
    GPT2LMHeadModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory: pytest.TempPathFactory, gpt2_tokenizer_dir: Path) -> Path:
    return tiny_gpt2(tmp_path_factory.mktemp("tiny_gpt2"), gpt2_tokenizer_dir)


def evaluate(*args: object, env: dict | None = None) -> dict:
    """Run evaluate.py (fp32, CPU), check it succeeded, return its eval.json."""
    output = next(a for a in args if isinstance(a, Path) and a.suffix == ".json")
    result = run_script("evaluate.py", "--device", "cpu", *args, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(output.read_text())


# ---- validation text ---------------------------------------------------------------------------


def test_loss_equals_transformers_labels_loss(gpt2_folder: Path, small_dataset: Path, tmp_path):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    out = tmp_path / "eval.json"
    [row] = evaluate(
        "--hf_model", gpt2_folder, "--data_dir", small_dataset, "--max_tokens", 0,
        "--max_length", 32, "--dtype", "fp32", "--output", out,
    )["models"]  # fmt: skip

    # The same windows, by hand: EOS doc EOS doc ... EOS, 33-token windows overlapping by one.
    texts = pq.read_table(small_dataset / "validation").column("text").to_pylist()
    tokenizer = AutoTokenizer.from_pretrained(gpt2_folder)
    stream = [tokenizer.eos_token_id]
    for text in texts:
        stream += tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    model = GPT2LMHeadModel.from_pretrained(gpt2_folder).eval()
    loss_sum, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(stream) - 1, 32):
            window = torch.tensor([stream[start : start + 33]])
            n = window.size(1) - 1
            loss_sum += model(input_ids=window, labels=window).loss.item() * n
            tokens += n
    num_bytes = sum(len(t.encode()) for t in texts)

    assert row["val_tokens"] == tokens == len(stream) - 1
    assert row["val_bytes"] == num_bytes
    assert row["val_loss"] == pytest.approx(loss_sum / tokens, rel=LOSS_RTOL)
    # bpb = loss x tokens / bytes / ln 2, from the file's own figures
    expected_bpb = row["val_loss"] * row["val_tokens"] / row["val_bytes"] / math.log(2)
    assert row["val_bpb"] == pytest.approx(expected_bpb, rel=1e-12)
    assert row["val_perplexity"] == pytest.approx(math.exp(row["val_loss"]), rel=1e-12)
    assert row["hellaswag_acc"] is None and row["params"] > 0


def test_bits_per_byte_on_a_fixture():
    score = TextScore(loss_sum=2 * 1000 * math.log(2), tokens=1000, bytes=4000)
    assert score.loss == pytest.approx(2 * math.log(2))
    assert score.bpb == pytest.approx(0.5)  # 2000 bits over 4000 bytes
    assert score.perplexity == pytest.approx(4.0)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path, gpt2_tokenizer_dir):
    """A finished pretrain.py run of the tiny model (its output folder)."""
    out = tmp_path_factory.mktemp("run") / "out"
    result = run_script(
        "pretrain.py", *pretrain_args(tiny_dataset, out, gpt2_tokenizer_dir, FP32_EAGER)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_checkpoint_and_its_export_score_the_same(tiny_run: Path, small_dataset: Path, tmp_path):
    checkpoint = tiny_run / "best_model.pt"
    exported = tmp_path / "hf"
    result = run_script("export_hf.py", "--checkpoint", checkpoint, "--output_dir", exported)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_script(
        "evaluate.py", "--device", "cpu", "--checkpoint", checkpoint, "--hf_model", exported,
        "--data_dir", small_dataset, "--dtype", "fp32",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    ours, export = json.loads((tiny_run / "eval.json").read_text())["models"]  # default --output

    assert ours["name"] == str(checkpoint) and export["name"] == str(exported)
    assert ours["params"] == export["params"]
    assert ours["val_tokens"] == export["val_tokens"] and ours["val_bytes"] == export["val_bytes"]
    # export_hf.py checks |logits difference| <= 1e-4; a cross-entropy moves by at most twice
    # the largest change of any logit.
    assert abs(ours["val_loss"] - export["val_loss"]) <= 2e-4
    assert abs(ours["val_bpb"] - export["val_bpb"]) <= 2e-4 * ours["val_tokens"] / (
        ours["val_bytes"] * math.log(2)
    )
    # The table names both models and says why bpb is the figure across tokenizers.
    assert str(exported) in result.stdout and "compares models with different tokenizers" in (
        result.stdout
    )
    # Windows of the length the run trained on (config.json's max_length), not 64 positions.
    assert json.loads((tiny_run / "eval.json").read_text())["max_length"] == 32


# ---- HellaSwag ---------------------------------------------------------------------------------

PREFERRED = "and then the kettle began to sing on the stove."


def hellaswag_items(documents: list[str], count: int) -> list[dict]:
    """Items in Rowan/hellaswag's columns: a context from the Python docs, the PREFERRED ending
    at a varying label, and three other sentences of the docs as the wrong endings."""
    sentences = [
        s.strip() for d in documents[-200:] for s in d.split(". ") if 20 < len(s.strip()) < 70
    ]  # from the end of the docs: never in the training text of the test below
    items = []
    for i in range(count):
        label = i % 4
        wrong = sentences[4 * i + 1 : 4 * i + 4]
        endings = wrong[:label] + [PREFERRED] + wrong[label:]
        ctx = sentences[4 * i]
        items.append({
            "ind": i, "activity_label": "Python", "ctx_a": ctx, "ctx_b": "", "ctx": ctx,
            "endings": endings, "source_id": f"pydoc~{i}", "split": "val",
            "split_type": "indomain", "label": str(label),
        })  # fmt: skip
    return items


def hellaswag_repo(items: list[dict]) -> StubRepo:
    """Rowan/hellaswag as the hub has it: a loading script on main, the parquet export on
    refs/convert/parquet as {config}/{split}/0000.parquet."""

    def parquet(rows: list[dict]) -> bytes:
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows), sink)
        return sink.getvalue().to_pybytes()

    main = {
        ".gitattributes": HUB_GITATTRIBUTES,
        "README.md": b"---\nlanguage: en\npaperswithcode_id: hellaswag\n---\n# HellaSwag\n",
        "hellaswag.py": b'"""HellaSwag (loading script stand-in)."""\nimport datasets\n',
    }
    export = {
        ".gitattributes": HUB_GITATTRIBUTES,
        "default/train/0000.parquet": parquet(items[::-1]),  # other splits, never fetched
        "default/validation/0000.parquet": parquet(items),
    }
    return StubRepo("Rowan/hellaswag", main, refs={"refs/convert/parquet": export})


def reference_scores(folder: Path, items: list[dict]) -> tuple[float, float]:
    """acc and acc_norm by a plain loop: one forward per ending, llm.c's definitions. Checks
    that no item's best ending wins by less than 1e-4 nats, so that the batched computation's
    fp32 rounding (~1e-6 here) cannot pick another one on any CPU."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = GPT2LMHeadModel.from_pretrained(folder).eval()
    correct = correct_norm = 0
    for item in items:
        context = tokenizer(item["ctx"])["input_ids"]
        totals, means = [], []
        for ending in item["endings"]:
            ending_ids = tokenizer(" " + ending)["input_ids"]
            ids = torch.tensor([context + ending_ids])
            with torch.no_grad():
                logprobs = model(ids).logits[0].log_softmax(-1)
            picked = [logprobs[len(context) - 1 + j, t].item() for j, t in enumerate(ending_ids)]
            totals.append(sum(picked))
            means.append(sum(picked) / len(picked))
        for scores in (totals, means):
            best, second = sorted(scores, reverse=True)[:2]
            assert best - second > 1e-4, "a near tie: choose other items or another seed"
        label = int(item["label"])
        correct += max(range(4), key=totals.__getitem__) == label
        correct_norm += max(range(4), key=means.__getitem__) == label
    return correct / len(items), correct_norm / len(items)


def test_hellaswag_from_the_parquet_export(gpt2_folder: Path, documents, tmp_path):
    items = hellaswag_items(documents, 24)
    repo = hellaswag_repo(items)
    with HubStub([repo]) as hub:
        env = hub.env(tmp_path / "hf_home")
        out, cache = tmp_path / "eval.json", tmp_path / "hellaswag"
        args = ("--hf_model", gpt2_folder, "--hellaswag", "--limit", 20, "--hellaswag_dir", cache,
                "--dtype", "fp32", "--output", out)  # fmt: skip
        [row] = evaluate(*args, env=env)["models"]
        fetched = [r.path for r in hub.file_gets() if "/resolve/" in r.path]
        hub.clear_log()
        again = evaluate(*args, env=env)["models"][0]
        assert hub.requests == []  # cached: the second run asks the hub nothing

    assert row["hellaswag_items"] == 20 and row["val_loss"] is None
    acc, acc_norm = reference_scores(gpt2_folder, items[:20])
    assert (row["hellaswag_acc"], row["hellaswag_acc_norm"]) == (acc, acc_norm)
    assert again["hellaswag_acc_norm"] == row["hellaswag_acc_norm"]
    # Only the validation split, at the commit refs/convert/parquet pointed to.
    commit = repo.commit_of("refs/convert/parquet")
    assert len(fetched) == 1 and "default/validation/0000.parquet" in fetched[0]
    manifest = json.loads((cache / "download_manifest.json").read_text())
    assert (manifest["revision"], manifest["commit"]) == ("refs/convert/parquet", commit)


def test_a_model_trained_to_prefer_an_ending_scores_one(
    documents, gpt2_tokenizer_dir: Path, tmp_path
):
    """pretrain.py --eval_hellaswag logs the curve; the trained checkpoint then scores 1.0.
    Both on the dtype users get (--dtype auto: bf16 on CPUs with native bf16); eagerly, since
    compiling would take longer than this run trains and the scoring never runs compiled."""
    items = hellaswag_items(documents, 8)
    train = [f"{documents[i][:200]} {PREFERRED}" for i in range(60)]
    data = write_layout(tmp_path / "data", train, train[:6])
    out, cache = tmp_path / "out", tmp_path / "hellaswag"
    with HubStub([hellaswag_repo(items)]) as hub:
        env = hub.env(tmp_path / "hf_home")
        result = run_script(
            "pretrain.py",
            *pretrain_args(data, out, gpt2_tokenizer_dir, compile="off", learning_rate=1e-2,
                           gradient_accumulation_steps=1, num_epochs=4, eval_hellaswag=8,
                           hellaswag_dir=cache),
            env=env,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    curve = tensorboard_scalars(out / "tensorboard", "val/hellaswag_acc_norm")
    # A point at every validation, ending at 1.0.
    assert len(curve) == len(tensorboard_scalars(out / "tensorboard", "val/loss")) > 1
    assert curve[-1] == 1.0

    [row] = evaluate(
        "--checkpoint", out / "best_model.pt", "--hellaswag", "--hellaswag_dir", cache,
        "--output", tmp_path / "eval.json",
    )["models"]  # fmt: skip
    assert (row["hellaswag_acc"], row["hellaswag_acc_norm"]) == (1.0, 1.0)
    # The figures also went to the run's TensorBoard, under eval/, at the checkpoint's step.
    assert tensorboard_scalars(out / "tensorboard", "eval/hellaswag_acc_norm") == [1.0]


def tensorboard_scalars(folder: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = []
    for events in sorted(folder.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            values += [event.value for event in accumulator.Scalars(tag)]
    return values


# ---- bad input ---------------------------------------------------------------------------------


def test_bad_input_is_one_line_saying_what_to_do(
    tiny_run: Path, tiny_dataset: Path, gpt2_tokenizer_dir: Path, tmp_path: Path
):
    not_a_checkpoint = tmp_path / "notes.pt"
    not_a_checkpoint.write_text("not a checkpoint")
    no_validation = tmp_path / "data"
    (no_validation / "train").mkdir(parents=True)
    bigger_tokenizer = tmp_path / "tokenizer"
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gpt2_tokenizer_dir)
    tokenizer.add_tokens(["<|extra|>"])
    tokenizer.save_pretrained(bigger_tokenizer)
    best = tiny_run / "best_model.pt"
    cases = {
        ("--checkpoint", not_a_checkpoint, "--data_dir", tiny_dataset): "not a safe owt-pretrain",
        ("--hf_model", "no-such-org/no-such-model", "--data_dir", tiny_dataset): "export_hf.py",
        ("--checkpoint", best, "--data_dir", no_validation): "prepare_subset.py",
        ("--checkpoint", best, "--data_dir", tiny_dataset, "--tokenizer_name", bigger_tokenizer): (
            "--tokenizer_name"
        ),
        ("--checkpoint", best): "--data_dir",
    }
    for args, advice in cases.items():
        result = run_script("evaluate.py", "--device", "cpu", *args)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        # One error line (the dataset's goes on with the commands that create one), no traceback.
        errors = [line for line in result.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and errors[0].startswith("evaluate.py: error: "), result.stderr
        assert advice in result.stderr and "Traceback" not in result.stderr, args


def test_a_run_folder_in_use_is_not_written(tiny_run: Path, tiny_dataset: Path, tmp_path: Path):
    """While another process (here: this test) holds the run folder, as a live pretrain.py
    does, eval.json is refused there at once; elsewhere the evaluation runs and leaves the run's
    TensorBoard alone."""
    logged_before = tensorboard_scalars(tiny_run / "tensorboard", "eval/val_loss")
    holder = WriterLock(tiny_run / LOCK_FILE)
    assert holder.acquire(timeout=0)
    try:
        args = ("--device", "cpu", "--checkpoint", tiny_run / "best_model.pt",
                "--data_dir", tiny_dataset, "--max_tokens", 1000)  # fmt: skip
        refused = run_script("evaluate.py", *args)
        elsewhere = run_script("evaluate.py", *args, "--output", tmp_path / "eval.json")
    finally:
        holder.release()
    assert refused.returncode == 2
    line = one_line_error(refused)
    assert f"--output {tiny_run} is in use by another process (pid {os.getpid()} on" in line
    assert line.endswith("wait for it to finish, stop it, or choose another --output"), line
    assert elsewhere.returncode == 0, elsewhere.stderr[-3000:]
    assert "warning: no eval/ scalars in its TensorBoard" in elsewhere.stderr
    assert tensorboard_scalars(tiny_run / "tensorboard", "eval/val_loss") == logged_before
