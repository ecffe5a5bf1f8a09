"""CLIP text encoder and Arc2Face identity injection against transformers' ``CLIPTextModel``.

Oracles, all with seeded random weights (LayerNorm affine and biases randomised too):

* transformers' own ``CLIPTextModel`` at the ``tiny`` layout, saved with ``save_pretrained`` and
  read back through :func:`load_transformers_folder`;
* :class:`CLIPTextModelWrapper`, a re-declaration of Arc2Face's wrapper (token embeddings in,
  the ``id`` token's replaced by the padded identity, causal encoder, final LayerNorm), for
  ``arc2face_prompt_embeds``.

Tolerance ladder (``rel_err = max|ours - ref| / max|ref|``): embeddings and each layer <= 2e-5;
whole network, pooled output and the Arc2Face conditioning <= 1e-4.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from jaxcloak.convert.torch import ConversionError  # noqa: E402
from jaxcloak.nets import clip_text  # noqa: E402
from jaxcloak.nets.clip_text import (  # noqa: E402
    ClipTextConfig,
    config_from_transformers,
    convert_state_dict,
    load_transformers_folder,
    make_clip_text,
)

PIECE_RTOL = 2e-5
NET_RTOL = 1e-4
BATCH = 3
ID_DIM = 48  # stands in for ArcFace's 512 (< the tiny width 64, as 512 < 768)
ID_POSITION = 4  # "photo of a id person" after BOS
# A second layout for the non-legacy paths: pooling at the first eos_token_id, exact GELU,
# fewer positions than the prompt length of 77.
OTHER = ClipTextConfig(
    vocab_size=300,
    max_position_embeddings=16,
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=2,
    intermediate_size=48,
    hidden_act="gelu",
    layer_norm_eps=1e-6,
    eos_token_id=250,  # not the largest id: the legacy argmax rule would pick other tokens
)


def rel_err(ours: Any, ref: Any) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def torch_model(config: ClipTextConfig, seed: int = 0) -> Any:
    """A seeded transformers ``CLIPTextModel`` with every parameter randomised."""
    c = config
    tcfg = transformers.CLIPTextConfig(
        vocab_size=c.vocab_size,
        max_position_embeddings=c.max_position_embeddings,
        hidden_size=c.hidden_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        intermediate_size=c.intermediate_size,
        hidden_act=c.hidden_act,
        layer_norm_eps=c.layer_norm_eps,
        eos_token_id=c.eos_token_id,
        bos_token_id=0,
        pad_token_id=1,
    )
    torch.manual_seed(seed)
    model = transformers.CLIPTextModel(tcfg).float().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "layer_norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif "embedding" in name:
                p.copy_(0.5 * noise)
            else:  # Linear (out, in): unit-variance outputs, so attention is far from uniform
                p.copy_(noise * p.shape[1] ** -0.5)
    return model


def random_ids(config: ClipTextConfig, batch: int, length: int, seed: int = 0) -> np.ndarray:
    """BOS, random tokens, EOS at a per-row position, then EOS padding (as SD's tokenizer pads).

    Legacy configs (``eos_token_id == 2``) get EOS = the largest id, as CLIP's 49407 is; others
    get tokens above their EOS too, so pooling at ``argmax(ids)`` would be caught.
    """
    rng = np.random.default_rng(seed)
    legacy = config.eos_token_id == 2
    eos = config.vocab_size - 1 if legacy else config.eos_token_id
    ids = rng.integers(2, eos if legacy else config.vocab_size, (batch, length))
    ids[ids == eos] = 3  # the first EOS is the one placed below
    ids[:, 0] = 0
    for row, end in enumerate(rng.integers(3, length - 1, batch)):
        ids[row, end:] = eos
    return ids.astype(np.int64)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The ``tiny`` variant: torch model, its save_pretrained folder, our params and fns."""
    config = clip_text.VARIANTS["tiny"]
    model = torch_model(config)
    folder = tmp_path_factory.mktemp("clip_tiny")
    model.save_pretrained(folder)
    loaded_config, params = load_transformers_folder(folder)
    return {
        "config": loaded_config,
        "model": model,
        "folder": folder,
        "params": params,
        "fns": make_clip_text(loaded_config),
    }


def test_config_round_trip(tiny: dict[str, Any]) -> None:
    # eos_token_id comes from the file: 2 here, the legacy argmax pooling of SD-1.5.
    assert tiny["config"] == clip_text.VARIANTS["tiny"]
    cfg = json.loads((tiny["folder"] / "config.json").read_text())
    assert config_from_transformers({"model_type": "clip", "text_config": cfg}) == tiny["config"]
    with pytest.raises(ConversionError, match="hidden_act"):
        config_from_transformers({**cfg, "hidden_act": "relu"})
    with pytest.raises(ConversionError, match="model_type"):
        config_from_transformers({**cfg, "model_type": "clip_vision_model"})


def test_vit_l14_shapes() -> None:
    _, abstract = clip_text.build("vit_l14")
    sizes = [int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(abstract)]
    assert sum(sizes) == 123_060_480  # openai/clip-vit-large-patch14's text tower
    entries = clip_text.torch_key_map("vit_l14")
    assert entries["text_model.embeddings.token_embedding.weight"].torch_shape == (49408, 768)
    assert entries["text_model.encoder.layers.11.mlp.fc1.weight"].torch_shape == (3072, 768)


@pytest.mark.parametrize("which", ["tiny", "other"])
def test_encode_ids_matches_transformers(which: str, tiny: dict[str, Any], tmp_path: Path) -> None:
    if which == "tiny":
        config, model, params, fns = tiny["config"], tiny["model"], tiny["params"], tiny["fns"]
        length = 77
    else:
        config, model = OTHER, torch_model(OTHER, seed=5)
        model.save_pretrained(tmp_path)
        loaded, params = load_transformers_folder(tmp_path)
        assert loaded == OTHER
        fns, length = make_clip_text(OTHER), 12
    ids = random_ids(config, BATCH, length, seed=1)
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids), output_hidden_states=True)
    ours = jax.jit(fns.encode_ids)(params, jnp.asarray(ids, jnp.int32))
    if which == "other":  # the two pooling rules really differ on these ids
        assert np.any(ids.argmax(-1) != (ids == OTHER.eos_token_id).argmax(-1))
    hidden = jax.jit(fns.hidden_states)(params, fns.token_embeds(params, jnp.asarray(ids)))

    # Per layer: embeddings output, then each encoder layer (pre final LayerNorm).
    assert len(hidden) == len(ref.hidden_states) == config.num_hidden_layers + 1
    errs = [rel_err(h, r.numpy()) for h, r in zip(hidden, ref.hidden_states, strict=True)]
    assert errs[0] <= PIECE_RTOL, errs
    assert errs[1] <= PIECE_RTOL, errs  # the first layer, fed torch-equal embeddings
    last_err = rel_err(ours.last_hidden_state, ref.last_hidden_state.numpy())
    pooled_err = rel_err(ours.pooler_output, ref.pooler_output.numpy())
    print(f"[{which}] per-layer {errs}, last {last_err:.2e}, pooled {pooled_err:.2e}")
    assert last_err <= NET_RTOL
    assert pooled_err <= NET_RTOL


def test_first_layer_on_torch_input(tiny: dict[str, Any]) -> None:
    """The first encoder layer alone, fed torch's own embeddings (catches compensating errors)."""
    model, fns, params = tiny["model"], tiny["fns"], tiny["params"]
    ids = random_ids(tiny["config"], 2, 77, seed=2)
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids), output_hidden_states=True)
    # Subtracting positions turns torch's embeddings output back into "token embeddings".
    pos = np.asarray(params["text_model"]["embeddings"]["position_embedding"]["weight"][...])
    token_embeds = ref.hidden_states[0].numpy() - pos[None]
    ours = jax.jit(fns.hidden_states)(params, jnp.asarray(token_embeds))
    assert rel_err(ours[1], ref.hidden_states[1].numpy()) <= PIECE_RTOL


class CLIPTextModelWrapper(transformers.CLIPTextModel):
    """Arc2Face's ``CLIPTextModelWrapper`` re-declared (``arc2face/models.py``).

    ``return_token_embs=True`` returns the token embeddings of ``input_ids``; given
    ``input_token_embs`` it adds positions to them instead of looking tokens up, runs the
    encoder under a causal mask and applies the final LayerNorm.
    """

    def forward(  # type: ignore[override]
        self,
        input_ids: Any = None,
        input_token_embs: Any = None,
        return_token_embs: bool = False,
    ) -> Any:
        tm = getattr(self, "text_model", self)  # transformers < 5 nests the tower
        if return_token_embs:
            return tm.embeddings.token_embedding(input_ids)
        h = tm.embeddings(input_ids=input_ids, inputs_embeds=input_token_embs)
        length = h.shape[1]
        mask = torch.full((length, length), torch.finfo(h.dtype).min).triu(1)[None, None]
        if tm is not self:
            out = tm.encoder(inputs_embeds=h, attention_mask=None, causal_attention_mask=mask)[0]
        else:
            out = tm.encoder(inputs_embeds=h, attention_mask=mask).last_hidden_state
        return tm.final_layer_norm(out)


def project_face_embs(
    encoder: CLIPTextModelWrapper, face_embs: Any, input_ids: Any, id_token: int
) -> Any:
    """Arc2Face's ``project_face_embs`` with the tokenised prompt passed in."""
    padded = F.pad(face_embs, (0, encoder.config.hidden_size - face_embs.shape[-1]), "constant", 0)
    token_embs = encoder(input_ids=input_ids, return_token_embs=True)
    token_embs[input_ids == id_token] = padded
    return encoder(input_ids=input_ids, input_token_embs=token_embs)


def test_arc2face_prompt_embeds(tiny: dict[str, Any]) -> None:
    config, fns, params = tiny["config"], tiny["fns"], tiny["params"]
    wrapper = CLIPTextModelWrapper(tiny["model"].config).float().eval()
    wrapper.load_state_dict(tiny["model"].state_dict())
    # "<bos> photo of a id person <eos> <eos>...": the id token occurs once, at ID_POSITION.
    prompt = random_ids(config, 1, 77, seed=3)
    prompt[0, 1:7] = [11, 12, 13, 14, 15, config.vocab_size - 1]
    prompt[0, 7:] = config.vocab_size - 1
    id_token = int(prompt[0, ID_POSITION])
    raw = np.random.default_rng(4).standard_normal((BATCH, ID_DIM)).astype(np.float32) * 3
    # Arc2Face's caller normalises e0 first (before project_face_embs); ours normalises inside.
    with torch.no_grad():
        face = F.normalize(torch.from_numpy(raw), dim=-1)
        ref = project_face_embs(
            wrapper, face, torch.from_numpy(prompt).repeat(BATCH, 1), id_token
        ).numpy()
    ours = jax.jit(fns.arc2face_prompt_embeds)(
        params, jnp.asarray(raw), jnp.asarray(prompt, jnp.int32), ID_POSITION
    )
    err = rel_err(ours, ref)
    print(f"arc2face prompt embeds rel err {err:.2e}")
    assert err <= NET_RTOL
    # Per-row positions give the same result; positions before the id token see no identity.
    per_row = jax.jit(fns.arc2face_prompt_embeds)(
        params, jnp.asarray(raw), jnp.asarray(prompt, jnp.int32), jnp.full((BATCH,), ID_POSITION)
    )
    np.testing.assert_array_equal(np.asarray(per_row), np.asarray(ours))
    np.testing.assert_allclose(
        np.asarray(ours[:, :ID_POSITION]),
        np.broadcast_to(ours[:1, :ID_POSITION], ours[:, :4].shape),
    )
    assert float(jnp.max(jnp.abs(ours[0, ID_POSITION:] - ours[1, ID_POSITION:]))) > 1e-3


def test_pad_identity() -> None:
    e = jnp.asarray([[3.0, 4.0]])
    np.testing.assert_allclose(np.asarray(clip_text.pad_identity(e, 4)), [[0.6, 0.8, 0, 0]])
    with pytest.raises(ValueError, match="exceeds"):
        clip_text.pad_identity(jnp.ones((1, 5)), 4)


def test_key_layouts(tiny: dict[str, Any], tmp_path: Path) -> None:
    """transformers < 5 / SD / Arc2Face layout: ``text_model.`` keys, ``position_ids``, ``.bin``."""
    sd = {k: v.numpy() for k, v in tiny["model"].state_dict().items()}
    old = {f"text_model.{k}": v for k, v in sd.items()}
    old["text_model.embeddings.position_ids"] = np.arange(77)[None]
    params = convert_state_dict(old, "tiny")
    ref = jax.tree.leaves(tiny["params"])
    for a, b in zip(jax.tree.leaves(params), ref, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # diffusers' SD layout: <pipeline>/text_encoder/{config.json, pytorch_model.bin}.
    sub = tmp_path / "text_encoder"
    sub.mkdir()
    (sub / "config.json").write_text((tiny["folder"] / "config.json").read_text())
    torch.save(
        {k: torch.from_numpy(np.asarray(v)) for k, v in old.items()}, sub / "pytorch_model.bin"
    )
    config, params = load_transformers_folder(tmp_path)
    assert config == tiny["config"]
    for a, b in zip(jax.tree.leaves(params), ref, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    bad = dict(old, **{"text_model.embeddings.position_ids": np.arange(77)[None, ::-1]})
    with pytest.raises(ConversionError, match="position_ids"):
        convert_state_dict(bad, "tiny")
    with pytest.raises(ConversionError, match=r"no config\.json"):
        load_transformers_folder(tmp_path / "text_encoder" / "nowhere")


@pytest.mark.parametrize("problem", ["missing", "unused", "shape"])
def test_converter_raises_naming_the_key(problem: str, tiny: dict[str, Any]) -> None:
    sd = {f"text_model.{k}": v.numpy() for k, v in tiny["model"].state_dict().items()}
    key = "text_model.encoder.layers.1.self_attn.v_proj.weight"
    if problem == "missing":
        del sd[key]
    elif problem == "unused":
        key = "text_model.encoder.layers.1.self_attn.extra.weight"
        sd[key] = np.zeros((2,), np.float32)
    else:
        sd[key] = np.zeros((64, 63), np.float32)
    with pytest.raises(ConversionError, match=f"{problem if problem != 'shape' else ''}.*{key}"):
        convert_state_dict(sd, "tiny")


def test_input_checks(tiny: dict[str, Any]) -> None:
    fns, params = tiny["fns"], tiny["params"]
    with pytest.raises(ValueError, match="input_ids"):
        fns.encode_ids(params, jnp.zeros((1, 78), jnp.int32))
    with pytest.raises(ValueError, match="id_emb"):
        fns.arc2face_prompt_embeds(params, jnp.ones((48,)), jnp.zeros((1, 77), jnp.int32), 4)


def write_tiny_tokenizer(folder: Path) -> dict[str, int]:
    """A CLIP BPE tokenizer folder (SD layout, ``tokenizer/``) knowing only the prompt's words.

    Every word is spelled out by merges from its characters, the last carrying ``</w>``, as in
    CLIP's ``merges.txt``; ``tokenizer_config.json`` is SD-1.5's (77 tokens, EOS padding).
    """
    vocab: dict[str, int] = {}
    merges: list[str] = []
    words = clip_text.ARC2FACE_PROMPT.split()
    for c in sorted({c for w in words for c in w}):
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    for w in words:
        symbols = [*w[:-1], w[-1] + "</w>"]
        current = symbols[0]
        for s in symbols[1:]:
            if f"{current} {s}" not in merges:
                merges.append(f"{current} {s}")
            current += s
            vocab.setdefault(current, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    d = folder / "tokenizer"
    d.mkdir(parents=True)
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"}
    cfg = {**special, "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    cfg.update(model_max_length=77, tokenizer_class="CLIPTokenizer")
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return vocab


def test_arc2face_input_ids(tmp_path: Path) -> None:
    vocab = write_tiny_tokenizer(tmp_path)
    tokenizer = clip_text.load_tokenizer(tmp_path)
    ids, position = clip_text.arc2face_input_ids(tokenizer)
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    words = [vocab[w + "</w>"] for w in clip_text.ARC2FACE_PROMPT.split()]
    assert ids.shape == (1, 77) and ids.dtype == np.int32
    assert ids[0].tolist() == [bos, *words, *[eos] * (77 - 1 - len(words))]
    assert position == ID_POSITION and ids[0, position] == vocab["id</w>"]
    with pytest.raises(ValueError, match="occurs 0 times"):
        clip_text.arc2face_input_ids(tokenizer, "photo of a person")
