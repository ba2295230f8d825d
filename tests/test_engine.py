"""HFEngine on a tiny model: batching must not change results; sampling is seeded."""

from __future__ import annotations

import torch

from sftscope.models.engines import HFEngine, cut_at_stop

PROMPTS = [
    "Question: Which country is Darreh Sib located in?\nAnswer:",
    "Question: Who is Cedric Wyatt's child?\nAnswer:",
    "Where",
    "Question: What is the capital of Marin County?\nAnswer: San",
    "Question: Who",
]


def test_cut_at_stop() -> None:
    assert cut_at_stop(" Paris\nQuestion", ["\n"]) == " Paris"
    assert cut_at_stop("a.b\nc", ["\n", "."]) == "a"
    assert cut_at_stop("abc", []) == "abc"


def test_greedy_batched_equals_one_at_a_time(tiny_engine: HFEngine) -> None:
    batched = tiny_engine.generate(PROMPTS, max_new_tokens=8)
    single = HFEngine(tiny_engine.model, tiny_engine.tokenizer, batch_size=1, progress=False)
    assert batched == single.generate(PROMPTS, max_new_tokens=8)
    assert all(len(o) == 1 for o in batched)


def test_greedy_matches_plain_model_generate(tiny_engine: HFEngine) -> None:
    tok, model = tiny_engine.tokenizer, tiny_engine.model
    (ours,) = tiny_engine.generate(PROMPTS[:1], max_new_tokens=6)
    ids = tok(PROMPTS[0], return_tensors="pt")
    ref = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert ours[0] == tok.decode(ref[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def test_sampling_is_seeded_and_returns_n(tiny_engine: HFEngine) -> None:
    a = tiny_engine.generate(PROMPTS, max_new_tokens=6, temperature=1.0, n=3, seed=7)
    b = tiny_engine.generate(PROMPTS, max_new_tokens=6, temperature=1.0, n=3, seed=7)
    c = tiny_engine.generate(PROMPTS, max_new_tokens=6, temperature=1.0, n=3, seed=8)
    assert a == b and a != c
    assert [len(o) for o in a] == [3] * len(PROMPTS)
    assert len({s for o in a for s in o}) > len(PROMPTS)  # samples differ within a prompt


def test_stop_strings_cut_output(tiny_engine: HFEngine) -> None:
    outs = tiny_engine.generate(PROMPTS, max_new_tokens=12, temperature=1.5, n=4, stop=["\n"])
    assert all("\n" not in s for o in outs for s in o)


def test_score_matches_unbatched_forward(tiny_engine: HFEngine) -> None:
    tok, model = tiny_engine.tokenizer, tiny_engine.model
    conts = [" Iran", " Ben Wyatt", " was", " Rafael", ""]
    scores = tiny_engine.score(PROMPTS, conts)
    for prompt, cont, got in zip(PROMPTS, conts, scores, strict=True):
        p = tok(prompt)["input_ids"]
        c = tok(cont, add_special_tokens=False)["input_ids"]
        assert len(got) == len(c)
        if not c:
            continue
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([p + c])).logits[0].float(), -1)
        want = [lp[len(p) - 1 + k, c[k]].item() for k in range(len(c))]
        assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-5)
