"""``--prompt chat``: the question as a user turn through the tokenizer's own chat template,
after a configurable instruction, with no second BOS, cut at the template's end of turn; in
eval, the question probe, select, the audit and train's watch; one error line for a tokenizer
without a template or a probe method that cannot take it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sftscope.cli import app
from sftscope.errors import SftscopeError
from sftscope.models.engines import encode_texts, stop_token_ids
from sftscope.prompts import ChatFormat

from helpers import EQ_FIXTURE, write_jsonl

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# a BOS first, no system role (as Gemma's), turns ended by the EOS token
NO_SYSTEM = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "<turn>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<turn>assistant:{% endif %}"
)


def chat_model(src: Path, out: Path, template: str, bos: bool = False) -> Path:
    """A copy of a tiny model whose tokenizer has ``template`` (and adds a BOS when ``bos``)."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    shutil.copytree(src, out)
    tok = AutoTokenizer.from_pretrained(out)
    tok.chat_template = template
    if bos:
        tok.bos_token = "<s>"
        tok._tokenizer.post_processor = TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.convert_tokens_to_ids("<s>"))]
        )
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def chatml(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return chat_model(tiny_model_dir, tmp_path_factory.mktemp("chat") / "chatml", CHATML)


def test_the_question_is_a_user_turn_after_the_instruction(chatml: Path) -> None:
    from transformers import AutoTokenizer

    chat = ChatFormat(AutoTokenizer.from_pretrained(chatml), "Name only.")
    text = chat.render("Which country is Berlin in? ")
    assert text == (
        "<|im_start|>system\nName only.<|im_end|>\n<|im_start|>user\nWhich country is Berlin "
        "in?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert chat.end_of_turn() == "<|im_end|>"
    assert "system" not in ChatFormat(chat.tokenizer, "").render("Q")


def test_a_reasoning_template_is_asked_not_to_think(chatml: Path) -> None:
    """Qwen3's switch: without it the answer's 16 tokens would go to thinking."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(chatml)
    tok.chat_template = CHATML.replace(
        "assistant\n{% endif %}",
        "assistant\n{% if enable_thinking is defined and not enable_thinking %}"
        "<think></think>{% endif %}{% endif %}",
    )
    assert ChatFormat(tok, "").render("Q").endswith("<|im_start|>assistant\n<think></think>")


def test_the_engine_stops_at_the_end_of_turn_token(tiny_model_dir: Path) -> None:
    """A special end of turn (not the EOS) is decoded to nothing, so it must stop generation as
    a token id: here the model always predicts it."""
    import torch

    from sftscope.models.engines import HFEngine
    from sftscope.models.loading import load_model

    model, tok = load_model(str(tiny_model_dir), device="cpu")
    tok.add_tokens(["<|im_end|>"], special_tokens=True)
    model.resize_token_embeddings(len(tok))
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    boost = torch.zeros(len(tok))
    boost[eot] = 1e4
    model.lm_head.register_forward_hook(lambda _m, _i, out: out + boost)
    engine = HFEngine(model, tok, batch_size=4, progress=False)
    forwarded = []
    for stop in (("\n",), ("\n", "<|im_end|>")):
        before = engine.tokens_forwarded
        assert engine.generate(["Which country?"], max_new_tokens=8, stop=stop) == [[""]]
        forwarded.append(engine.tokens_forwarded - before)
    assert forwarded[0] - forwarded[1] == 7  # 8 steps without the stop id, 1 with it


def test_no_system_role_and_no_second_bos(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(
        chat_model(tiny_model_dir, tmp_path / "m", NO_SYSTEM, bos=True)
    )
    chat = ChatFormat(tok, "Name only.")
    text = chat.render("Which country is Berlin in?")
    assert text.startswith("<s><turn>user: Name only.\n\nWhich country")  # folded into the turn
    assert chat.end_of_turn() == "</s>"
    bos = tok.convert_tokens_to_ids("<s>")
    assert tok("plain")["input_ids"][0] == bos  # this tokenizer adds a BOS ...
    (ids,) = encode_texts(tok, [text])
    assert ids[0] == bos and ids[1] != bos  # ... but not to a rendered chat prompt
    assert stop_token_ids(tok, ["\n", "</s>"]) == {tok.convert_tokens_to_ids("</s>")}


def test_a_tokenizer_without_a_template_is_one_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    with pytest.raises(SftscopeError, match="no chat template; use --prompt fewshot"):
        ChatFormat(AutoTokenizer.from_pretrained(tiny_model_dir))
    data = ["--data", "entityquestions", "--data-dir", str(EQ_FIXTURE), "--device", "cpu"]
    out = tmp_path / "ev"
    res = CliRunner().invoke(
        app, ["eval", "--model", str(tiny_model_dir), *data, "--prompt", "chat", "--out", str(out)]
    )
    errors = [x for x in res.output.splitlines() if x.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1 and "chat template" in errors[0], res.output
    assert not out.exists()


def _eval(model: Path, out: Path, *extra: str) -> dict:
    data = ["--data", "entityquestions", "--data-dir", str(EQ_FIXTURE), "--device", "cpu"]
    args = ["eval", "--model", str(model), *data, "--relations", "P17,P36"]
    args += ["--limit-per-relation", "3", "--max-new-tokens", "6", "--prompt", "chat"]
    res = CliRunner().invoke(app, [*args, *extra, "--out", str(out)])
    assert res.exit_code == 0, res.output
    return json.loads((out / "summary.json").read_text())


def test_eval_with_chat_prompts_and_the_instruction_from_the_config(chatml, tmp_path) -> None:
    from sftscope.config import EvalConfig, result_fields
    from sftscope.io import read_jsonl

    s = _eval(chatml, tmp_path / "a")
    assert s["prompt"] == "chat" and s["overall"]["n"] == 6
    record = read_jsonl(tmp_path / "a" / "records.jsonl")[0]
    assert record["prompt"].startswith("<|im_start|>system\nAnswer with the name only")
    assert "<|im_end|>" not in record["prediction"] and "\n" not in record["prediction"]
    _eval(chatml, tmp_path / "b", "chat_instruction=Reply with a country.")
    other = read_jsonl(tmp_path / "b" / "records.jsonl")[0]
    assert "Reply with a country." in other["prompt"]
    default = EvalConfig(model="m", out=tmp_path, prompt="chat")
    changed = default.model_copy(update={"chat_instruction": "Reply with a country."})
    assert "chat_instruction" not in result_fields(default)  # old fingerprints hold
    assert result_fields(changed)["chat_instruction"] == "Reply with a country."


def test_the_question_probe_and_the_audit_take_chat_prompts(chatml, tmp_path) -> None:
    import yaml

    from helpers import perturbed_copy, tiny_audit

    data = ["--data", "entityquestions", "--data-dir", str(EQ_FIXTURE), "--device", "cpu"]
    out = tmp_path / "probe"
    res = CliRunner().invoke(
        app,
        ["probe", "--model", str(chatml), *data, "--relations", "P17", "--split", "test"]
        + ["--limit-per-relation", "2", "--method", "question", "--templates", "2"]
        + ["--samples", "2", "--max-new-tokens", "4", "--prompt", "chat", "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    assert len((out / "mastery.jsonl").read_text().splitlines()) == 2
    tuned = perturbed_copy(chatml, tmp_path / "tuned", seed=1)
    cfg = tiny_audit(chatml, tuned, tmp_path / "audit").model_dump(mode="json", exclude_unset=True)
    (tmp_path / "audit.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(
        app,
        ["audit", "--config", str(tmp_path / "audit.yaml")]
        + ["--tuned-prompt", "chat", "--base-prompt", "chat"],
    )
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert s["prompts"] == {"base": "chat", "tuned": "chat", "restore sweep": "chat"}


def test_chat_probes_only_with_the_question_method(chatml: Path, tmp_path: Path) -> None:
    """The other methods would silently ignore it; select's ``auto`` picks the question method."""
    from sftscope.config import ProbeConfig, SelectConfig, load_config
    from sftscope.data.readers import resolve_dataset
    from sftscope.select_data import pick_method

    opts = {"model": "m", "out": str(tmp_path), "method": "sampling", "prompt": "chat"}
    with pytest.raises(SftscopeError, match="chat is for the question method, not sampling"):
        load_config(ProbeConfig, options=opts)
    cfg = SelectConfig(model="m", data="geo", out=tmp_path, probe={"prompt": "chat"})
    geo = resolve_dataset("geo", None, None)  # mapping templates: auto would pick sampling
    assert pick_method(cfg.probe, geo, []) == "question"
    assert pick_method(cfg.probe.model_copy(update={"prompt": "fewshot"}), geo, []) == "sampling"


def test_train_watches_chat_rows_in_the_chat_format(chatml: Path, tmp_path: Path) -> None:
    from sftscope.callbacks import KnowledgeCallback
    from sftscope.config import TrainConfig
    from sftscope.train import build_trainer

    facts = [("Which country is Berlin in?", "Germany"), ("Which country is Paris in?", "France")]
    turns = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in facts
    ]
    rows = write_jsonl(tmp_path / "chat.jsonl", turns)
    watch = write_jsonl(tmp_path / "watch.jsonl", [{"question": q, "answer": a} for q, a in facts])
    cfg = TrainConfig(
        model=str(chatml), train_file=rows, watch=watch, out=tmp_path / "o", device="cpu"
    )
    trainer, _ = build_trainer(cfg, tmp_path / "staging")
    (cb,) = [c for c in trainer.callback_handler.callbacks if isinstance(c, KnowledgeCallback)]
    assert cb.prompt == "chat"


@pytest.mark.slow
def test_chat_prompts_on_the_bundled_smollm2(tmp_path: Path) -> None:
    """SmolLM2-135M-Instruct: ChatML with a system turn, answers cut at <|im_end|>."""
    from sftscope.io import read_jsonl

    out = tmp_path / "ev"
    res = CliRunner().invoke(
        app,
        ["eval", "--model", "smollm2", "--data", "geo", "--split", "test", "--prompt", "chat"]
        + ["--limit-per-relation", "2", "--device", "cpu", "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    records = read_jsonl(out / "records.jsonl")
    assert records[0]["prompt"].startswith("<|im_start|>system\n")
    assert all(r["prediction"] and "<|im_end|>" not in r["prediction"] for r in records)
